"""The code of a notebook without its outputs: what a DVC stage should depend on.

Running a notebook in JupyterLab and saving it changes its outputs, execution counts and metadata,
but not what it computes. ``dvc.yaml`` therefore makes the stages depend on the code extracted
here (one file per notebook, written only when it changed) instead of on the ``.ipynb`` itself:
saving a notebook reruns this cheap stage, and the train and infer stages only when a cell's code
changed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..io import atomic_write_text


def notebook_code(path: str | Path) -> str:
    """The source of every code and markdown cell, in order, with the parameters cell marked."""
    path = Path(path)
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = nb["cells"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: not a readable notebook ({err})") from None
    parts = []
    for cell in cells:
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.get("cell_type") == "code":
            parts.append(("# %% [parameters]\n" if "parameters" in tags else "# %%\n") + source.rstrip() + "\n")
        elif cell.get("cell_type") == "markdown":  # prose is part of what the notebook says
            parts.append("# %% [markdown]\n" + "".join(f"# {line}".rstrip() + "\n" for line in source.splitlines()))
    return "\n".join(parts)


def extract(notebooks: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/<name>.py`` for every notebook in ``notebooks``; return the files."""
    written = []
    for nb in sorted(Path(notebooks).glob("*.ipynb")):
        target = Path(out_dir) / f"{nb.stem}.py"
        code = notebook_code(nb)
        if not target.is_file() or target.read_text(encoding="utf-8") != code:
            atomic_write_text(target, code)
        written.append(target)
    return written


if __name__ == "__main__":
    files = extract(*(sys.argv[1:3] if len(sys.argv) >= 3 else ("notebooks", "results/nbcode")))
    print(f"notebook code: {len(files)} files")
