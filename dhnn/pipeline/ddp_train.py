"""``python -m dhnn.pipeline.ddp_train``: one run, trained data-parallel; every torchrun process runs it.

    torchrun --standalone --nproc_per_node 4 -m dhnn.pipeline.ddp_train \\
        --params params.yaml --variant RNN-Pool-Resi --seed 0 --results results

Each process builds the run exactly as the train stage does (``train_stage.prepare_training``: the same
seed, data and initial weights), reads its share of every batch of ``train.batch_size`` (the
global batch, split evenly) and averages gradients with the others. Rank 0 evaluates the whole
validation set each epoch and writes what a one-process run writes under
``results/train/<variant>/seed<k>/`` (``model.pt``, ``last.pt`` while it trains, ``dvclive/``),
plus ``history.json``, the per-epoch history that the train stage reads back. A job that is
stopped resumes from ``last.pt`` when it is started again with as many processes.

``dvc repro`` starts this itself when ``train.nproc`` is above 1 (one machine), with one argument:
a JSON job file (``params``, ``variant``, ``seed``, ``taxonomy``, ``out``, ``logs``, ``last``).
torchrun parses every option on its command line, the script's included, and takes an option
that abbreviates one of its own (``--logs`` for ``--logs-specs``) as its own: a file name is the
one argument it leaves alone. For several machines, run torchrun on each (docs/scaling.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..console import say
from ..io import atomic_write_json
from ..params import ParamsError, load_params
from ..paths import resolve
from . import layout, train_stage
from ..training.distributed import barrier, cleanup, setup


def parser() -> argparse.ArgumentParser:
    """The command line; none of its options abbreviates a torchrun option (tests/test_distributed.py)."""
    p = argparse.ArgumentParser(prog="python -m dhnn.pipeline.ddp_train", description=__doc__.splitlines()[0])
    p.add_argument("job", nargs="?", help="a JSON job file, as the train stage writes it (instead of the options)")
    p.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    p.add_argument("--variant", help="a variant of the params file")
    p.add_argument("--seed", type=int, help="the run's seed")
    p.add_argument("--results", default="results",
                   help="the results folder: the tree is read from its taxonomy/taxonomy.json and the run "
                        "written to train/<variant>/seed<k>/ (default: results)")
    return p


def read_job(argv: list[str] | None = None) -> dict:
    """The run to train: the job file's, or the command line's with the results folder's paths."""
    p = parser()
    args = p.parse_args(argv)
    if args.job:
        return json.loads(Path(args.job).read_text(encoding="utf-8"))
    if args.variant is None or args.seed is None:
        p.error("give a job file, or --variant and --seed")
    return {"params": args.params, "variant": args.variant, "seed": args.seed,
            "taxonomy": str(layout.taxonomy_path(args.results)),
            "out": str(layout.train_dir(args.results, args.variant, args.seed)),
            "logs": str(layout.log_dir(args.results, args.variant, args.seed)), "last": None}


def main(argv: list[str] | None = None) -> int:
    """Train the run of the job file or the options in this process, as one rank of the torchrun job."""
    job = read_job(argv)
    try:
        params = load_params(job["params"])
    except ParamsError as err:
        say(f"error: {err}")
        return 1
    out = resolve(job["out"])
    dist = setup(params.train.device)
    try:
        run = train_stage.prepare_training(params, job["variant"], job["seed"], job["taxonomy"])
        history = train_stage.train_in_process(run, params, out, dist, last_file=job.get("last"), logs=job.get("logs"))
        if dist.is_main:
            atomic_write_json(out / train_stage.DDP_HISTORY, history)
        barrier(dist)  # nobody leaves the group while rank 0 still writes
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
