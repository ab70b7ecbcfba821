"""Accuracy of predicted label paths.

All metrics take per-level index tensors ``pred`` and ``target`` of shape [N, T], as produced by
``Taxonomy.encode_path`` / ``beam_search_indices``, with IGNORE_INDEX where a path has ended.
The multi-label F1 scores at the end (Open Images) take scores and multi-hot targets [N, |V|].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..decoding import leaf_to_paths  # noqa: F401  (re-exported: metrics of flat predictions)
from ..taxonomy import IGNORE_INDEX, Taxonomy


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


# -- multi-label F1 (Open Images) -----------------------------------------------------------------
#
# The paper scores multi-label predictions with sklearn's weighted F1 (per-node F1 averaged with the
# number of true instances as weights) at one decision threshold, chosen on validation from the grid
# 0.00, 0.01, ..., 1.00 and then applied to test. A node is predicted when its score is >= threshold
# (the authors' scripts used >, which differs only for scores exactly on a grid point).


def ancestor_mask(taxonomy: Taxonomy) -> torch.Tensor:
    """Bool [|V|, |V|] over ``taxonomy.nodes``: [i, j] is True when node j is on node i's root path."""
    index = {n: i for i, n in enumerate(taxonomy.nodes)}
    mask = torch.zeros(len(index), len(index), dtype=torch.bool)
    for n, i in index.items():
        mask[i, [index[a] for a in taxonomy.path(n)]] = True  # the path includes n itself
    return mask


def _scores(scores: torch.Tensor | np.ndarray, num_nodes: int | None = None) -> torch.Tensor:
    """Validate [N, |V|] scores; return them as float64 on the CPU."""
    s = torch.as_tensor(scores).detach().cpu()
    if s.dim() != 2 or s.shape[0] == 0:
        raise ValueError(f"scores must have shape [N, |V|] with N > 0, got {list(s.shape)}")
    if num_nodes is not None and s.shape[1] != num_nodes:
        raise ValueError(f"scores have {s.shape[1]} columns but the taxonomy has {num_nodes} nodes")
    return s.double()


def _targets(targets: torch.Tensor | np.ndarray, shape: torch.Size) -> torch.Tensor:
    """Validate 0/1 targets of the scores' shape; return them as uint8 on the CPU."""
    t = torch.as_tensor(targets).detach().cpu()
    if t.shape != shape:
        raise ValueError(f"targets have shape {list(t.shape)} but scores {list(shape)}")
    if not ((t == 0) | (t == 1)).all():
        raise ValueError("targets must be multi-hot (only 0 and 1)")
    return t.to(torch.uint8)


def weighted_f1(targets: torch.Tensor, predicted: torch.Tensor) -> float:
    """sklearn's ``f1_score(targets, predicted, average="weighted", zero_division=0)``, vectorised.

    Per node F1 = 2 TP / (2 TP + FP + FN) (0 for a node neither true nor predicted anywhere),
    averaged with each node's number of true instances as its weight; 0 if no node has any. The
    tests check it against sklearn, which takes ~0.4 s a call at Open Images' validation size,
    too slow for a 101-point threshold search every epoch.
    """
    t, p = targets.to(torch.float32), predicted.to(torch.float32)
    tp = (t * p).sum(0).double()  # float32 counts are exact up to 2**24 images
    fp = p.sum(0).double() - tp
    fn = t.sum(0).double() - tp
    denominator = 2 * tp + fp + fn
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.zeros_like(tp))
    support = tp + fn
    if support.sum() == 0:
        return 0.0
    return float((f1 * support).sum() / support.sum())


def f1_counts(targets: torch.Tensor | np.ndarray, predicted: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per image, uint8 [N, 3 |V|]: each node's true positive, false positive and false negative (in that order).

    Weighted F1 is not a mean over images, but it is a function of these counts summed over images
    (weighted_f1_of_counts), which lets a bootstrap resample images with the thresholds fixed.
    """
    t, p = np.asarray(targets).astype(bool), np.asarray(predicted).astype(bool)
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f"targets and predicted must have the same shape [N, |V|], got {t.shape} and {p.shape}")
    return np.concatenate([t & p, ~t & p, t & ~p], axis=1).astype(np.uint8)


def weighted_f1_of_counts(counts: np.ndarray) -> np.ndarray:
    """weighted_f1 from counts [..., 3 |V|] (f1_counts summed over images), over any leading axes."""
    counts = np.asarray(counts, dtype=np.float64)
    tp, fp, fn = np.split(counts, 3, axis=-1)
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    support = tp + fn
    total = support.sum(-1)
    return np.divide((f1 * support).sum(-1), total, out=np.zeros_like(total), where=total > 0)


def node_f1(scores: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
            threshold: float) -> float:
    """Weighted F1 over nodes, predicting each node scored >= threshold; targets ancestor-closed."""
    s = _scores(scores)
    return weighted_f1(_targets(targets, s.shape), s >= threshold)


def path_prediction(scores: torch.Tensor | np.ndarray, taxonomy: Taxonomy,
                    threshold: float) -> torch.Tensor:
    """Bool [N, |V|]: node p is predicted only if every node from level 1 down to p is >= threshold."""
    below = (_scores(scores, len(taxonomy)) < threshold).double()
    # blocked[n, i]: how many nodes on node i's root path score below the threshold for sample n
    blocked = below @ ancestor_mask(taxonomy).double().T
    return blocked == 0


def path_f1(scores: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
            taxonomy: Taxonomy, threshold: float) -> float:
    """Weighted F1 of the predicted root paths (path_prediction) against the original labels.

    "Original labels" are the nodes each image was annotated with, without adding ancestors
    (``multi_hot(..., ancestors=False)``, ``OpenImagesDataset.original``): the authors' path
    evaluation compares with those (their ``act_`` arrays), while node F1 uses the ancestor-closed
    ones (``act_node_``). A predicted ancestor the annotation did not list is then a false positive
    for that node. Ancestor-closed targets give the variant where each prefix of a true path counts.
    """
    s = _scores(scores, len(taxonomy))
    return weighted_f1(_targets(targets, s.shape), path_prediction(s, taxonomy, threshold))


def search_threshold(scores: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
                     metric_fn: Callable[[Any, Any, float], float],
                     step: float = 0.01) -> tuple[float, float]:
    """(threshold, value) maximising ``metric_fn(scores, targets, t)`` for t = 0, step, ..., 1.

    Ties go to the lowest threshold.
    """
    n = round(1 / step) if step > 0 else 0
    if n < 1 or abs(n * step - 1) > 1e-9:
        raise ValueError(f"step must divide 1 into equal parts, got {step}")
    grid = [round(k / n, 10) for k in range(n + 1)]
    values = [float(metric_fn(scores, targets, t)) for t in grid]
    best = max(range(len(grid)), key=values.__getitem__)  # max keeps the first of equal values
    return grid[best], values[best]


def evaluate_multilabel(val_scores: torch.Tensor | np.ndarray, val_targets: torch.Tensor | np.ndarray,
                        test_scores: torch.Tensor | np.ndarray, test_targets: torch.Tensor | np.ndarray,
                        taxonomy: Taxonomy, *, val_original: torch.Tensor | np.ndarray | None = None,
                        test_original: torch.Tensor | np.ndarray | None = None,
                        step: float = 0.01) -> dict[str, Any]:
    """Node and path F1 on test, each at its own threshold chosen on validation.

    ``*_targets`` are ancestor-closed multi-hots (node F1). Path F1 compares with ``*_original``
    (the annotated labels, see path_f1) when given, else with ``*_targets``; the result's
    ``path_targets`` says which ("original" or "node").
    """
    if (val_original is None) != (test_original is None):
        raise ValueError("pass both val_original and test_original, or neither")
    # convert once, not at each of the 101 grid points
    val_scores = _scores(val_scores, len(taxonomy))
    val_targets = _targets(val_targets, val_scores.shape)
    val_path = val_targets if val_original is None else _targets(val_original, val_scores.shape)
    test_path = test_targets if test_original is None else test_original

    def path_metric(s: torch.Tensor | np.ndarray, t: torch.Tensor | np.ndarray, threshold: float) -> float:
        return path_f1(s, t, taxonomy, threshold)

    node_t, node_val = search_threshold(val_scores, val_targets, node_f1, step)
    path_t, path_val = search_threshold(val_scores, val_path, path_metric, step)
    return {
        "node_f1": node_f1(test_scores, test_targets, node_t),
        "node_threshold": node_t,
        "node_f1_val": node_val,
        "path_f1": path_f1(test_scores, test_path, taxonomy, path_t),
        "path_threshold": path_t,
        "path_f1_val": path_val,
        "path_targets": "node" if val_original is None else "original",
    }
