"""Fetch Open Images for the configured tree: the official metadata over HTTPS, then exactly the JPEGs it needs from S3.

``fetch(data, progress)`` runs in the pipeline's fetch stage (``data.fetch`` holds every setting):

1. the hierarchy, the class descriptions and the three human-verified image-level label CSVs, each
   from its URL in ``data.fetch.urls`` unless the file is there already;
2. per split, the images with a positive label on the working tree (``fetched_selection``: all, or
   the first ``max_images_per_split`` in a fixed order), from ``s3://<bucket>/<prefix>/<ImageID>.jpg``
   with unsigned requests, as the official downloader makes them;
3. each image fully decoded, its short side resized to ``resize_short_side``, and written atomically
   (a temporary name, then a rename), so a killed fetch leaves no half-written JPEG and a rerun
   fetches only what is missing.

Failures: every request is retried with exponential backoff. A key the bucket does not have (404),
or an image that never decodes, goes into ``missing.csv`` (and out of the splits), with a count on
the terminal. Anything else that persists stops the fetch with a :class:`FetchError` naming the URL;
what was fetched stays.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from ..paths import resolve
from .base import data_settings
from .open_images import MISSING, fetched_selection, open_images_tree, read_missing
from .open_images_tree import read_image_labels

TEMP = ".part"  # suffix of files being written; a rerun deletes those a killed fetch left
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A download that failed for good: the message names the URL and what to do."""


class Undecodable(ValueError):
    """Bytes that do not decode as an image."""


def _retry(attempt: Callable[[], Any], f: dict, *, give_up: Callable[[Exception], bool]) -> Any:
    """``attempt()``, retried ``f['retries']`` times after ``backoff``, ``2 x backoff``, ... seconds."""
    for k in range(f["retries"] + 1):
        try:
            return attempt()
        except Exception as err:  # noqa: BLE001 (give_up says which are final; the last one is raised)
            if give_up(err) or k == f["retries"]:
                raise
            time.sleep(f["backoff"] * 2 ** k)
    raise AssertionError("unreachable")


def _atomic_write(dest: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}{TEMP}")
    try:
        with open(tmp, "wb") as out:
            write(out)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


# -- metadata over HTTPS --------------------------------------------------------------------------

def download_file(url: str, dest: Path, f: dict, progress: bool = True) -> None:
    """``url`` to ``dest`` (atomically), retried; a FetchError naming the URL when it cannot be had."""
    def attempt() -> None:
        with urllib.request.urlopen(url, timeout=f["timeout"]) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=dest.name, disable=not progress, leave=False) as bar:
                def copy(out: io.BufferedWriter) -> None:
                    got = 0
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
                    if size is not None and got != size:
                        raise urllib.error.ContentTooShortError(f"the connection closed after {got:,} of {size:,} bytes", None)
                _atomic_write(dest, copy)

    def final(err: Exception) -> bool:  # a 4xx answer will not change on a retry
        return isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500 and err.code != 429

    try:
        _retry(attempt, f, give_up=final)
    except urllib.error.HTTPError as err:
        raise FetchError(f"{url}: HTTP {err.code} {err.reason}; check data.fetch.urls, or put the file at {dest} "
                         f"yourself") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise FetchError(f"{url}: could not fetch it ({reason}) after {f['retries'] + 1} tries. The fetch stage needs "
                         f"a network: run `dvc repro` on a machine that has one, or copy the files to "
                         f"{dest.parent} (see docs/open-images.md)") from None


def fetch_metadata(cfg: dict, root: Path, progress: bool = True) -> list[str]:
    """The hierarchy, class descriptions and label CSVs under ``root`` (each only if missing); the files fetched."""
    f = cfg["fetch"]
    files = {"hierarchy": cfg["hierarchy"], "class_descriptions": cfg["class_descriptions"], **cfg["labels"]}
    got = []
    for key, name in files.items():
        if name and not (root / name).is_file():
            download_file(f["urls"][key], root / name, f, progress)
            got.append(name)
    return got


# -- images from S3 -------------------------------------------------------------------------------

def s3_client(f: dict) -> Any:
    """An unsigned boto3 S3 client: no credentials, our retries only, one connection per worker."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1}, connect_timeout=f["timeout"],
                    read_timeout=f["timeout"], max_pool_connections=f["workers"])
    return boto3.client("s3", region_name=f["region"], endpoint_url=f["endpoint_url"], config=config)


def reencode(data: bytes, short_side: int | None, quality: int) -> bytes:
    """Decode every pixel of ``data``; the image with its short side at most ``short_side``, as JPEG."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # the whole image: a truncated JPEG fails here, not at training time
            if short_side is None:
                return data
            image = image.convert("RGB")
    except (OSError, Image.DecompressionBombError, ValueError) as err:
        raise Undecodable(str(err)) from None
    w, h = image.size
    if min(w, h) > short_side:
        scale = short_side / min(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def fetch_image(client: Any, key: str, dest: Path, f: dict) -> int | str:
    """One image to ``dest``: its size in bytes, or why it is missing (the bucket lacks it, it never decodes)."""
    from botocore.exceptions import BotoCoreError, ClientError

    def attempt() -> bytes:
        body = client.get_object(Bucket=f["bucket"], Key=key)["Body"].read()
        return reencode(body, f["resize_short_side"], f["quality"])

    def final(err: Exception) -> bool:  # 404 is an answer; other 4xx (403: access) will not change either
        if isinstance(err, ClientError):
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return 400 <= status < 500 and status != 429
        return not isinstance(err, (BotoCoreError, OSError, Undecodable))

    url = f"s3://{f['bucket']}/{key}" + (f" at {f['endpoint_url']}" if f["endpoint_url"] else "")
    try:
        data = _retry(attempt, f, give_up=final)
    except ClientError as err:
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status == 404 or err.response.get("Error", {}).get("Code") == "NoSuchKey":
            return "not in the bucket (404)"
        if 400 <= status < 500 and status != 429:
            raise FetchError(f"{url}: {err}; check data.fetch.bucket and endpoint_url") from None
        raise FetchError(f"{url}: {err} after {f['retries'] + 1} tries; rerun to resume (what was fetched stays)") from None
    except Undecodable as err:
        return f"does not decode as an image ({err})"
    except (BotoCoreError, OSError) as err:
        raise FetchError(f"{url}: {err} after {f['retries'] + 1} tries; rerun to resume (what was fetched stays)") from None
    _atomic_write(dest, lambda out: out.write(data))
    return len(data)


def _write_missing(root: Path, rows: list[dict]) -> None:
    def write(out: io.BufferedWriter) -> None:
        text = io.TextIOWrapper(out, encoding="utf-8", newline="")
        writer = csv.DictWriter(text, ["split", "ImageID", "url", "reason"])
        writer.writeheader()
        writer.writerows(rows)
        text.flush()
        text.detach()
    _atomic_write(root / MISSING, write)


def _check_disk(root: Path, folders: list[Path], to_fetch: int, f: dict) -> None:
    """Refuse, before fetching anything, when the estimated size would not leave ``free_gb_after`` free."""
    sizes = [e.stat().st_size for d in folders if d.is_dir() for e in os.scandir(d) if e.name.endswith(".jpg")]
    per_image = sum(sizes) / len(sizes) if len(sizes) >= 100 else f["est_kb_per_image"] * 1024
    need, free = to_fetch * per_image, shutil.disk_usage(root).free
    if need + f["free_gb_after"] * 1e9 > free:
        raise FetchError(f"{root}: {to_fetch:,} images to fetch need about {need / 1e9:.1f} GB "
                         f"({per_image / 1024:.0f} kB each), but only {free / 1e9:.1f} GB are free and "
                         f"{f['free_gb_after']:g} GB must stay free; make room, or fetch fewer images "
                         "(data.fetch.max_images_per_split)")


def fetch(data: dict, progress: bool = True) -> dict:
    """Fetch what the configured tree needs (see the module's doc); a manifest of the fetched images per split."""
    cfg = data_settings(data)
    f, root = cfg["fetch"], resolve(cfg["root"])
    if f is None:
        return {"fetched": "nothing: data.fetch is null, the files are expected in place"}
    root.mkdir(parents=True, exist_ok=True)
    for name in fetch_metadata(cfg, root, progress):
        print(f"fetch: {root / name}", file=sys.stderr)
    tree = open_images_tree(cfg)
    missing, rows = read_missing(root), []
    if (root / MISSING).is_file():
        with open(root / MISSING, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    plan: dict[str, tuple[Path, list[str], list[str]]] = {}
    for split, name in cfg["labels"].items():
        folder = root / cfg["images"][split]
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f".*{TEMP}"):  # left by a killed fetch: never a kept image
            stale.unlink()
        chosen = fetched_selection(read_image_labels(root / name, tree), f["max_images_per_split"])
        present = {e.name for e in os.scandir(folder)}
        gone = missing.get(split, set())
        todo = [i for i in chosen if f"{i}.jpg" not in present and i not in gone]
        plan[split] = (folder, chosen, todo)
    _check_disk(root, [p[0] for p in plan.values()], sum(len(p[2]) for p in plan.values()), f)

    client, manifest = s3_client(f), {"splits": {}}
    try:
        for split, (folder, chosen, todo) in plan.items():
            prefix, new_missing, nbytes = f["prefixes"][split], [], 0
            with ThreadPoolExecutor(f["workers"]) as pool, \
                    tqdm(total=len(todo), unit="img", desc=f"fetch {split}", disable=not progress, file=sys.stderr) as bar:
                futures = {pool.submit(fetch_image, client, f"{prefix}/{i}.jpg", folder / f"{i}.jpg", f): i
                           for i in todo}
                for done in as_completed(futures):
                    if done.exception() is not None:  # stop: queued images are cancelled, running ones finish
                        for other in futures:
                            other.cancel()
                        rows += new_missing
                        raise done.exception()
                    result, i = done.result(), futures[done]
                    if isinstance(result, str):
                        new_missing.append({"split": split, "ImageID": i, "reason": result,
                                            "url": f"s3://{f['bucket']}/{prefix}/{i}.jpg"})
                    else:
                        nbytes += result
                    bar.update()
                    bar.set_postfix_str(f"{nbytes / 1e6:.1f} MB", refresh=False)
            rows += new_missing
            lost = {r["ImageID"] for r in rows if r["split"] == split}
            kept = len([i for i in chosen if i not in lost])
            print(f"fetch {split}: {len(todo) - len(new_missing):,} fetched, {len(chosen) - len(todo):,} already "
                  f"there, {len(lost):,} missing" + (f" (listed in {root / MISSING}, left out of the split)"
                                                     if lost else ""), file=sys.stderr)
            manifest["splits"][split] = {"images": kept, "missing": len(lost), "selected": len(chosen)}
    finally:
        if rows:
            _write_missing(root, rows)
    return manifest
