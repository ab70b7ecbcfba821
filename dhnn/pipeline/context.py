"""What a notebook works with: the params and results of ``dvc repro``, or, opened on its own, the
real results or the tiny demo.

Under ``dvc repro`` (params given) this imports nothing beyond the params and the folder layout;
only a notebook opened on its own reaches dhnn.pipeline.demo, which builds missing demo stages.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..params import Params, load_params
from ..paths import resolve
from .layout import complete

DEMO_PARAMS = "configs/demo.yaml"
DEMO_RESULTS = "results/demo"
DEMO_ENV = "DHNN_DEMO"  # set (tests do) to make notebooks opened on their own always run the demo


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
    process first (dhnn.pipeline.demo).
    """
    if params_file is not None:
        return Context(load_params(params_file), resolve(results_dir or "results"), False, True)
    if show_real and not os.environ.get(DEMO_ENV) and resolve("params.yaml").is_file():
        params = load_params("params.yaml")
        if needs and complete(resolve("results"), params.grid.variants, params.grid.seeds, needs):
            return Context(params, resolve("results"), False, False)
    params = load_params(DEMO_PARAMS)
    if needs:
        from .demo import ensure_demo  # a notebook opened on its own only: never part of a stage (deps.py)

        ensure_demo(params, needs, resolve(DEMO_RESULTS))
    return Context(params, resolve(DEMO_RESULTS), True, True)
