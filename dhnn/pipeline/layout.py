"""Where each stage writes, under ``results_dir``; every stage module reads its inputs from here.

    taxonomy/taxonomy.json   train/<variant>/seed<k>/model.pt   logs/<variant>/seed<k>/dvclive/
    infer/<variant>/seed<k>/   report/   resume/<variant>/seed<k>/last.pt (until a variant is done)

``metrics/<stage>/<variant>.json`` (git-tracked) sums a variant up over its seeds, for ``dvc metrics``
and ``dvc exp show``.
"""
from __future__ import annotations

from pathlib import Path

from ..paths import resolve, run_path


def taxonomy_path(results_dir: str | Path) -> Path:
    """Where the taxonomy stage writes the tree."""
    return resolve(results_dir) / "taxonomy" / "taxonomy.json"


def train_dir(results_dir: str | Path, variant: str, seed: int) -> Path:
    """A run's training folder."""
    return resolve(results_dir) / "train" / run_path(variant, seed)


def log_dir(results_dir: str | Path, variant: str, seed: int) -> Path:
    """A run's training logs (dvclive's learning curves), apart from its model, so that a retrained
    identical model leaves its inference current."""
    return resolve(results_dir) / "logs" / run_path(variant, seed)


def infer_dir(results_dir: str | Path, variant: str, seed: int) -> Path:
    """A run's inference folder."""
    return resolve(results_dir) / "infer" / run_path(variant, seed)


def resume_dir(results_dir: str | Path, variant: str) -> Path:
    """Where a variant's runs keep their resume state until every seed has finished."""
    return resolve(results_dir) / "resume" / variant


def summary_file(metrics_dir: str | Path, stage: str, variant: str) -> Path:
    """A variant's summary over its seeds: ``<metrics_dir>/<stage>/<variant>.json``.

    ``dvc repro`` passes ``metrics``, a folder that git tracks: an experiment's commit then holds its
    metrics, which ``dvc exp show`` reads from it (results/ is git-ignored).
    """
    return resolve(metrics_dir) / stage / f"{variant}.json"


def complete(results_dir: str | Path, variants: list[str], seeds: list[int], stage: str) -> bool:
    """Whether every run of the grid has its ``stage`` ("train" or "infer") output."""
    if stage == "train":
        return all((train_dir(results_dir, v, s) / "model.pt").is_file() for v in variants for s in seeds)
    return all((infer_dir(results_dir, v, s) / "metrics.json").is_file() for v in variants for s in seeds)
