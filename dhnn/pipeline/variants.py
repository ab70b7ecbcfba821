"""Every seed of one variant in one process (the train and infer stages), and what a notebook opened on its own shows.

A stage's fixed cost (dvc, papermill, the kernel, importing torch) is paid once per variant and
shared by its seeds (benchmarks/speed.py measures it). Each run keeps its own folder, checkpoint
and metrics; ``<stage>/<variant>.json`` sums a variant up over its seeds for ``dvc metrics`` and
``dvc exp show``.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..io import atomic_write_json
from ..params import Params, load_params
from ..paths import resolve
from .stages import (build_taxonomy, infer_dir, load_trained, log_dir, prepare_training, save_inference,
                     save_taxonomy, taxonomy_path, test, train, train_dir)

DEMO_PARAMS = "configs/demo.yaml"
DEMO_RESULTS = "results/demo"
DEMO_ENV = "DHNN_DEMO"  # set (tests do) to make notebooks opened on their own always run the demo



# -- what a notebook opened on its own shows -------------------------------------------------------

@dataclass
class Context:
    """The params and the results folder a notebook works with.

    ``demo``: the tiny demo of configs/demo.yaml under results/demo. ``writes``: whether the
    notebook saves its outputs (a notebook opened on its own over the real results only shows them,
    so that it never rewrites what ``dvc repro`` made).
    """

    params: Params
    results_dir: Path
    demo: bool
    writes: bool


def context(params_file: str | None, results_dir: str | None, needs: str | None = None,
            show_real: bool = False) -> Context:
    """The notebook's params and results folder.

    Under ``dvc repro`` both are given. Opened on its own, a notebook with ``show_real`` shows the
    real results of params.yaml when every run has its ``needs`` stage ("train" or "infer") done;
    otherwise it runs the tiny demo, whose missing upstream stages ``needs`` are made in this
    process first (see :func:`ensure_demo`).
    """
    if params_file is not None:
        return Context(load_params(params_file), resolve(results_dir or "results"), False, True)
    if show_real and not os.environ.get(DEMO_ENV) and resolve("params.yaml").is_file():
        params = load_params("params.yaml")
        if needs and _complete(params, resolve("results"), needs):
            return Context(params, resolve("results"), False, False)
    params = load_params(DEMO_PARAMS)
    if needs:
        ensure_demo(params, needs)
    return Context(params, resolve(DEMO_RESULTS), True, True)


def _complete(params: Params, results_dir: Path, stage: str) -> bool:
    runs = [(v, s) for v in params.grid.variants for s in params.grid.seeds]
    if stage == "train":
        return all((train_dir(results_dir, v, s) / "model.pt").is_file() for v, s in runs)
    return all((infer_dir(results_dir, v, s) / "metrics.json").is_file() for v, s in runs)


def ensure_demo(params: Params, upto: str) -> None:
    """Make every demo stage up to ``upto`` ("taxonomy", "train" or "infer") that is missing, in this process."""
    results = resolve(DEMO_RESULTS)
    if not taxonomy_path(results).is_file():
        save_taxonomy(build_taxonomy(params), results)
    if upto == "taxonomy":
        return
    for variant in params.grid.variants:
        seeds = params.grid.seeds
        if not all((train_dir(results, variant, s) / "model.pt").is_file() for s in seeds):
            train_variant(params, variant, seeds, results)
        if upto == "infer" and not all((infer_dir(results, variant, s) / "metrics.json").is_file() for s in seeds):
            infer_variant(params, variant, seeds, results)


# -- every seed of a variant ------------------------------------------------------------------------

def summary_file(metrics_dir: str | Path, stage: str, variant: str) -> Path:
    """A variant's summary over its seeds: ``<metrics_dir>/<stage>/<variant>.json``.

    ``dvc repro`` passes ``metrics``, a folder that git tracks: an experiment's commit then holds its
    metrics, which ``dvc exp show`` reads from it (results/ is git-ignored).
    """
    return resolve(metrics_dir) / stage / f"{variant}.json"


def train_variant(params: Params, variant: str, seeds: list[int], results_dir: str | Path,
                  metrics_dir: str | Path | None = None) -> dict[int, pd.DataFrame]:
    """Train ``variant`` once per seed, each into its own folder; the history of each run, by seed.

    The seeds' summary goes to ``<metrics_dir>/train/<variant>.json`` (``metrics_dir``: by default
    ``results_dir``).

    Each run's resume state (last.pt) lives in ``resume/<variant>/seed<k>/``, outside the stage's
    output, which dvc deletes before it reruns a stage: a stage killed at its third seed resumes
    there, and its finished seeds are restored from theirs, not retrained. The folder goes once
    every seed is done.
    """
    from ..training.loop import summarize_history

    histories, summary = {}, {}
    for seed in seeds:
        run = prepare_training(params, variant, seed, taxonomy_path(results_dir))
        last = resume_dir(results_dir, variant) / f"seed{seed}" / "last.pt"
        histories[seed] = train(run, params, train_dir(results_dir, variant, seed), last_file=last,
                                logs=log_dir(results_dir, variant, seed))
        summary[f"seed{seed}"] = {"params": run.parameters, **run.conversion,
                                  **summarize_history(histories[seed].to_dict("records"), run.task.select)}
    atomic_write_json(summary_file(metrics_dir or results_dir, "train", variant), summary)
    shutil.rmtree(resume_dir(results_dir, variant), ignore_errors=True)
    return histories


def resume_dir(results_dir: str | Path, variant: str) -> Path:
    """Where a variant's runs keep their resume state until every seed has finished."""
    return resolve(results_dir) / "resume" / variant


def infer_variant(params: Params, variant: str, seeds: list[int], results_dir: str | Path,
                  metrics_dir: str | Path | None = None, write: bool = True) -> dict[int, tuple]:
    """Test every seed's model of ``variant``: (trained run, metrics, predictions) by seed.

    With ``write``, each run's metrics.json, predictions.csv and model bundle (model.dhnn, for
    ``dhnn predict``) go to its infer folder, and the seeds' metrics to
    ``<metrics_dir>/infer/<variant>.json`` (``metrics_dir``: by default ``results_dir``).
    """
    from ..serving.bundle import export_bundle

    out, summary = {}, {}
    for seed in seeds:
        checkpoint = train_dir(results_dir, variant, seed) / "model.pt"
        trained = load_trained(params, variant, seed, checkpoint)
        metrics, predictions = test(trained, params)
        out[seed] = (trained, metrics, predictions)
        if write:
            folder = infer_dir(results_dir, variant, seed)
            save_inference(folder, trained, metrics, predictions, params)
            export_bundle(checkpoint, params.section("data"), folder / "model.dhnn")
            summary[f"seed{seed}"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    if write:
        atomic_write_json(summary_file(metrics_dir or results_dir, "infer", variant), summary)
    return out
