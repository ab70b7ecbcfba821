"""The tiny demo's upstream stages, made in the notebook's own process when a notebook is opened on
its own (dhnn.pipeline.context). It imports every stage, so no stage may run it: dvc.yaml's
dependencies leave it out (dhnn.pipeline.deps), and it refuses to run inside a stage, where
dhnn.pipeline.run sets ``DHNN_STAGE``.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..params import Params
from .infer_stage import infer_variant
from .layout import infer_dir, taxonomy_path, train_dir
from .run import STAGE_ENV
from .taxonomy_stage import build_taxonomy, save_taxonomy
from .train_stage import train_variant


def ensure_demo(params: Params, upto: str, results: Path) -> None:
    """Make every demo stage up to ``upto`` ("taxonomy", "train" or "infer") that is missing under ``results``."""
    if os.environ.get(STAGE_ENV):
        raise RuntimeError(f"the demo ran inside the stage of {os.environ[STAGE_ENV]}: stages are given params_file "
                           f"and must never build the demo (its code is no dependency of theirs in dvc.yaml)")
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
