"""Configuration: project paths, params.yaml, run names, and running upstream notebooks on demand."""
from __future__ import annotations

from pathlib import Path

import yaml

PROJECT_MARKER = "dvc.yaml"


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding dvc.yaml, else ``start`` itself.

    Notebooks run with their own folder as cwd in JupyterLab and nbval but with the project root
    under ``dvc repro``; resolving every configured path against this root makes both agree.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_MARKER).is_file():
            return folder
    return here


def resolve(path: str | Path) -> Path:
    """An absolute path: ``path`` itself if absolute, else relative to :func:`project_root`."""
    path = Path(path)
    return path if path.is_absolute() else project_root() / path


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read params.yaml (relative paths resolve against the project root)."""
    path = resolve(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such parameter file") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of sections at the top level")
    return params


def run_name(variant: str, seed: int) -> str:
    """Folder name of one (variant, seed) run, as dvc.yaml spells it."""
    return f"{variant}-seed{seed}"


def check_keys(cfg: dict, required: list[str], where: str) -> None:
    """Raise a clear error naming ``where`` if ``cfg`` lacks one of ``required``."""
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")


def ensure_notebook_output(expected: str | Path, notebook: str, parameters: dict | None = None) -> Path:
    """If ``expected`` is missing, execute ``notebooks/<notebook>`` with papermill to produce it.

    Lets a downstream notebook run on its own (its defaults read the demo outputs of the notebook
    before it) without repeating that notebook's code.
    """
    expected = resolve(expected)
    if not expected.exists():
        import papermill

        nb = project_root() / "notebooks" / notebook
        out = expected.parent / f"{Path(notebook).stem}.ipynb"
        out.parent.mkdir(parents=True, exist_ok=True)
        papermill.execute_notebook(str(nb), str(out), parameters=parameters or {}, cwd=str(nb.parent),
                                   progress_bar=False, log_output=False)
        if not expected.exists():
            raise FileNotFoundError(f"{nb} ran but did not write {expected}")
    return expected
