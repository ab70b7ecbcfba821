"""The infer stage (notebooks/02_infer.ipynb): every seed's model of one variant, rebuilt from its
checkpoint and scored on the test set; each run's metrics, predictions and model bundle.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch.nn as nn

from ..data.base import Splits, make_loader
from ..evaluation.inference import select_device
from ..evaluation.scoring import score_model
from ..io import atomic_write_json, atomic_write_text
from ..models.registry import create_model
from ..params import Params
from ..paths import resolve
from ..serving.bundle import export_bundle
from ..taxonomy import Taxonomy
from ..training.checkpoint import CheckpointError, check_run, load_checkpoint
from .build import run_data
from .layout import infer_dir, summary_file, train_dir


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
    full_tree: Taxonomy | None = None  # with collapse_chains: the taxonomy test scores on


def load_trained(params: Params, variant: str, seed: int, checkpoint: str | Path) -> Trained:
    """Rebuild a run's model from its checkpoint, refusing one of another run or other settings."""
    path = resolve(checkpoint)
    state = load_checkpoint(path)
    check_run(state, path, variant, seed)
    tree = Taxonomy.from_dict(state["taxonomy"])
    rd = run_data(params, variant, tree)
    if state.get("config") != rd.cfg:
        raise CheckpointError(f"{path}: trained with other settings for {variant!r} than params.yaml has now; "
                              f"rerun `dvc repro` to retrain it")
    full = state.get("full_taxonomy")
    if state["config"].get("collapse_chains") and full is None:
        raise CheckpointError(f"{path}: trained on a collapsed tree without recording the full taxonomy, which "
                              f"test scores on; rerun its train stage")
    model = create_model(state["config"], tree, rd.splits.in_chans, rd.splits.image_size, rd.task.multilabel)
    model.load_state_dict(state["model"])
    return Trained(variant, seed, state["epoch"], tree, rd.splits, model.to(select_device(params.train.device)),
                   rd.task, None if full is None else Taxonomy.from_dict(full))


def test(trained: Trained, params: Params) -> tuple[dict, pd.DataFrame]:
    """The run's test metrics (validation picks multi-label thresholds), and one row per test image."""
    rt = params.runtime
    loaders = [make_loader(s, rt.eval_batch_size, shuffle=False, seed=0, num_workers=rt.num_workers)
               for s in (trained.splits.val, trained.splits.test)]
    device = next(trained.model.parameters()).device
    return score_model(trained.model, *loaders, trained.tree, device, params.infer.beam_width,
                       trained.task.multilabel, params.train.amp, params.infer.backoff_precision,
                       full_tree=trained.full_tree, calibrate=params.infer.calibrate)


def save_inference(out_dir: str | Path, trained: Trained, metrics: dict, predictions: pd.DataFrame,
                   params: Params) -> None:
    """Write the run's metrics.json and predictions.csv, each atomically."""
    out = resolve(out_dir)
    atomic_write_json(out / "metrics.json", {"variant": trained.variant, "seed": trained.seed,
                                             "task": trained.task.name, **metrics,
                                             "beam_width": params.infer.beam_width,
                                             "test_images": len(trained.splits.test)})
    atomic_write_text(out / "predictions.csv", predictions.to_csv(index_label="test_index", lineterminator="\n"))


def infer_variant(params: Params, variant: str, seeds: list[int], results_dir: str | Path,
                  metrics_dir: str | Path | None = None, write: bool = True) -> dict[int, tuple]:
    """Test every seed's model of ``variant``: (trained run, metrics, predictions) by seed.

    With ``write``, each run's metrics.json, predictions.csv and model bundle (model.dhnn, for
    ``dhnn predict``) go to its infer folder, and the seeds' metrics to
    ``<metrics_dir>/infer/<variant>.json`` (``metrics_dir``: by default ``results_dir``).
    """
    out, summary = {}, {}
    for seed in seeds:
        checkpoint = train_dir(results_dir, variant, seed) / "model.pt"
        trained = load_trained(params, variant, seed, checkpoint)
        metrics, predictions = test(trained, params)
        out[seed] = (trained, metrics, predictions)
        if write:
            folder = infer_dir(results_dir, variant, seed)
            save_inference(folder, trained, metrics, predictions, params)
            export_bundle(checkpoint, params.section("data"), folder / "model.dhnn", metrics.get("temperatures"))
            summary[f"seed{seed}"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    if write:
        atomic_write_json(summary_file(metrics_dir or results_dir, "infer", variant), summary)
    return out
