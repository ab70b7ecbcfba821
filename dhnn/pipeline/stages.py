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
    """Train ``run``, resuming from its last finished epoch if it was interrupted; the history per epoch.

    With ``train.nproc`` above 1 the run trains data-parallel in that many processes on this
    machine (torchrun, one GPU each under CUDA): see :func:`train_distributed`.
    """
    if params.train.nproc > 1:
        return pd.DataFrame(train_distributed(run, params, out_dir))
    return pd.DataFrame(train_in_process(run, params, out_dir))


def train_in_process(run: TrainRun, params: Params, out_dir: str | Path, dist=None) -> list[dict]:
    """Train ``run`` in this process; the history per epoch.

    ``dist`` (dhnn.training.distributed.Dist) is this process's rank in a torchrun job: it then
    reads its share of each batch, and only rank 0 writes (model.pt, last.pt, dvclive/).
    """
    from contextlib import nullcontext

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
    main = dist is None or dist.is_main
    live_dir = str(out / "dvclive")
    with Live(live_dir, save_dvc_exp=False, dvcyaml=False, report=None) if main else nullcontext() as live:
        history = fit(run.model, train_loader, val_loader, task=run.task, epochs=t.epochs, lr=t.lr,
                      weight_decay=t.weight_decay, level_weights=params.section("train")["level_weights"],
                      beam_width=params.infer.beam_width,
                      device=select_device(t.device) if dist is None else dist.device, out_dir=out,
                      run_info=info, fingerprint=fingerprint(settings), live=live, amp=t.amp,
                      progress=rt.progress, alt=run.cfg.get("alt"), optimizer=t.optimizer, schedule=t.schedule,
                      dist=dist)
        if main:
            live.summary.update(params=run.parameters, **run.conversion,
                                **summarize_history(history, run.task.select))
    return history


DDP_HISTORY = "history.json"  # what rank 0 of a torchrun job leaves beside model.pt for train_distributed


def train_distributed(run: TrainRun, params: Params, out_dir: str | Path) -> list[dict]:
    """Train ``run`` in ``train.nproc`` processes on this machine under torchrun; the history per epoch.

    Each process runs ``python -m dhnn.pipeline.ddp_train`` on the params file these params were
    read from, the run's tree and seed, so it rebuilds the same data and model; rank 0 writes what
    a one-process run writes, and the history, which this reads back. The job's output streams to
    the terminal; a failed job raises, with the end of its output.
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
        run.tree.save(taxonomy)  # the tree the run trains on (collapsing it again changes nothing)
        source = Path(params.source)
        if not source.is_file():  # params validated from a mapping, not read from a file
            source = Path(tmp) / "params.yaml"
            source.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        # torchrun --standalone, but on the loopback interface whatever the host name resolves to: a
        # rendezvous store on a free port of 127.0.0.1, which the processes also use as MASTER_ADDR
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--rdzv-backend=c10d",
               "--rdzv-endpoint=127.0.0.1:0", f"--rdzv-id=dhnn-{uuid.uuid4().hex}", "--local-addr=127.0.0.1",
               f"--nproc_per_node={n}", "-m", "dhnn.pipeline.ddp_train", "--params", str(source),
               "--variant", run.variant, "--seed", str(run.seed), "--taxonomy", str(taxonomy), "--out", str(out)]
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
    return trained.task.test(trained.model, *loaders, trained.tree, device, params.infer.beam_width, params.train.amp,
                             params.infer.backoff_precision)


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
