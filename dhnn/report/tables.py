"""Collect per-run metrics into paper-style result tables.

A *run* is one trained model (variant x seed). Each run writes a JSON file with
its test metrics; this module loads those files, aggregates them over seeds and
formats the result the way the paper reports it: ``mean (sd)`` in percent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..io import atomic_write_json, atomic_write_text  # noqa: F401  re-exported
from ..evaluation.records import RECORDS  # what a metrics file must hold, per kind of label

__all__ = [
    "REQUIRED_KEYS",
    "atomic_write_json",
    "atomic_write_text",
    "level_table",
    "load_runs",
    "results_table",
    "summary_stats",
    "write_table",
]

REQUIRED_KEYS: tuple[str, ...] = RECORDS["paths"].required
# Multi-label runs (Open Images) report the paper's F1 scores instead.
MULTILABEL_KEYS: tuple[str, ...] = RECORDS["node_sets"].required
DEFAULT_METRICS: tuple[str, ...] = ("path_accuracy", "node_accuracy")
# Shown instead of a standard deviation when a variant has a single seed:
# the sample sd (ddof=1) is undefined there, and "0.00" would overstate certainty.
NO_SD = "–"
# Columns that describe a run rather than measure it; never averaged.
_ID_COLUMNS = ("variant", "seed", "level_accuracy")


# --------------------------------------------------------------------------- io


def _read_run(path: Path, required: Sequence[str] = REQUIRED_KEYS) -> dict[str, Any]:
    """Read and validate one run's metrics file."""
    record = _read_json_object(path)
    missing = [k for k in required if k not in record]
    if missing:
        raise ValueError(f"{path}: missing required key(s) {missing}")
    if "level_accuracy" in required and not isinstance(record["level_accuracy"], list):
        kind = type(record["level_accuracy"]).__name__
        raise ValueError(f"{path}: 'level_accuracy' must be a list, got {kind}")
    return record


def load_runs(metric_files: Iterable[str | Path], required: Sequence[str] = REQUIRED_KEYS) -> pd.DataFrame:
    """Load one row per run from JSON metrics files, in the order given."""
    records = [_read_run(Path(p), required) for p in metric_files]
    if not records:
        raise ValueError("load_runs: no metrics files given")
    runs = pd.DataFrame.from_records(records)
    runs["variant"] = runs["variant"].astype(str)
    runs["seed"] = runs["seed"].astype(int)
    return runs


# ------------------------------------------------------------------ aggregation


def _extra_numeric_columns(runs: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """Numeric columns that are neither identifiers nor metrics (selected or standard)."""
    return [
        c
        for c in runs.columns
        if c not in _ID_COLUMNS
        and c not in REQUIRED_KEYS
        and c not in MULTILABEL_KEYS
        and c not in metrics
        and pd.api.types.is_numeric_dtype(runs[c])
        and not pd.api.types.is_bool_dtype(runs[c])
    ]


def _check_columns(runs: pd.DataFrame, columns: Iterable[str]) -> None:
    """Raise a readable error when the runs frame lacks expected columns."""
    missing = [c for c in columns if c not in runs.columns]
    if missing:
        raise KeyError(f"runs frame is missing column(s) {missing}; has {list(runs.columns)}")


def summary_stats(
    runs: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    scale: float = 100.0,
) -> pd.DataFrame:
    """Per-variant numbers: seeds, ``<metric>_mean``/``<metric>_sd`` (x scale), ``<extra>_mean``.

    Variants keep their order of first appearance. ``sd`` is the sample standard
    deviation (ddof=1), so it is NaN for a variant with a single seed.
    """
    metrics = list(metrics)
    _check_columns(runs, ["variant", "seed", *metrics])
    extras = _extra_numeric_columns(runs, metrics)
    groups = runs.groupby("variant", sort=False)
    out = pd.DataFrame({"seeds": groups["seed"].nunique()})
    for m in metrics:
        values = runs[m].astype(float) * scale
        by_variant = values.groupby(runs["variant"], sort=False)
        out[f"{m}_mean"] = by_variant.mean()
        out[f"{m}_sd"] = by_variant.std(ddof=1)
    for c in extras:
        out[f"{c}_mean"] = groups[c].mean()
    return out.reset_index()


def _format_seconds(x: float) -> str:
    """Three significant digits, never scientific: 1234 -> '1234', 0.01234 -> '0.0123'."""
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    decimals = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def results_table(
    runs: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    scale: float = 100.0,
    digits: int = 2,
) -> pd.DataFrame:
    """Paper-style table: one row per variant, metrics as ``"mean (sd)"`` strings.

    Columns: ``variant``, one per metric (e.g. ``"72.14 (0.14)"``; sd shown as
    ``"–"`` for a single seed), ``seeds``, then the per-variant mean of any extra
    numeric column: ``params`` and other integer columns rounded to int, columns
    with "seconds" in the name to three significant digits, others to ``digits``.
    """
    stats = summary_stats(runs, metrics, scale)
    table = pd.DataFrame({"variant": stats["variant"]})
    for m in metrics:
        table[m] = [
            f"{mean:.{digits}f} ({NO_SD if pd.isna(sd) else f'{sd:.{digits}f}'})"
            for mean, sd in zip(stats[f"{m}_mean"], stats[f"{m}_sd"])
        ]
    table["seeds"] = stats["seeds"].astype(int)
    for c in _extra_numeric_columns(runs, list(metrics)):
        means = stats[f"{c}_mean"]
        if c == "params" or pd.api.types.is_integer_dtype(runs[c]):
            table[c] = means.round().astype("Int64")
        elif "seconds" in c:
            table[c] = [_format_seconds(float(x)) for x in means]
        else:
            table[c] = [f"{x:.{digits}f}" for x in means]
    return table


def level_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Long format of per-level accuracy: columns variant, seed, level (1-based), accuracy."""
    _check_columns(runs, ["variant", "seed", "level_accuracy"])
    rows = [
        {"variant": variant, "seed": int(seed), "level": level, "accuracy": float(acc)}
        for variant, seed, accs in zip(runs["variant"], runs["seed"], runs["level_accuracy"])
        for level, acc in enumerate(accs, start=1)
    ]
    columns = ["variant", "seed", "level", "accuracy"]
    table = pd.DataFrame(rows, columns=columns)
    # An empty frame would otherwise come back with object columns.
    return table.astype({"variant": str, "seed": int, "level": int, "accuracy": float})


def write_table(table: pd.DataFrame, csv_path: str | Path, md_path: str | Path) -> None:
    """Write ``table`` as CSV and as a GitHub Markdown table, each atomically."""
    atomic_write_text(csv_path, table.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(md_path, table.to_markdown(index=False) + "\n")


# ------------------------------------------------------------------ pipeline layout

TRAIN_SUMMARY_KEYS: tuple[str, ...] = ("params", "conversion_params", "conversion_activation_bytes",
                                        "train_seconds", "seconds_per_step")


def run_dirs(results_dir: str | Path, variant: str, seed: int) -> tuple[Path, Path]:
    """The training-log (dvclive) and infer folders of one run, as dvc.yaml lays them out."""
    from ..paths import run_path

    name = run_path(variant, seed)
    return Path(results_dir) / "logs" / name, Path(results_dir) / "infer" / name


def read_dvclive_history(dvclive_dir: str | Path) -> pd.DataFrame:
    """Learning curves that dvclive logged: long format with columns epoch, metric, value."""
    root = Path(dvclive_dir) / "plots" / "metrics"
    frames = []
    for tsv in sorted(root.rglob("*.tsv")):
        df = pd.read_csv(tsv, sep="\t")
        metric = tsv.relative_to(root).with_suffix("").as_posix()
        frames.append(pd.DataFrame({"epoch": df["step"], "metric": metric, "value": df.iloc[:, -1]}))
    if not frames:
        raise FileNotFoundError(f"{root}: no dvclive learning curves (*.tsv) there")
    return pd.concat(frames, ignore_index=True)


def load_grid(results_dir: str | Path, variants: Sequence[str], seeds: Sequence[int],
              required: Sequence[str] = REQUIRED_KEYS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every (variant, seed) run of the grid: (runs with test metrics and training cost, learning curves).

    Each metrics file must say it belongs to the run whose folder holds it: a checkpoint copied over
    another run's would otherwise merge two variants into one row.
    """
    dirs = [(v, s, *run_dirs(results_dir, v, s)) for v in variants for s in seeds]
    runs = load_runs([infer / "metrics.json" for _, _, _, infer in dirs], required)
    for (variant, seed, _, infer), got_v, got_s in zip(dirs, runs["variant"], runs["seed"]):
        if (got_v, got_s) != (variant, seed):
            raise ValueError(f"{infer / 'metrics.json'}: holds run {got_v!r} seed {got_s}, but it is the file of "
                             f"{variant!r} seed {seed}; rerun that run's infer stage")
    costs, curves = [], []
    for variant, seed, train, _ in dirs:
        summary_file = train / "dvclive" / "metrics.json"
        summary = _read_json_object(summary_file)
        missing = [k for k in TRAIN_SUMMARY_KEYS if k not in summary]
        if missing:
            raise ValueError(f"{summary_file}: missing training summary key(s) {missing}")
        costs.append({k: summary[k] for k in TRAIN_SUMMARY_KEYS})
        curves.append(read_dvclive_history(train / "dvclive").assign(variant=variant, seed=seed))
    runs = pd.concat([runs[list(required)], pd.DataFrame(costs)], axis=1)
    history = pd.concat(curves, ignore_index=True)[["variant", "seed", "epoch", "metric", "value"]]
    return runs, history


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, with errors that name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; did the stage that writes it run?")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(record).__name__}")
    return record
