"""The pipeline's steps as functions, one (variant, seed) run at a time; dhnn.pipeline.variants
runs them over every seed of a variant, as the train and infer stages do.

Folders follow one layout under ``results_dir``:

    taxonomy/taxonomy.json   train/<variant>/seed<k>/model.pt   logs/<variant>/seed<k>/dvclive/
    infer/<variant>/seed<k>/   report/
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
from ..params import Params
from ..paths import resolve, run_path
from ..tasks import get_task
from ..taxonomy import Taxonomy


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
    full_tree: Taxonomy | None = None  # with collapse_chains: the taxonomy ``tree`` was collapsed from


def _end_after_where(params: Params, variant: str) -> str:
    return f"{params.source}: variants.{variant}.s2s.end_after (data {params.data.name!r})"


def prepare_training(params: Params, variant: str, seed: int, taxonomy_file: str | Path) -> TrainRun:
    """Seed everything, read the tree and the data, and build the variant's model.

    Settings that depend on the labels (CNN-S2S's ``end_after: auto``) are fixed here, from every
    split's labels, before training starts; the run's ``cfg`` is the fixed one.
    """
    # models and training import timm and torchvision: only the stages that build models pay for them
    from ..models.registry import conversion_summary, count_parameters, create_model, resolve_config
    from ..training.loop import seed_everything

    seed_everything(seed)
    full = Taxonomy.load(resolve(taxonomy_file))
    tree = check_tree(params, variant, full)
    cfg, data = params.variant(variant), params.section("data")
    source = get_source(data["name"])
    task = get_task(source.task)
    splits = source.splits(data, tree)
    ends = task.label_ends([splits.train, splits.val, splits.test], tree)
    cfg = resolve_config(cfg, tree, ends, _end_after_where(params, variant))
    model = create_model(cfg, tree, splits.in_chans, splits.image_size, task.multilabel)
    return TrainRun(variant, seed, cfg, tree, splits, model, task, count_parameters(model),
                    conversion_summary(model, splits.in_chans, splits.image_size),
                    full if cfg.get("collapse_chains") else None)


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
    import shutil

    from dvclive import Live  # dvclive imports a good part of dvc: only the train stage needs it

    from ..training.checkpoint import fingerprint
    from ..training.distributed import distributed_loader, rank_seed
    from ..training.loop import fit, seed_everything, summarize_history

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
    import collections
    import json
    import re
    import subprocess
    import sys
    import tempfile
    import uuid

    import yaml

    from ..console import say
    from ..paths import project_root

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
    full_tree: Taxonomy | None = None  # with collapse_chains: the taxonomy test scores on


def load_trained(params: Params, variant: str, seed: int, checkpoint: str | Path) -> Trained:
    """Rebuild a run's model from its checkpoint, refusing one of another run or other settings."""
    from ..models.registry import create_model, resolve_config
    from ..training.checkpoint import CheckpointError, check_run, load_checkpoint

    path = resolve(checkpoint)
    state = load_checkpoint(path)
    check_run(state, path, variant, seed)
    tree = Taxonomy.from_dict(state["taxonomy"])
    data = params.section("data")
    source = get_source(data["name"])
    task = get_task(source.task)
    splits = source.splits(data, tree)
    ends = task.label_ends([splits.train, splits.val, splits.test], tree)
    if state.get("config") != resolve_config(params.variant(variant), tree, ends, _end_after_where(params, variant)):
        raise CheckpointError(f"{path}: trained with other settings for {variant!r} than params.yaml has now; "
                              f"rerun `dvc repro` to retrain it")
    full = state.get("full_taxonomy")
    if state["config"].get("collapse_chains") and full is None:
        raise CheckpointError(f"{path}: trained on a collapsed tree without recording the full taxonomy, which "
                              f"test scores on; rerun its train stage")
    model = create_model(state["config"], tree, splits.in_chans, splits.image_size, task.multilabel)
    model.load_state_dict(state["model"])
    return Trained(variant, seed, state["epoch"], tree, splits, model.to(select_device(params.train.device)), task,
                   None if full is None else Taxonomy.from_dict(full))


def test(trained: Trained, params: Params) -> tuple[dict, pd.DataFrame]:
    """The run's test metrics (validation picks multi-label thresholds), and one row per test image."""
    rt = params.runtime
    loaders = [make_loader(s, rt.eval_batch_size, shuffle=False, seed=0, num_workers=rt.num_workers)
               for s in (trained.splits.val, trained.splits.test)]
    device = next(trained.model.parameters()).device
    return trained.task.test(trained.model, *loaders, trained.tree, device, params.infer.beam_width, params.train.amp,
                             params.infer.backoff_precision, full_tree=trained.full_tree)


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
