"""The fetch stage against real protocol servers on loopback: moto's S3 server and a plain http.server.

The bucket holds real JPEGs (Fashion-MNIST test images, upscaled and saved as JPEG) under the official
keys ``<split>/<ImageID>.jpg``; the metadata server holds the real hierarchy and class descriptions
(tests/fixtures/openimages) and small label CSVs in the official format. The fetch runs its own
boto3 and HTTP code, only ``endpoint_url`` and the URLs point at 127.0.0.1. Between it and moto sits
a small HTTP proxy that injects the faults: a connection dropped mid-body, a server error, a delay.
"""
from __future__ import annotations

import functools
import http.client
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dhnn.data.open_images import fetched_selection, read_missing
from dhnn.data.open_images_fetch import FetchError, fetch
from dhnn.params import validate
from dhnn.pipeline import fetch as fetch_stage
from dhnn.pipeline import infer_stage, taxonomy_stage, train_stage

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "openimages"
BUCKET = "open-images-dataset"
# in the paper's tree: Dog (below Carnivore), Carnivore, Bat, Insect, Bee (below Insect), Apple, Squash, Tomato,
# Mammal (a level-2 node), Food (level 1), Bird (dropped: folds into Animal); outside it: Clothing, Car
IN_TREE = ["/m/0bt9lr", "/m/01lrl", "/m/01h44", "/m/03vt0", "/m/01h3n", "/m/014j1m", "/m/0dv77", "/m/07j87",
           "/m/04rky", "/m/02wbm", "/m/015p6"]
OUTSIDE = ["/m/09j2d", "/m/0k4j"]
SIZES = {"train": 24, "val": 8, "test": 8}
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's dhnn, whatever the venv has installed
PREFIX = {"train": "train", "val": "validation", "test": "test"}
# the real hierarchy's 45 labels with two parents keep their first (multi_parent: first, as configured)
pytestmark = pytest.mark.filterwarnings("ignore:.*more than one parent")
GONE, CORRUPT, DROPPED, OUT = "00000000000000aa", "00000000000000bb", "00000000000000cc", "00000000000000dd"


def _pictures(n: int) -> list[bytes]:
    """``n`` real JPEGs, 48 x 40 px: Fashion-MNIST test images (noise where the data is not set up)."""
    raw = ROOT / "data" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    if raw.is_file():
        pixels = np.frombuffer(raw.read_bytes()[16: 16 + n * 784], dtype=np.uint8).reshape(n, 28, 28)
    else:
        pixels = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    out = []
    for p in pixels:
        buf = io.BytesIO()
        Image.fromarray(p).convert("RGB").resize((48, 40)).save(buf, "JPEG", quality=95)
        out.append(buf.getvalue())
    return out


class Faults:
    """What the proxy does: requests seen, keys to cut mid-body (n times), keys answered 500, a delay."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.seen, self.drop, self.error, self.delay = upstream, [], {}, set(), 0.0
        self.lock = threading.Lock()

    def keys(self) -> list[str]:
        return [p.split("/")[-1].removesuffix(".jpg") for p in self.seen]


class Proxy(BaseHTTPRequestHandler):
    """Forwards GETs to moto, with the faults of ``server.faults``."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        faults: Faults = self.server.faults
        key = self.path.split("?")[0].split("/")[-1].removesuffix(".jpg")
        with faults.lock:
            faults.seen.append(self.path)
            drop = faults.drop.get(key, 0) > 0
            if drop:
                faults.drop[key] -= 1
        time.sleep(faults.delay)
        if key in faults.error:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        conn = http.client.HTTPConnection(*faults.upstream, timeout=10)
        conn.request("GET", self.path, headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        upstream = conn.getresponse()
        body = upstream.read()
        self.send_response(upstream.status)
        for k, v in upstream.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if drop else body)  # the rest never comes: the server closes
        self.close_connection = drop

    def log_message(self, *args: object) -> None:
        pass


class Quiet(SimpleHTTPRequestHandler):
    """The metadata server: files from a folder, without a log line per request."""

    def log_message(self, *args: object) -> None:
        pass


def _serve(server: ThreadingHTTPServer) -> str:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 server with the bucket, the fault proxy in front of it, and the metadata server."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    s3.create_bucket(Bucket=BUCKET)
    meta = tmp_path_factory.mktemp("metadata")
    shutil.copy(FIXTURES / "bbox_labels_600_hierarchy.json", meta)
    shutil.copy(FIXTURES / "class-descriptions-boxable.csv", meta)
    pictures = iter(_pictures(sum(SIZES.values()) + 2))
    labels = {}
    for s, n in SIZES.items():
        rows = ["ImageID,Source,LabelName,Confidence"]
        ids = [f"{s}{k:013x}" for k in range(n)] + ([GONE, CORRUPT, DROPPED, OUT] if s == "train" else [])
        for k, image_id in enumerate(ids):
            if image_id == OUT:
                rows += [f"{image_id},verification,{OUTSIDE[0]},1", f"{image_id},verification,{IN_TREE[0]},0"]
            else:
                rows += [f"{image_id},verification,{IN_TREE[k % len(IN_TREE)]},1",
                         f"{image_id},crowdsource-verification,{OUTSIDE[k % 2]},1"]
            if image_id == GONE:
                continue  # labelled, but the bucket no longer has it
            body = b"\xff\xd8\xff\xe0 not really a JPEG" if image_id == CORRUPT else next(pictures)
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX[s]}/{image_id}.jpg", Body=body, ACL="public-read")
        name = f"{PREFIX[s]}-annotations-human-imagelabels-boxable.csv"
        (meta / name).write_text("\n".join(rows) + "\n")
        labels[s] = ids
    faults = Faults((host, port))
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    proxy.faults = faults
    http_server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=meta))
    yield {"s3": _serve(proxy), "http": _serve(http_server), "faults": faults, "labels": labels}
    proxy.shutdown()
    http_server.shutdown()
    moto.stop()


def _params(servers: dict, **fetch_settings) -> dict:
    """configs/paper-openimages.yaml, fetching from the loopback servers at 32 px, thin models for a CPU."""
    raw = yaml.safe_load((ROOT / "configs" / "paper-openimages.yaml").read_text(encoding="utf-8"))
    names = {"hierarchy": "bbox_labels_600_hierarchy.json", "class_descriptions": "class-descriptions-boxable.csv",
             **{s: f"{PREFIX[s]}-annotations-human-imagelabels-boxable.csv" for s in SIZES}}
    raw["data"]["fetch"].update({"urls": {k: f"{servers['http']}/{v}" for k, v in names.items()},
                                 "endpoint_url": servers["s3"], "workers": 4, "resize_short_side": 32, "backoff": 0.05,
                                 **fetch_settings})
    raw["data"].update(transform={"resize": 32, "crop": 28}, augment=False)
    raw["train"].update(epochs=1, batch_size=5, amp=False, device="cpu")  # 25 train images: no batch of one
    raw["runtime"].update(num_workers=0, eval_batch_size=16, progress=False)
    thin = {"name": "resnet18", "pretrained": False, "kwargs": {"channels": [8, 16, 32, 64]}}
    raw["variants"] = {"Flat": {"kind": "flat", "backbone": thin},
                       "S2S-Pool": {"kind": "s2s", "backbone": thin, "level_layers": [["layer4"], ["layer3"], ["layer2"]],
                                    "conversion": {"kind": "pool", "grid": [8, 1, 1]}, "s2s": {"hidden_size": 16}}}
    raw["grid"] = {"variants": ["Flat", "S2S-Pool"], "seeds": [0]}
    return raw


def _project(path: Path) -> Path:
    """A project folder (dvc.yaml marks its root) with the committed tree file."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "dvc.yaml").write_text("")
    shutil.copytree(ROOT / "taxonomies", path / "taxonomies", dirs_exist_ok=True)
    return path


def _fetch(project: Path, raw: dict, monkeypatch: pytest.MonkeyPatch) -> int:
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(project)
    return fetch_stage.main(["params.yaml", "fetched", "results/fetch"])


def _jpegs(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in folder.glob("*.jpg"):
        with Image.open(p) as image:
            image.load()  # every pixel: no half-written file
            out[p.stem] = image.size
    return out


@pytest.fixture(scope="module")
def fetched(servers, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One project fetched twice: 6 images per split first, then all; and a third run that fetches nothing."""
    project = _project(tmp_path_factory.mktemp("project"))
    faults = servers["faults"]
    faults.drop[DROPPED] = 1
    with pytest.MonkeyPatch.context() as mp:
        assert _fetch(project, _params(servers, max_images_per_split=6), mp) == 0
        first = list(faults.seen)
        faults.seen.clear()
        assert _fetch(project, _params(servers), mp) == 0
        second = list(faults.seen)
        faults.seen.clear()
        assert _fetch(project, _params(servers), mp) == 0
        third = list(faults.seen)
    return {"project": project, "root": project / "fetched" / "openimages", "runs": [first, second, third]}


def test_fetch_gets_exactly_the_trees_images_resized(fetched, servers, capsys) -> None:
    root, labels = fetched["root"], servers["labels"]
    for s in SIZES:
        got = _jpegs(root / PREFIX[s])
        expected = set(labels[s]) - {GONE, CORRUPT, OUT}  # OUT has no positive label on the tree
        assert set(got) == expected, s
        assert set(got.values()) == {(38, 32)}  # 48 x 40 with its short side at 32
    assert not list(root.rglob("*.part"))
    for name in ["bbox_labels_600_hierarchy.json", "class-descriptions-boxable.csv",
                 "train-annotations-human-imagelabels-boxable.csv"]:
        assert (root / name).is_file()
    assert OUT not in {k for run in fetched["runs"] for k in [p.split("/")[-1][:-4] for p in run]}


def test_404_and_corrupt_images_are_listed_and_left_out(fetched) -> None:
    root = fetched["root"]
    assert read_missing(root) == {"train": {GONE, CORRUPT}}
    text = (root / "missing.csv").read_text()
    assert f"s3://{BUCKET}/train/{GONE}.jpg,not in the bucket (404)" in text.replace('"', "")
    assert "does not decode as an image" in text
    assert (fetched["project"] / "results" / "fetch" / "fetch.json").is_file()


def test_a_dropped_connection_is_retried(fetched) -> None:
    requests = [p for run in fetched["runs"] for p in run if DROPPED in p]
    assert len(requests) == 2  # cut mid-body once, then whole
    assert (fetched["root"] / "train" / f"{DROPPED}.jpg").is_file()


def test_more_images_fetch_only_the_new_ones_and_a_rerun_fetches_nothing(fetched, servers) -> None:
    first, second, third = fetched["runs"]
    train = servers["labels"]["train"]
    wanted = [i for i in fetched_selection(train, None) if i != OUT]
    first_keys = {p.split("/")[-1][:-4] for p in first if "/train/" in p}
    assert first_keys == set(fetched_selection([i for i in train if i != OUT], 6))  # the hashed order's first 6
    second_keys = [p.split("/")[-1][:-4] for p in second if "/train/" in p]
    assert set(second_keys) == set(wanted) - first_keys
    tries = Counter(second_keys)  # once each, but the one cut mid-body (twice), the corrupt one (1 + 3 retries)
    assert tries == {k: {DROPPED: 2, CORRUPT: 4}.get(k, 1) for k in set(second_keys)}
    assert third == []  # nothing fetched, nor asked for: the 404 and the corrupt image are in missing.csv


def test_the_tiny_multilabel_pipeline_runs_on_the_fetched_images(fetched, servers, monkeypatch) -> None:
    monkeypatch.chdir(fetched["project"])
    params = validate(_params(servers), "params.yaml")
    results = fetched["project"] / "results"
    taxonomy_stage.save_taxonomy(taxonomy_stage.build_taxonomy(params), results)
    tree = taxonomy_stage.build_taxonomy(params)
    assert tree.level_sizes == [2, 4, 24]
    for v in params.grid.variants:
        train_stage.train_variant(params, v, params.grid.seeds, results)
        for _, (trained, metrics, predictions) in infer_stage.infer_variant(params, v, params.grid.seeds, results).items():
            assert len(trained.splits.train) == SIZES["train"] + 1  # the dropped one is in, 404 and corrupt are out
            assert len(trained.splits.test) == len(predictions) == SIZES["test"]
            assert 0.0 <= metrics["path_f1"] <= 1.0 and 0.0 <= metrics["node_f1"] <= 1.0


def test_sigkill_mid_fetch_then_rerun_resumes(servers, tmp_path) -> None:
    project = _project(tmp_path / "killed")
    (project / "params.yaml").write_text(yaml.safe_dump(_params(servers, workers=2), sort_keys=False))
    folder = project / "fetched" / "openimages" / "train"
    faults = servers["faults"]
    faults.delay, faults.seen = 0.05, []
    try:
        proc = subprocess.Popen([sys.executable, "-m", "dhnn.pipeline.fetch", "params.yaml", "fetched", "results/fetch"],
                                cwd=project, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while (not folder.is_dir() or len(list(folder.glob("*.jpg"))) < 4) and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        faults.delay = 0.0
    before = _jpegs(folder)  # what was kept decodes whole
    assert 4 <= len(before) < SIZES["train"] + 1, "the fetch finished before it could be killed; slow it down"
    (folder / f".{DROPPED}.jpg.999{'.part'}").write_bytes(b"\xff\xd8 half")  # as a kill between write and rename leaves
    faults.seen = []
    ran = subprocess.run([sys.executable, "-m", "dhnn.pipeline.fetch", "params.yaml", "fetched", "results/fetch"],
                         cwd=project, env=ENV, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    again = {k for k in faults.keys() if k in before}
    assert again == set(), "a rerun fetched again what was there"
    assert len(_jpegs(folder)) == SIZES["train"] + 1 and not list(folder.parent.rglob("*.part"))
    assert f"{len(before):,} already there, 2 missing" in ran.stderr


def test_a_persistent_server_error_stops_naming_the_url_and_keeps_what_was_fetched(servers, tmp_path, monkeypatch,
                                                                                    capsys) -> None:
    project = _project(tmp_path / "errors")
    order = [i for i in fetched_selection(servers["labels"]["train"], None) if i not in (OUT, GONE, CORRUPT)]
    bad = order[5]
    servers["faults"].error.add(bad)
    try:
        assert _fetch(project, _params(servers, workers=1, retries=1), monkeypatch) == 1
    finally:
        servers["faults"].error.discard(bad)
    err = capsys.readouterr().err
    assert f"s3://{BUCKET}/train/{bad}.jpg at {servers['s3']}" in err and "after 2 tries; rerun to resume" in err
    kept = _jpegs(project / "fetched" / "openimages" / "train")
    assert set(order[:5]) <= set(kept) and bad not in kept


def test_offline_stops_in_seconds_naming_the_url(servers, tmp_path, monkeypatch, capsys) -> None:
    project = _project(tmp_path / "offline")
    raw = _params(servers)
    closed = "http://127.0.0.1:9/bbox_labels_600_hierarchy.json"  # the discard port: nothing listens
    raw["data"]["fetch"]["urls"]["hierarchy"] = closed
    start = time.perf_counter()
    assert _fetch(project, raw, monkeypatch) == 1
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert f"error: {closed}: could not fetch it" in err and "needs a network" in err
    assert not list((project / "fetched").rglob("*.json"))  # nothing half-written


def test_too_little_disk_is_refused_before_any_image(servers, tmp_path, monkeypatch, capsys) -> None:
    project = _project(tmp_path / "disk")
    assert _fetch(project, _params(servers, est_kb_per_image=1e12), monkeypatch) == 1
    assert "images to fetch need about" in capsys.readouterr().err
    assert not list((project / "fetched" / "openimages").rglob("*.jpg"))


def test_fetch_stage_refuses_a_root_outside_its_output(servers, tmp_path, monkeypatch, capsys) -> None:
    raw = _params(servers)
    raw["data"]["root"] = "data/openimages"
    assert _fetch(_project(tmp_path / "outside"), raw, monkeypatch) == 1
    assert "the fetch stage writes only under fetched/" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a class of the hierarchy"):  # a tree file naming an unknown class
        bad = tmp_path / "bad.csv"
        bad.write_text("# a comment\nlevel_1,level_2\nAnimal,Unicorn\n")
        raw = _params(servers)
        raw["data"].update(tree=str(bad), root=str(FIXTURES))
        raw["data"]["fetch"] = None
        from dhnn.data.open_images import open_images_tree
        open_images_tree(validate(raw).section("data"))


def test_other_data_sets_fetch_nothing(tmp_path, monkeypatch) -> None:
    project = _project(tmp_path / "fmnist")
    shutil.copy(ROOT / "configs" / "demo.yaml", project / "params.yaml")
    monkeypatch.chdir(project)
    assert fetch_stage.main(["params.yaml", "fetched", "results/fetch"]) == 0
    assert (project / "fetched").is_dir() and not list((project / "fetched").iterdir())
    assert "nothing" in (project / "results" / "fetch" / "fetch.json").read_text()
    assert fetch({"name": "open_images", "hierarchy": "h.json", "labels": {}, "images": {}})["fetched"].startswith(
        "nothing")


def test_offline_dvc_repro_of_the_paper_config_stops_in_seconds(tmp_path) -> None:
    """`cp configs/paper-openimages.yaml params.yaml && dvc repro` without a network, its URL on a closed port."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_pipeline import _dvc, copy_project

    raw = yaml.safe_load((ROOT / "configs" / "paper-openimages.yaml").read_text(encoding="utf-8"))
    closed = "http://127.0.0.1:9/openimages/2018_04/bbox_labels_600_hierarchy.json"
    raw["data"]["fetch"]["urls"] = {"hierarchy": closed}
    project = copy_project(tmp_path / "paper", raw, real_data=False)
    start = time.perf_counter()
    ran = _dvc(project, "repro", check=False)
    seconds = time.perf_counter() - start
    assert ran.returncode != 0
    assert f"error: {closed}: could not fetch it" in ran.stderr + ran.stdout and "needs a network" in ran.stderr
    assert seconds < 30, seconds
    assert "Running stage 'taxonomy'" not in ran.stdout
