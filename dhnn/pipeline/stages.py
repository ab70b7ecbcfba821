"""The pipeline's stages as functions: what each notebook calls, and what a demo run chains together.

``dvc repro`` runs each notebook with ``params_file``, ``results_dir`` and (for a run) ``variant``
and ``seed``; the notebook validates the params, calls the functions here step by step, and shows
what they return. Folders follow one layout under ``results_dir``:

    taxonomy/taxonomy.json   train/<variant>-seed<k>/   infer/<variant>-seed<k>/   report/
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch.nn as nn

from ..data.base import Splits, make_loader
from ..data.registry import dataset_taxonomy, get_source
from ..evaluation.inference import select_device
from ..io import atomic_write_json, atomic_write_text
from ..params import Params, load_params
from ..paths import resolve, run_name
from ..tasks import get_task
from ..taxonomy import Taxonomy

DEMO_PARAMS = "configs/demo.yaml"
DEMO_RESULTS = "results/demo"
DEMO_ENV = "DHNN_DEMO"  # set (tests do) to make notebooks opened on their own always run the demo


def taxonomy_path(results_dir: str | Path) -> Path:
    """Where the taxonomy stage writes the tree."""
    return resolve(results_dir) / "taxonomy" / "taxonomy.json"


def train_dir(results_dir: str | Path, variant: str, seed: int) -> Path:
    """A run's training folder."""
    return resolve(results_dir) / "train" / run_name(variant, seed)


def infer_dir(results_dir: str | Path, variant: str, seed: int) -> Path:
    """A run's inference folder."""
    return resolve(results_dir) / "infer" / run_name(variant, seed)


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
        for seed in params.grid.seeds:
            if not (train_dir(results, variant, seed) / "model.pt").is_file():
                run = prepare_training(params, variant, seed, taxonomy_path(results))
                train(run, params, train_dir(results, variant, seed))
            if upto == "infer" and not (infer_dir(results, variant, seed) / "metrics.json").is_file():
                trained = load_trained(params, variant, seed, train_dir(results, variant, seed) / "model.pt")
                metrics, predictions = test(trained, params)
                save_inference(infer_dir(results, variant, seed), trained, metrics, predictions, params)


# -- taxonomy --------------------------------------------------------------------------------------

def build_taxonomy(params: Params) -> Taxonomy:
    """Check the data set's files, read its class tree, and check the tree against every variant."""
    data, tax = params.section("data"), params.section("taxonomy")
    get_source(data["name"]).check(data)
    tree = dataset_taxonomy(data, tax)
    for name in params.grid.variants:
        check_tree(params, name, tree)
    return tree


def check_tree(params: Params, variant: str, tree: Taxonomy) -> Taxonomy:
    """The tree a variant trains on (collapsed if it asks), checked against its level settings."""
    cfg = params.variant(variant)
    if cfg.get("collapse_chains"):
        tree = tree.collapse_chains()
    weights = params.train.level_weights
    sizes = [len(weights)] if isinstance(weights, list) else [len(weights.start), len(weights.end)]
    which = f"the tree of {variant!r} (single-child chains collapsed)" if cfg.get("collapse_chains") else "the taxonomy"
    if cfg["kind"] != "flat" and any(n != tree.num_levels for n in sizes):
        raise ValueError(f"{params.source}: train.level_weights: {sizes[0]} weights, but {which} has "
                         f"{tree.num_levels} levels (one weight w_t per level)")
    if cfg["kind"] != "flat" and len(cfg["level_layers"]) != tree.num_levels:
        raise ValueError(f"{params.source}: variants.{variant}.level_layers: {len(cfg['level_layers'])} entries, "
                         f"but {which} has {tree.num_levels} levels (one list S_t per level)")
    return tree


def save_taxonomy(tree: Taxonomy, results_dir: str | Path) -> Path:
    """Write the tree where the later stages read it."""
    path = taxonomy_path(results_dir)
    tree.save(path)
    return path


# -- train -----------------------------------------------------------------------------------------

@dataclass
class TrainRun:
    """Everything one (variant, seed) run trains with."""

    variant: str
    seed: int
    cfg: dict
    tree: Taxonomy
    splits: Splits
    model: nn.Module
    task: object
    parameters: int
    conversion: dict


def prepare_training(params: Params, variant: str, seed: int, taxonomy_file: str | Path) -> TrainRun:
    """Seed everything, read the tree and the data, and build the variant's model."""
    # models and training import timm and torchvision: only the stages that build models pay for them
    from ..models.registry import conversion_summary, count_parameters, create_model
    from ..training.loop import seed_everything

    seed_everything(seed)
    tree = check_tree(params, variant, Taxonomy.load(resolve(taxonomy_file)))
    cfg, data = params.variant(variant), params.section("data")
    source = get_source(data["name"])
    task = get_task(source.task)
    splits = source.splits(data, tree)
    model = create_model(cfg, tree, splits.in_chans, splits.image_size, task.multilabel)
    return TrainRun(variant, seed, cfg, tree, splits, model, task, count_parameters(model),
                    conversion_summary(model, splits.in_chans, splits.image_size))


def train(run: TrainRun, params: Params, out_dir: str | Path) -> pd.DataFrame:
    """Train ``run``, resuming from its last finished epoch if it was interrupted; the history per epoch."""
    from dvclive import Live  # dvclive imports a good part of dvc: only the train stage needs it

    from ..training.checkpoint import fingerprint
    from ..training.loop import fit, summarize_history

    out, t, rt = resolve(out_dir), params.train, params.runtime
    train_loader = make_loader(run.splits.train, t.batch_size, shuffle=True, seed=run.seed, num_workers=rt.num_workers)
    val_loader = make_loader(run.splits.val, rt.eval_batch_size, shuffle=False, seed=run.seed,
                             num_workers=rt.num_workers)
    settings = {"data": params.section("data"), "train": params.section("train"), "variant": run.cfg,
                "beam_width": params.infer.beam_width, "seed": run.seed, "taxonomy": run.tree.to_dict()}
    info = {"variant": run.variant, "seed": run.seed, "config": run.cfg, "taxonomy": run.tree.to_dict()}
    with Live(str(out / "dvclive"), save_dvc_exp=False, dvcyaml=False, report=None) as live:
        history = fit(run.model, train_loader, val_loader, task=run.task, epochs=t.epochs, lr=t.lr,
                      weight_decay=t.weight_decay, level_weights=params.section("train")["level_weights"],
                      beam_width=params.infer.beam_width, device=select_device(t.device), out_dir=out,
                      run_info=info, fingerprint=fingerprint(settings), live=live, amp=t.amp,
                      progress=rt.progress, alt=run.cfg.get("alt"), optimizer=t.optimizer, schedule=t.schedule)
        live.summary.update(params=run.parameters, **run.conversion, **summarize_history(history, run.task.select))
    return pd.DataFrame(history)


# -- infer -----------------------------------------------------------------------------------------

@dataclass
class Trained:
    """A trained run, rebuilt from its checkpoint for inference."""

    variant: str
    seed: int
    epoch: int
    tree: Taxonomy
    splits: Splits
    model: nn.Module
    task: object


def load_trained(params: Params, variant: str, seed: int, checkpoint: str | Path) -> Trained:
    """Rebuild a run's model from its checkpoint, refusing one of another run or other settings."""
    from ..models.registry import create_model
    from ..training.checkpoint import CheckpointError, check_run, load_checkpoint

    path = resolve(checkpoint)
    state = load_checkpoint(path)
    check_run(state, path, variant, seed)
    if state.get("config") != params.variant(variant):
        raise CheckpointError(f"{path}: trained with other settings for {variant!r} than params.yaml has now; "
                              f"rerun `dvc repro` to retrain it")
    tree = Taxonomy.from_dict(state["taxonomy"])
    data = params.section("data")
    source = get_source(data["name"])
    task = get_task(source.task)
    splits = source.splits(data, tree)
    model = create_model(state["config"], tree, splits.in_chans, splits.image_size, task.multilabel)
    model.load_state_dict(state["model"])
    return Trained(variant, seed, state["epoch"], tree, splits, model.to(select_device(params.train.device)), task)


def test(trained: Trained, params: Params) -> tuple[dict, pd.DataFrame]:
    """The run's test metrics (validation picks multi-label thresholds), and one row per test image."""
    rt = params.runtime
    loaders = [make_loader(s, rt.eval_batch_size, shuffle=False, seed=0, num_workers=rt.num_workers)
               for s in (trained.splits.val, trained.splits.test)]
    device = next(trained.model.parameters()).device
    return trained.task.test(trained.model, *loaders, trained.tree, device, params.infer.beam_width, params.train.amp)


def save_inference(out_dir: str | Path, trained: Trained, metrics: dict, predictions: pd.DataFrame,
                   params: Params) -> None:
    """Write the run's metrics.json and predictions.csv, each atomically."""
    out = resolve(out_dir)
    atomic_write_json(out / "metrics.json", {"variant": trained.variant, "seed": trained.seed, **metrics,
                                             "beam_width": params.infer.beam_width,
                                             "test_images": len(trained.splits.test)})
    atomic_write_text(out / "predictions.csv", predictions.to_csv(index_label="test_index", lineterminator="\n"))



# -- report ----------------------------------------------------------------------------------------

def collect(params: Params, results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, object]:
    """Every run of the grid: (test metrics and training cost per run, learning curves, the task)."""
    from ..report.tables import load_grid

    task = get_task(get_source(params.data.name).task)
    runs, history = load_grid(resolve(results_dir), params.grid.variants, params.grid.seeds, task.required)
    return runs, history, task
