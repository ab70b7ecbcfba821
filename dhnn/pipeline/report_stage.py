"""The report stage (notebooks/03_report.ipynb): read every run's metrics, predictions and learning
curves, and write the tables and figures. It reads results files only: no data set, no model.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..evaluation.records import Record, get_record
from ..params import Params
from ..paths import resolve
from ..report.tables import load_grid
from .layout import infer_dir


def grid_record(params: Params, results_dir: str | Path) -> Record:
    """What the grid's runs were scored by, as the first run's metrics.json says (every run's is checked after)."""
    path = infer_dir(results_dir, params.grid.variants[0], params.grid.seeds[0]) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; did the infer stage run?")
    task = json.loads(path.read_text(encoding="utf-8")).get("task")
    if task is None:
        raise ValueError(f"{path}: no 'task' key (written by an older infer stage); rerun `dvc repro`")
    return get_record(task, str(path))


def collect(params: Params, results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, Record]:
    """Every run of the grid: (test metrics and training cost per run, learning curves, what they were scored by)."""
    record = grid_record(params, results_dir)
    runs, history = load_grid(resolve(results_dir), params.grid.variants, params.grid.seeds,
                              (*record.required, "task"))
    if (other := set(runs["task"]) - {record.name}):
        raise ValueError(f"{resolve(results_dir) / 'infer'}: runs scored as {sorted(other)} beside {record.name!r}; "
                         f"rerun `dvc repro`")
    return runs.drop(columns="task"), history, record
