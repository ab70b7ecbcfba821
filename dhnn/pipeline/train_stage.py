"""The train stage (notebooks/01_train.ipynb): every seed of one variant, trained in one process.

A stage's fixed cost (dvc, papermill, the kernel, importing torch) is paid once per variant and
shared by its seeds (benchmarks/speed.py measures it). Each run keeps its own folder, checkpoint
and learning curves. This stage builds data, models and the training loop; it never imports the
report, the scoring of the infer stage or the bundle writer, so editing those retrains nothing.
"""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch.nn as nn
import yaml
from dvclive import Live

from ..console import say
from ..data.base import Splits, make_loader
from ..evaluation.inference import select_device
from ..io import atomic_write_json
from ..models.registry import conversion_summary, count_parameters, create_model
from ..params import Params
from ..paths import project_root, resolve
from ..taxonomy import Taxonomy
from ..training.checkpoint import fingerprint
from ..training.distributed import distributed_loader, rank_seed
from ..training.loop import fit, seed_everything, summarize_history
from .build import run_data
from .layout import log_dir, resume_dir, summary_file, taxonomy_path, train_dir
from .taxonomy_stage import check_tree


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
    full_tree: Taxonomy | None = None  # with collapse_chains: the taxonomy ``tree`` was collapsed from


def prepare_training(params: Params, variant: str, seed: int, taxonomy_file: str | Path) -> TrainRun:
    """Seed everything, read the tree and the data, and build the variant's model (see :func:`run_data`)."""
    seed_everything(seed)
    full = Taxonomy.load(resolve(taxonomy_file))
    tree = check_tree(params, variant, full)
    rd = run_data(params, variant, tree)
    model = create_model(rd.cfg, tree, rd.splits.in_chans, rd.splits.image_size, rd.task.multilabel)
    return TrainRun(variant, seed, rd.cfg, tree, rd.splits, model, rd.task, count_parameters(model),
                    conversion_summary(model, rd.splits.in_chans, rd.splits.image_size),
                    full if rd.cfg.get("collapse_chains") else None)


def train(run: TrainRun, params: Params, out_dir: str | Path, last_file: str | Path | None = None,
          logs: str | Path | None = None) -> pd.DataFrame:
    """Train ``run``, resuming from its last finished epoch if it was interrupted; the history per epoch.

    With ``train.nproc`` above 1 the run trains data-parallel in that many processes on this
    machine (torchrun, one GPU each under CUDA): see :func:`train_distributed`.
    """
    if params.train.nproc > 1:
        return pd.DataFrame(train_distributed(run, params, out_dir, logs, last_file))
    return pd.DataFrame(train_in_process(run, params, out_dir, last_file=last_file, logs=logs))


def train_in_process(run: TrainRun, params: Params, out_dir: str | Path, dist=None,
                     last_file: str | Path | None = None, logs: str | Path | None = None) -> list[dict]:
    """Train ``run`` in this process; the history per epoch.

    ``dist`` (dhnn.training.distributed.Dist) is this process's rank in a torchrun job: it then
    reads its share of each batch, and only rank 0 writes (model.pt, last.pt, dvclive/).
    """
    out, t, rt = resolve(out_dir), params.train, params.runtime
    if dist is None:
        train_loader = make_loader(run.splits.train, t.batch_size, shuffle=True, seed=run.seed,
                                   num_workers=rt.num_workers)
    else:
        train_loader = distributed_loader(run.splits.train, t.batch_size, run.seed, dist, rt.num_workers)
        if dist.rank:  # the same initial weights on every rank, but each its own augmentation and dropout
            seed_everything(rank_seed(run.seed, dist.rank))
    val_loader = make_loader(run.splits.val, rt.eval_batch_size, shuffle=False, seed=run.seed,
                             num_workers=rt.num_workers)
    settings = {"data": params.section("data"), "train": params.section("train"), "variant": run.cfg,
                "beam_width": params.infer.beam_width, "seed": run.seed, "taxonomy": run.tree.to_dict()}
    if dist is not None:
        settings["world_size"] = dist.world_size  # resume only with as many processes
    info = {"variant": run.variant, "seed": run.seed, "config": run.cfg, "taxonomy": run.tree.to_dict()}
    if run.full_tree is not None:  # test scores on it (PathTask.test)
        info["full_taxonomy"] = run.full_tree.to_dict()
    main = dist is None or dist.is_main
    live_dir = str(resolve(logs or out) / "dvclive")
    live = Live(live_dir, save_dvc_exp=False, dvcyaml=False, report=None) if main else None
    try:
        history = fit(run.model, train_loader, val_loader, task=run.task, lr=t.lr,
                      epochs=run.cfg.get("epochs") or t.epochs,  # a variant's own epochs override train.epochs
                      weight_decay=t.weight_decay, level_weights=params.section("train")["level_weights"],
                      beam_width=params.infer.beam_width,
                      device=select_device(t.device) if dist is None else dist.device, out_dir=out,
                      run_info=info, fingerprint=fingerprint(settings), live=live, amp=t.amp,
                      progress=rt.progress, alt=run.cfg.get("alt"), optimizer=t.optimizer, schedule=t.schedule,
                      dist=dist, label_smoothing=t.label_smoothing, last_file=last_file)
    except BaseException:  # a NaN, Ctrl-C: no half-written logs (a stub metrics.json); a rerun logs every epoch again
        if main:
            shutil.rmtree(live_dir, ignore_errors=True)
        raise
    if main:
        live.summary.update(params=run.parameters, **run.conversion, **summarize_history(history, run.task.select))
        live.end()
    return history


DDP_HISTORY = "history.json"  # what rank 0 of a torchrun job leaves beside model.pt for train_distributed


def train_distributed(run: TrainRun, params: Params, out_dir: str | Path, logs: str | Path | None = None,
                      last_file: str | Path | None = None) -> list[dict]:
    """Train ``run`` in ``train.nproc`` processes on this machine under torchrun; the history per epoch.

    Each process runs ``python -m dhnn.pipeline.ddp_train`` on a job file: the params file these
    params were read from, the run's tree and seed (so it rebuilds the same data and model), its
    folders and its resume file ``last_file``. Rank 0 writes what a one-process run writes, and the
    history, which this reads back. The job's output streams to the terminal; a failed job raises,
    with the end of its output.
    """
    out, n = resolve(out_dir), params.train.nproc
    if params.train.batch_size % n:
        raise ValueError(f"{params.source}: train.batch_size: {params.train.batch_size} is not divisible by "
                         f"train.nproc {n} (each process takes an equal share of every batch)")
    history_file = out / DDP_HISTORY
    history_file.unlink(missing_ok=True)  # never read back a history that an earlier job left
    with tempfile.TemporaryDirectory(prefix="dhnn-ddp-") as tmp:
        taxonomy = Path(tmp) / "taxonomy.json"
        # the tree the run was prepared from: each process collapses it again, as prepare_training did
        (run.tree if run.full_tree is None else run.full_tree).save(taxonomy)
        source = Path(params.source)
        if not source.is_file():  # params validated from a mapping, not read from a file
            source = Path(tmp) / "params.yaml"
            source.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        # torchrun --standalone, but on the loopback interface whatever the host name resolves to: a
        # rendezvous store on a free port of 127.0.0.1, which the processes also use as MASTER_ADDR
        # one file as the worker's only argument: torchrun parses every option on its command line and
        # takes one that abbreviates its own (--logs for --logs-specs) as its own
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"params": str(source), "variant": run.variant, "seed": run.seed,
                                   "taxonomy": str(taxonomy), "out": str(out),
                                   "logs": None if logs is None else str(resolve(logs)),
                                   "last": None if last_file is None else str(resolve(last_file))}), encoding="utf-8")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--rdzv-backend=c10d",
               "--rdzv-endpoint=127.0.0.1:0", f"--rdzv-id=dhnn-{uuid.uuid4().hex}", "--local-addr=127.0.0.1",
               f"--nproc_per_node={n}", "-m", "dhnn.pipeline.ddp_train", str(job)]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))  # share the cores
        env.setdefault("PYTHONUNBUFFERED", "1")
        if Path("/sys/class/net/lo").exists():
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # and gloo, the CPU backend, on that interface too
        say(f"{out.name}: training in {n} processes: torchrun --nproc_per_node={n} -m dhnn.pipeline.ddp_train")
        lines: collections.deque[str] = collections.deque(maxlen=2000)
        proc = subprocess.Popen(cmd, cwd=project_root(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        try:
            for line in proc.stdout:
                say(line)
                lines.append(line.rstrip("\n"))
            proc.wait()
        except BaseException:  # an interrupted kernel takes its workers down with it
            proc.terminate()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
    if proc.returncode != 0:
        # torchrun ends with its own report; the workers' exceptions ("[rank1]: ValueError: ...") say why
        error = re.compile(r"^\[rank\d+\]: ((?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt)\b.*)$")
        errors = list(dict.fromkeys(m.group(1) for m in map(error.match, lines) if m))
        why = "\n".join(errors[:3]) if errors else "the end of its output:\n" + "\n".join(list(lines)[-15:])
        raise RuntimeError(f"{out.name}: distributed training in {n} processes failed (exit {proc.returncode}): {why}")
    if not history_file.is_file():
        raise RuntimeError(f"{history_file}: the distributed job exited cleanly but left no history")
    history = json.loads(history_file.read_text(encoding="utf-8"))
    history_file.unlink()
    return history


# -- every seed of a variant -----------------------------------------------------------------------

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
