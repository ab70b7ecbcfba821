"""Batched inference: the device, bf16 autocast, and a model's predictions over a loader."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.utils.data import DataLoader


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
    """Node-set labels: (node scores [N, |V|], multi-hot targets [N, |V|], dataset indices [N])."""
    model.eval()
    scores, targets, index = [], [], []
    for images, target, i in loader:
        with autocast(device, amp):
            outputs = model(images.to(device, memory_format=torch.channels_last))
        scores.append(model.node_scores(outputs).cpu())
        targets.append(target)
        index.append(torch.as_tensor(i))
    return torch.cat(scores), torch.cat(targets), torch.cat(index)
