"""Project paths: the root that holds dvc.yaml, paths resolved against it, and run folder names."""
from __future__ import annotations

from pathlib import Path

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


def run_name(variant: str, seed: int) -> str:
    """The display name of one (variant, seed) run, as in progress lines and bundle names."""
    return f"{variant}-seed{seed}"


def run_path(variant: str, seed: int) -> Path:
    """A run's folder under a stage's folder, as dvc.yaml lays it out: one stage per variant, a folder per seed."""
    return Path(variant) / f"seed{seed}"
