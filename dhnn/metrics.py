"""Accuracy of predicted label paths.

All metrics take per-level index tensors ``pred`` and ``target`` of shape [N, T], as produced by
``Taxonomy.encode_path`` / ``beam_search_indices``, with IGNORE_INDEX where a path has ended.
"""

from __future__ import annotations

import torch

from .taxonomy import IGNORE_INDEX, Taxonomy


def _check(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate [N, T] integer tensors of equal shape; return them on the target's device."""
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a tensor of shape [N, T], got {shape}")
        if x.is_floating_point() or x.is_complex():
            raise ValueError(f"{name} must hold integer node indices, got {x.dtype}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {list(pred.shape)} vs {list(target.shape)}")
    if pred.shape[0] == 0:
        raise ValueError("pred and target hold no samples")
    return pred.to(target.device), target


def path_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of samples whose whole path is right, including where it stops."""
    pred, target = _check(pred, target)
    return (pred == target).all(dim=1).double().mean().item()


def level_accuracy(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Accuracy at each level over the samples whose target reaches it (nan if none does)."""
    pred, target = _check(pred, target)
    has_node = target != IGNORE_INDEX
    correct = ((pred == target) & has_node).sum(dim=0).double()
    return (correct / has_node.sum(dim=0).double()).tolist()


def node_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Correct (sample, level) pairs over all pairs where the target has a node."""
    pred, target = _check(pred, target)
    has_node = target != IGNORE_INDEX
    total = has_node.sum().item()
    if total == 0:
        return float("nan")
    return ((pred == target) & has_node).sum().item() / total


def evaluate_paths(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float | list[float]]:
    """All path metrics in one dict: path_accuracy, node_accuracy, level_accuracy."""
    return {
        "path_accuracy": path_accuracy(pred, target),
        "node_accuracy": node_accuracy(pred, target),
        "level_accuracy": level_accuracy(pred, target),
    }


def leaf_to_paths(leaf_pred: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
    """Map a flat classifier's leaf predictions (indices into taxonomy.leaves) to paths [N, T]."""
    if not isinstance(leaf_pred, torch.Tensor) or leaf_pred.dim() != 1:
        shape = list(leaf_pred.shape) if isinstance(leaf_pred, torch.Tensor) else type(leaf_pred).__name__
        raise ValueError(f"leaf_pred must be a tensor of shape [N], got {shape}")
    if leaf_pred.is_floating_point() or leaf_pred.is_complex():
        raise ValueError(f"leaf_pred must hold integer leaf indices, got {leaf_pred.dtype}")
    num_leaves = len(taxonomy.leaves)
    if leaf_pred.numel() and (leaf_pred.min() < 0 or leaf_pred.max() >= num_leaves):
        raise ValueError(f"leaf_pred values must lie in [0, {num_leaves}), got "
                         f"[{leaf_pred.min().item()}, {leaf_pred.max().item()}]")
    return taxonomy.leaf_paths().to(leaf_pred.device)[leaf_pred.long()]
