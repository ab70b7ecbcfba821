"""``python -m dhnn.pipeline.fetch PARAMS FETCHED_DIR OUT_DIR``: the pipeline's fetch stage, before ``check``.

It downloads what the data settings need and is not there yet (for Open Images with ``data.fetch``
set: the official metadata and the tree's JPEGs, see dhnn.data.open_images_fetch) into
``FETCHED_DIR``, the stage's output that dvc neither caches nor deletes, and writes
``OUT_DIR/fetch.json``, the manifest that the check stage depends on. For every other data set it
fetches nothing and writes only that manifest.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..data.open_images_fetch import FetchError
from ..data.registry import get_source
from ..io import atomic_write_json
from ..params import ParamsError, load_params
from ..paths import resolve


def main(argv: list[str] | None = None) -> int:
    """Fetch, then write the manifest; exit 1 with the reason (a URL, a path) when it cannot."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        raise SystemExit(__doc__)
    params_file, fetched_dir, out_dir = args
    try:
        params = load_params(params_file)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    data = params.section("data")
    fetched = resolve(fetched_dir)
    fetched.mkdir(parents=True, exist_ok=True)  # the stage's output exists even when nothing is fetched
    if data.get("fetch") and not resolve(data["root"]).is_relative_to(fetched):
        print(f"error: {params_file}: data.root is {data['root']}, but the fetch stage writes only under "
              f"{fetched_dir}/ (its dvc output); set data.root: {fetched_dir}/openimages, or data.fetch: null to "
              f"use files you placed yourself", file=sys.stderr)
        return 1
    try:
        manifest = get_source(data["name"]).fetch(data, params.runtime.progress)
    except (FetchError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    atomic_write_json(Path(out_dir) / "fetch.json", {"name": data["name"], **manifest})
    return 0


if __name__ == "__main__":
    sys.exit(main())
