"""The training loop, in the style of torchvision's references/classification, with resumable epochs."""
from __future__ import annotations

import copy
import math
import os
import random
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..console import say
from ..evaluation.inference import autocast
from ..paths import run_name
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .distributed import Dist, all_reduce_mean, broadcast_object, gather_objects, wrap


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; on CPU the same seed then gives the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def alt_phase(epoch: int, alt: dict | None) -> str:
    """'head' (CNN frozen) or 'joint' for ``epoch`` under the authors' alternating ("Alt") schedule.

    Up to and including epoch ``alt1`` the phase toggles every ``alt2`` epochs, starting with
    'head'; after it everything trains jointly. The paper's runs used alt1=3, alt2=6: the conversion
    and RNN alone for epochs 0-3, then joint training. ``alt=None`` trains jointly throughout.
    """
    if not alt or epoch > alt["alt1"]:  # the authors' test, `epoch > alt1`: epoch alt1 still alternates
        return "joint"
    return "head" if (epoch // alt["alt2"]) % 2 == 0 else "joint"


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze or unfreeze the CNN's parameters (the optimizer skips parameters without gradients)."""
    for p in model.backbone.parameters():
        p.requires_grad_(not frozen)


def level_weights_at(weights: Sequence[float] | dict, epoch: int, epochs: int) -> list[float]:
    """w_t for ``epoch``: a fixed list, or ``{start: [...], end: [...]}`` interpolated linearly over the epochs."""
    if isinstance(weights, dict):
        start, end = weights["start"], weights["end"]
        if len(start) != len(end):
            raise ValueError(f"level_weights: start has {len(start)} weights, end has {len(end)}")
        f = epoch / max(epochs - 1, 1)
        return [a + (b - a) * f for a, b in zip(start, end)]
    return list(weights)


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, device: torch.device,
                    level_weights: Sequence[float], epoch: int, amp: bool = True,
                    freeze_backbone: bool = False, net: nn.Module | None = None,
                    label_smoothing: float = 0.0) -> dict:
    """One pass over ``loader``; returns the mean loss, the step count and the wall time.

    ``net`` runs the forward pass when given: ``model`` wrapped in DistributedDataParallel, which
    averages the gradients across processes. A loss that is NaN or infinite stops the run at once
    (FloatingPointError); :func:`fit` adds what the epochs before left.
    """
    model.train()
    set_backbone_frozen(model, freeze_backbone)
    if freeze_backbone:
        model.backbone.eval()  # a frozen CNN keeps its BatchNorm statistics too
    total, n, start = 0.0, 0, time.perf_counter()
    for step, (images, paths, _) in enumerate(loader):
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        paths = paths.to(device, non_blocking=True)
        with autocast(device, amp):
            outputs = (model if net is None else net)(images, paths)
        loss = model.loss(outputs, paths, level_weights, label_smoothing=label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch}, step {step}: the training loss is {loss.item()}; stopping "
                                     f"(lower train.lr, or check the data)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(images)
        n += len(images)
    seconds = time.perf_counter() - start
    return {"loss": total / max(n, 1), "steps": len(loader), "seconds": seconds}


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, epochs: int, steps_per_epoch: int,
                   optimizer: str = "adamw", schedule: str = "onecycle"
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """AdamW with a one-cycle schedule (converges in few CPU epochs) or the paper's Adam at a constant rate."""
    if optimizer not in ("adam", "adamw") or schedule not in ("onecycle", "constant"):
        raise ValueError(f"train.optimizer must be adam or adamw and train.schedule onecycle or constant, "
                         f"got {optimizer!r} and {schedule!r}")
    make = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = make(model.parameters(), lr=lr, weight_decay=weight_decay)
    if schedule == "constant":
        return opt, None
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch))


def summarize_history(history: list[dict], select: str) -> dict:
    """Training cost and the epoch that ``select`` (a validation metric) picks, for the run's summary."""
    select = f"val/{select}"
    best = max(range(len(history)), key=lambda i: (history[i][select], -i))
    return {"train_seconds": float(sum(r["seconds"] for r in history)),
            "seconds_per_step": float(sum(r["seconds_per_step"] for r in history) / len(history)),
            "best_epoch": best}


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, *, task, epochs: int, lr: float,
        weight_decay: float, level_weights: Sequence[float] | dict, beam_width: int, device: torch.device,
        out_dir: str | Path, run_info: dict, fingerprint: str, live=None, amp: bool = True, progress: bool = True,
        alt: dict | None = None, optimizer: str = "adamw", schedule: str = "onecycle",
        dist: Dist | None = None, label_smoothing: float = 0.0, last_file: str | Path | None = None) -> list[dict]:
    """Train for ``epochs``, validate each epoch, keep the best epoch's weights in ``out_dir/model.pt``.

    ``task`` (dhnn.tasks) scores validation and names the selection metric. ``run_info`` (variant,
    seed, config, taxonomy) goes into the checkpoint for inference. Every epoch ends with an atomic
    ``out_dir/last.pt`` (or ``last_file``, which is then left for the caller to remove); if one with
    the same ``fingerprint`` is there when ``fit`` starts, training resumes after its epoch and, on
    CPU, reaches exactly the numbers of an uninterrupted run (a finished run's file restores it whole).
    ``live`` is an optional dvclive ``Live`` that receives the per-epoch metrics. Returns one dict
    per epoch (train loss, validation metrics, seconds, phase).

    ``dist`` (dhnn.training.distributed) trains data-parallel: one process per rank under torchrun,
    each with its share of every batch (``train_loader`` from ``distributed_loader``). The model is
    wrapped in DistributedDataParallel, the sampler is told the epoch, the loss shown is the mean
    over the processes, and rank 0 alone evaluates (on ``val_loader``, the whole validation set) and
    sends its metrics to the others, writes ``model.pt`` and ``last.pt``, logs to ``live`` and prints.
    Every rank resumes from rank 0's ``last.pt``, which also holds every rank's random-number
    states. ``dist=None`` is one plain process.
    """
    out_dir = Path(out_dir)
    # a last.pt of its own (outside a dvc output, which dvc deletes before a rerun) stays for the caller to remove
    keep_last = last_file is not None
    best_file, last_file = out_dir / "model.pt", Path(last_file) if keep_last else out_dir / "last.pt"
    name = run_name(run_info["variant"], run_info["seed"]) if "variant" in run_info else out_dir.name
    main = dist is None or dist.is_main
    # channels-last convolutions run about a quarter faster on CPU (oneDNN) and suit tensor cores on GPU
    model.to(device, memory_format=torch.channels_last)
    opt, scheduler = make_optimizer(model, lr, weight_decay, epochs, len(train_loader), optimizer, schedule)
    history, best, best_state, start = [], -math.inf, None, 0
    resumed = _resume(last_file, fingerprint, model, opt, scheduler, train_loader, dist)
    if resumed is not None:
        history, best, best_state = resumed["history"], resumed["best"], resumed["best_state"]
        start = resumed["epoch"] + 1
        if main:
            save_checkpoint(best_file, **best_state)  # dvc removed the stage's outputs before rerunning it
            say(f"{name}: resuming after epoch {resumed['epoch']} from {last_file}")
            for row in history:
                _log(live, row)
    # DDP: a frozen CNN (the alternating schedule's head phase) leaves its parameters without gradients
    net = wrap(model, dist, find_unused_parameters=any(alt_phase(e, alt) == "head" for e in range(epochs)))
    sampler = train_loader.sampler if dist is not None else None
    for epoch in range(start, epochs):
        phase = alt_phase(epoch, alt)
        weights = level_weights_at(level_weights, epoch, epochs)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        try:
            stats = train_one_epoch(model, train_loader, opt, scheduler, device, weights, epoch, amp,
                                    freeze_backbone=phase == "head", net=net if net is not model else None,
                                    label_smoothing=label_smoothing)
        except FloatingPointError as err:  # say what is kept: the epochs before wrote last.pt, or nothing did
            kept = (f"the checkpoint of epoch {epoch - 1} is kept ({last_file}, best epoch in {best_file})"
                    if epoch > 0 else "no checkpoint is kept: no epoch had finished")
            raise FloatingPointError(f"{name}: {err}; {kept}") from None
        if dist is not None:
            stats["loss"] = all_reduce_mean(stats["loss"], dist)  # every rank has as many samples
            val = broadcast_object(task.evaluate(model, val_loader, device, beam_width, amp) if main else None, dist)
        else:
            val = task.evaluate(model, val_loader, device, beam_width, amp)
        row = {"epoch": epoch, "train/loss": stats["loss"],
               **{f"val/{k}": v for k, v in val.items() if not isinstance(v, list)},
               "seconds": stats["seconds"], "seconds_per_step": stats["seconds"] / max(stats["steps"], 1),
               "phase": phase}
        history.append(row)
        _log(live, row)
        if val[task.select] > best:
            best = val[task.select]
            if main:
                # a copy: the state dict's tensors share memory with the weights, which train on
                best_state = {"model": _copy(model.state_dict()), "epoch": epoch, "val": val, **run_info}
                save_checkpoint(best_file, **best_state)
        if dist is not None:  # every rank's random-number states, so that each rank resumes its own streams
            ranks = gather_objects({"rng": rng_state(), "loader_rng": _generator_state(train_loader)}, dist)
        if main:
            extra = {"ranks": ranks, "world_size": dist.world_size} if dist is not None else {}
            save_checkpoint(last_file, model=model.state_dict(), optimizer=opt.state_dict(),
                            scheduler=scheduler.state_dict() if scheduler is not None else None,
                            rng=rng_state(), loader_rng=_generator_state(train_loader), epoch=epoch,
                            history=history, best=best, best_state=best_state, fingerprint=fingerprint, **extra)
        if progress and main:
            say(f"{name}: epoch {epoch + 1}/{epochs}  loss {stats['loss']:.4f}  "
                f"val {task.select} {val[task.select]:.4f}  {stats['seconds']:.1f} s")
    set_backbone_frozen(model, False)
    if main and not keep_last:
        last_file.unlink(missing_ok=True)  # the run is complete: nothing left to resume
    return history


def _copy(state: dict) -> dict:
    return copy.deepcopy(state)  # keeps the OrderedDict, its _metadata and the tensors' strides: the same bytes


def _generator_state(loader: DataLoader) -> torch.Tensor | None:
    return loader.generator.get_state() if loader.generator is not None else None


def _read_last(last_file: Path, fingerprint: str) -> dict | None:
    """The state in ``last_file`` if it belongs to this run (same fingerprint); else None."""
    if not last_file.is_file():
        return None
    try:
        state = load_checkpoint(last_file)
    except ValueError as err:
        say(f"warning: {err}; starting the run from epoch 0")
        return None
    if state.get("fingerprint") != fingerprint:
        say(f"{last_file}: left by a run with other settings or code; starting from epoch 0")
        return None
    return state


def _resume(last_file: Path, fingerprint: str, model: nn.Module, opt: torch.optim.Optimizer,
            scheduler, train_loader: DataLoader, dist: Dist | None = None) -> dict | None:
    """Restore the state of ``last_file`` if it belongs to this run (same fingerprint); else None.

    With ``dist``, rank 0 reads the file and sends it to the others (which need not see the file),
    and each rank restores its own random-number states.
    """
    if dist is None:
        state = _read_last(last_file, fingerprint)
    else:
        state = broadcast_object(_read_last(last_file, fingerprint) if dist.is_main else None, dist)
    if state is None:
        return None
    if dist is not None and state.get("world_size", 1) != dist.world_size:
        if dist.is_main:  # cannot happen through the stage: the fingerprint holds the number of processes
            say(f"{last_file}: left by a run of {state.get('world_size', 1)} processes, not {dist.world_size}; "
                f"starting from epoch 0")
        return None
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    own = state["ranks"][dist.rank] if dist is not None and "ranks" in state else state
    set_rng_state(own["rng"])
    if own["loader_rng"] is not None and train_loader.generator is not None:
        train_loader.generator.set_state(own["loader_rng"])
    return state


def _log(live, row: dict) -> None:
    if live is not None:
        for key in [k for k in row if k.startswith(("train/", "val/"))]:
            live.log_metric(key, row[key])
        live.next_step()
