"""``python -m dhnn.pipeline.check PARAMS OUT_DIR``: the pipeline's first stage, run on every ``dvc repro``.

It checks the params against the schema and the data set's files (for Fashion-MNIST: size, header
and MD5 of each file), and writes what the other stages depend on:

- ``OUT_DIR/params.json``: the params with every default filled in; the stages read their keys here;
- ``OUT_DIR/data.json``: a manifest of the verified data (the official MD5s, or a fingerprint of a
  folder's files); the stages depend on it instead of on ``data/`` itself.

Why not on ``data/``: ``dvc repro`` re-records every changed data source (``data.dvc``) before it
runs any stage, so a truncated file would become the new truth. Depending on this stage's manifest
instead, a damaged file stops the pipeline here, naming the file, and ``data.dvc`` keeps the
official hash (``dvc status`` still reports the change).
"""
from __future__ import annotations

import sys

from ..io import atomic_write_json
from ..params import ParamsError, load_params


def main(argv: list[str] | None = None) -> int:
    """Check params and data; write params.json and data.json (each only rewritten when it changes)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit(__doc__)
    params_file, out_dir = args
    try:
        params = load_params(params_file)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from ..data.registry import get_source  # after the params check: a typo is reported in well under a second

    data = params.section("data")
    try:
        manifest = get_source(data["name"]).check(data)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from pathlib import Path

    atomic_write_json(Path(out_dir) / "params.json", params.model_dump(mode="json"))
    atomic_write_json(Path(out_dir) / "data.json", {"name": data["name"], "files": manifest})
    runs = len(params.grid.variants) * len(params.grid.seeds)
    print(f"{params_file}: valid; data: {len(manifest)} files checked; {runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
