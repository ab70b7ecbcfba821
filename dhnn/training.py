"""Training and evaluation loops, in the style of torchvision's references/classification."""
from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .io import atomic_path
from .metrics import evaluate_paths, node_f1, path_f1, search_threshold


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; on CPU the same seed then gives the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (mixed precision, no loss scaling needed); a no-op on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def alt_phase(epoch: int, alt: dict | None) -> str:
    """'head' (CNN frozen) or 'joint' for ``epoch`` under the authors' alternating ("Alt") schedule.

    Before epoch ``alt1`` the phase toggles every ``alt2`` epochs, starting with 'head'; from
    ``alt1`` on everything trains jointly. The paper's runs used alt1=3, alt2=6: the conversion and
    RNN alone for epochs 0-2, then joint training. ``alt=None`` trains jointly throughout.
    """
    if not alt or epoch >= alt["alt1"]:
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
                    level_weights: Sequence[float], epoch: int, amp: bool = True, progress: bool = True,
                    freeze_backbone: bool = False) -> dict:
    """One pass over ``loader``; returns the mean loss, the step count and the wall time."""
    model.train()
    set_backbone_frozen(model, freeze_backbone)
    if freeze_backbone:
        model.backbone.eval()  # a frozen CNN keeps its BatchNorm statistics too
    total, n, start = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False, mininterval=2.0)
    for images, paths, _ in bar:
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        paths = paths.to(device, non_blocking=True)
        with autocast(device, amp):
            outputs = model(images, paths)
        loss = model.loss(outputs, paths, level_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(images)
        n += len(images)
        bar.set_postfix(loss=f"{total / n:.4f}", refresh=False)
    seconds = time.perf_counter() - start
    return {"loss": total / max(n, 1), "steps": len(loader), "seconds": seconds}


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, beam_width: int, amp: bool = True
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best path per sample: (predicted indices [N, T], scores [N], target indices [N, T])."""
    model.eval()
    preds, scores, targets = [], [], []
    for images, paths, _ in loader:
        with autocast(device, amp):
            outputs = model(images.to(device, memory_format=torch.channels_last))
        pred, score = model.predict(outputs, beam_width)
        preds.append(pred.cpu())
        scores.append(score.float().cpu())
        targets.append(paths)
    return torch.cat(preds), torch.cat(scores), torch.cat(targets)


@torch.no_grad()
def predict_scores(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multi-label: (node scores [N, |V|], multi-hot targets [N, |V|], dataset indices [N])."""
    model.eval()
    scores, targets, index = [], [], []
    for images, target, i in loader:
        with autocast(device, amp):
            outputs = model(images.to(device, memory_format=torch.channels_last))
        scores.append(model.node_scores(outputs).cpu())
        targets.append(target)
        index.append(torch.as_tensor(i))
    return torch.cat(scores), torch.cat(targets), torch.cat(index)


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, beam_width: int, amp: bool = True) -> dict:
    """Path, node and per-level accuracy of the model's beam-search paths on ``loader``.

    A multi-label model gets node and path F1 instead, each at its best threshold on ``loader``
    (validation; the test set's thresholds are chosen there too, by the inference stage).
    """
    if getattr(model, "multilabel", False):
        scores, targets, _ = predict_scores(model, loader, device, amp)
        node = search_threshold(scores, targets, node_f1)[1]
        path = search_threshold(scores, targets, lambda s, t, th: path_f1(s, t, model.taxonomy, th))[1]
        return {"node_f1": node, "path_f1": path}
    pred, _, target = predict(model, loader, device, beam_width, amp)
    return evaluate_paths(pred, target)


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


def save_checkpoint(path: str | Path, **state) -> None:
    """torch.save ``state`` atomically (see dhnn.io)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there; run the train stage first")
    return torch.load(path, map_location=map_location, weights_only=False)


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, *, epochs: int, lr: float,
        weight_decay: float, level_weights: Sequence[float] | dict, beam_width: int, device: torch.device,
        checkpoint: str | Path, extra_state: dict | None = None, live=None, amp: bool = True,
        progress: bool = True, alt: dict | None = None, optimizer: str = "adamw", schedule: str = "onecycle"
        ) -> list[dict]:
    """Train for ``epochs``, validate each epoch, keep the checkpoint of the best validation path accuracy.

    ``level_weights`` is fixed or scheduled (see :func:`level_weights_at`); ``alt`` is the
    alternating schedule (see :func:`alt_phase`). ``live`` is an optional dvclive ``Live`` that
    receives the per-epoch metrics. Returns one dict per epoch (train loss, validation metrics,
    seconds).
    """
    # channels-last convolutions run about a quarter faster on CPU (oneDNN) and suit tensor cores on GPU
    model.to(device, memory_format=torch.channels_last)
    opt, scheduler = make_optimizer(model, lr, weight_decay, epochs, len(train_loader), optimizer, schedule)
    history, best = [], -1.0
    for epoch in range(epochs):
        phase = alt_phase(epoch, alt)
        weights = level_weights_at(level_weights, epoch, epochs)
        stats = train_one_epoch(model, train_loader, opt, scheduler, device, weights, epoch, amp, progress,
                                freeze_backbone=phase == "head")
        val = evaluate(model, val_loader, device, beam_width, amp)
        select = "path_f1" if "path_f1" in val else "path_accuracy"  # the paper's selection metric
        row = {"epoch": epoch, "train/loss": stats["loss"], **{f"val/{k}": v for k, v in val.items()
                                                             if not isinstance(v, list)},
               "seconds": stats["seconds"],
               "seconds_per_step": stats["seconds"] / max(stats["steps"], 1), "phase": phase}
        history.append(row)
        if live is not None:
            for key in [k for k in row if k.startswith(("train/", "val/"))]:
                live.log_metric(key, row[key])
            live.next_step()
        if val[select] > best:
            best = val[select]
            save_checkpoint(checkpoint, model=model.state_dict(), epoch=epoch, val=val, **(extra_state or {}))
    set_backbone_frozen(model, False)
    return history


def summarize_history(history: list[dict]) -> dict:
    """Training cost and the selected epoch of a :func:`fit` history, for the run's summary."""
    select = "val/path_f1" if "val/path_f1" in history[0] else "val/path_accuracy"
    best = max(range(len(history)), key=lambda i: (history[i][select], -i))
    return {"train_seconds": float(sum(r["seconds"] for r in history)),
            "seconds_per_step": float(sum(r["seconds_per_step"] for r in history) / len(history)),
            "best_epoch": best}


def multilabel_test_metrics(model: nn.Module, val_loader: DataLoader, test_loader: DataLoader,
                            device: torch.device, amp: bool = True) -> tuple[dict, torch.Tensor]:
    """The paper's Open Images evaluation: (node and path F1 on test at thresholds chosen on validation, test scores).

    Path F1 compares with the labels as annotated (``dataset.original``), node F1 with the
    ancestor-closed targets, as in the authors' scripts.
    """
    from .metrics import evaluate_multilabel

    val_scores, val_targets, val_index = predict_scores(model, val_loader, device, amp)
    test_scores, test_targets, test_index = predict_scores(model, test_loader, device, amp)
    metrics = evaluate_multilabel(val_scores, val_targets, test_scores, test_targets, model.taxonomy,
                                  val_original=val_loader.dataset.original[val_index],
                                  test_original=test_loader.dataset.original[test_index])
    return metrics, test_scores
