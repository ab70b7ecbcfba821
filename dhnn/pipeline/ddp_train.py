"""``python -m dhnn.pipeline.ddp_train``: one run, trained data-parallel; every torchrun process runs it.

    torchrun --standalone --nproc_per_node 4 -m dhnn.pipeline.ddp_train \\
        --params params.yaml --variant RNN-Pool-Resi --seed 0 --results results

Each process builds the run exactly as the train stage does (``train_stage.prepare_training``: the same
seed, data and initial weights), reads its share of every batch of ``train.batch_size`` (the
global batch, split evenly) and averages gradients with the others. Rank 0 evaluates the whole
validation set each epoch and writes what a one-process run writes under
``results/train/<variant>-seed<k>/`` (``model.pt``, ``last.pt`` while it trains, ``dvclive/``),
plus ``history.json``, the per-epoch history that the train stage reads back. A job that is
stopped resumes from ``last.pt`` when it is started again with as many processes.

``dvc repro`` starts this itself when ``train.nproc`` is above 1 (one machine); for several
machines, run torchrun on each (see the README).
"""
from __future__ import annotations

import argparse
import sys

from ..console import say
from ..io import atomic_write_json
from ..params import ParamsError, load_params
from ..paths import resolve
from . import layout, train_stage
from ..training.distributed import barrier, cleanup, setup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dhnn.pipeline.ddp_train", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    parser.add_argument("--variant", required=True, help="a variant of the params file")
    parser.add_argument("--seed", type=int, required=True, help="the run's seed")
    parser.add_argument("--results", default="results",
                        help="the results folder: the tree is read from its taxonomy/taxonomy.json and the run "
                             "written to train/<variant>/seed<k>/ (default: results)")
    parser.add_argument("--taxonomy", help="the tree file, instead of the results folder's")
    parser.add_argument("--out", help="the run's folder, instead of the results folder's")
    parser.add_argument("--logs", help="the folder of its dvclive logs (default: the run's folder)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as err:
        say(f"error: {err}")
        return 1
    taxonomy = args.taxonomy or layout.taxonomy_path(args.results)
    out = resolve(args.out) if args.out else layout.train_dir(args.results, args.variant, args.seed)
    dist = setup(params.train.device)
    try:
        run = train_stage.prepare_training(params, args.variant, args.seed, taxonomy)
        history = train_stage.train_in_process(run, params, out, dist, logs=args.logs)
        if dist.is_main:
            atomic_write_json(out / train_stage.DDP_HISTORY, history)
        barrier(dist)  # nobody leaves the group while rank 0 still writes
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
