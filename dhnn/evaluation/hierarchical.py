"""Hierarchy-aware metrics: hierarchical P/R/F1, mistake severity, top-k paths, consistency, calibration.

Paths given by name (``hierarchical_prf``, ``mistake_severity``) are lists of node names from
level 1 down, root excluded, without padding. Paths given by index are tensors of per-level node
indices with IGNORE_INDEX (-100) after a path ends, as produced by ``Taxonomy.encode_path``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = [
    "consistency_rate",
    "expected_calibration_error",
    "hierarchical_prf",
    "mistake_severity",
    "reliability_table",
    "topk_path_accuracy",
]


def _check_paths(true_paths: Sequence[Sequence[Any]], pred_paths: Sequence[Sequence[Any]]) -> None:
    """Raise ValueError unless both are equally long, non-empty sequences of node-name sequences."""
    if len(true_paths) != len(pred_paths):
        raise ValueError(f"true_paths and pred_paths differ in length: "
                         f"{len(true_paths)} vs {len(pred_paths)}")
    if len(true_paths) == 0:
        raise ValueError("true_paths and pred_paths hold no samples")
    for name, paths in (("true_paths", true_paths), ("pred_paths", pred_paths)):
        for i, path in enumerate(paths):
            # a bare string is a sequence too, and would silently be read as a path of characters
            if isinstance(path, (str, bytes)) or not isinstance(path, (Sequence, np.ndarray)):
                raise ValueError(f"{name}[{i}] must be a list of node names, got {type(path).__name__}")


def _common_prefix_len(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Number of leading levels on which two paths agree."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def hierarchical_prf(true_paths: Sequence[Sequence[str]],
                     pred_paths: Sequence[Sequence[str]]) -> tuple[float, float, float]:
    """Micro-averaged hierarchical precision, recall and F1 (Kiritchenko et al.) of name paths."""
    _check_paths(true_paths, pred_paths)
    # A node is identified by its prefix path, so its ancestor-augmented set is the set of the
    # path's prefixes; two such sets then intersect in exactly the common prefixes, and every
    # prefix of a path is distinct, so set sizes are path lengths - no sets need to be built.
    hits = sum(_common_prefix_len(t, p) for t, p in zip(true_paths, pred_paths))
    n_pred = sum(len(p) for p in pred_paths)
    n_true = sum(len(t) for t in true_paths)
    # 0 rather than an error where nothing was predicted / labelled, as sklearn's zero_division=0
    hp = hits / n_pred if n_pred else 0.0
    hr = hits / n_true if n_true else 0.0
    hf = 2 * hp * hr / (hp + hr) if hp + hr else 0.0
    return float(hp), float(hr), float(hf)


def mistake_severity(true_paths: Sequence[Sequence[str]], pred_paths: Sequence[Sequence[str]]) -> float:
    """Mean height of the lowest common ancestor above the true node over wrong paths; NaN if none wrong."""
    _check_paths(true_paths, pred_paths)
    heights = [len(t) - _common_prefix_len(t, p)
               for t, p in zip(true_paths, pred_paths) if list(t) != list(p)]
    # A prediction that runs past the true node is wrong yet has the true node as the common
    # ancestor, so it counts as a mistake of height 0 (Bertinetto et al. only have leaf labels).
    if not heights:
        return float("nan")
    return float(np.mean(heights))


def _check_index_tensor(name: str, x: Any, dim: int) -> torch.Tensor:
    """Raise ValueError unless x is a non-empty integer tensor with `dim` dimensions."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor, got {type(x).__name__}")
    if x.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {list(x.shape)}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer node indices, got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} holds no samples")
    return x


def topk_path_accuracy(topk_pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of samples whose target path equals any of their k predicted paths."""
    _check_index_tensor("topk_pred", topk_pred, 3)
    _check_index_tensor("target", target, 2)
    n, _, t = topk_pred.shape
    if target.shape != (n, t):
        raise ValueError(f"target must have shape [N, T] = {[n, t]} to match topk_pred "
                         f"{list(topk_pred.shape)}, got {list(target.shape)}")
    if topk_pred.shape[1] == 0:
        raise ValueError("topk_pred holds no candidate paths (k = 0)")
    # padding is compared too, so a candidate that stops early or runs on past the target is wrong
    hit = (topk_pred.to(target.device) == target.unsqueeze(1)).all(dim=2).any(dim=1)
    return hit.double().mean().item()


def consistency_rate(level_argmax: torch.Tensor, parent_index_per_level: Sequence[torch.Tensor]) -> float:
    """Fraction of samples whose per-level argmax nodes form a real path of the tree."""
    _check_index_tensor("level_argmax", level_argmax, 2)
    n, t_levels = level_argmax.shape
    if len(parent_index_per_level) != t_levels - 1:
        raise ValueError(f"parent_index_per_level needs T - 1 = {t_levels - 1} entries "
                         f"(levels 1..T-1, e.g. Taxonomy.parent_index(t)), got {len(parent_index_per_level)}")
    # A negative entry (IGNORE_INDEX) ends the path; a node after an end is no path at all.
    ended = level_argmax < 0
    ok = ~(ended[:, :-1] & ~ended[:, 1:]).any(dim=1)
    for t in range(1, t_levels):
        parents = torch.as_tensor(parent_index_per_level[t - 1], device=level_argmax.device).long()
        child, prev = level_argmax[:, t], level_argmax[:, t - 1]
        if (child >= len(parents)).any():
            raise ValueError(f"level_argmax at level {t} has index {int(child.max())}, but "
                             f"parent_index_per_level[{t - 1}] covers only {len(parents)} nodes")
        live = child >= 0
        # clamp only so padding can index safely; its result is masked out by `live`
        matches = parents[child.clamp(min=0)] == prev
        ok &= ~live | matches
    return ok.double().mean().item()


def _calibration_inputs(confidence: Any, correct: Any, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten confidence in [0, 1] and 0/1 correctness to float arrays."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    arrays = []
    for name, x in (("confidence", confidence), ("correct", correct)):
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        arrays.append(np.asarray(x, dtype=np.float64).reshape(-1))
    conf, corr = arrays
    if conf.shape != corr.shape:
        raise ValueError(f"confidence and correct differ in length: {conf.size} vs {corr.size}")
    if conf.size == 0:
        raise ValueError("confidence and correct hold no samples")
    if not np.isfinite(conf).all() or conf.min() < 0 or conf.max() > 1:
        raise ValueError("confidence must be finite and within [0, 1]")
    if not np.isin(corr, (0.0, 1.0)).all():
        raise ValueError("correct must hold only 0/1 (or booleans)")
    return conf, corr


def _bin_of(conf: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges and each confidence's bin, bins closed on the right as in Guo et al. (0 joins bin 0)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    return edges, idx


def reliability_table(confidence: Any, correct: Any, bins: int = 15) -> pd.DataFrame:
    """Per equal-width confidence bin: edges, count, mean confidence and accuracy (NaN when empty)."""
    conf, corr = _calibration_inputs(confidence, correct, bins)
    edges, idx = _bin_of(conf, bins)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
        accuracy = np.bincount(idx, weights=corr, minlength=bins) / count
    return pd.DataFrame({
        "bin_low": edges[:-1],
        "bin_high": edges[1:],
        "count": count.astype(np.int64),
        "confidence": mean_conf,
        "accuracy": accuracy,
    })


def expected_calibration_error(confidence: Any, correct: Any, bins: int = 15) -> float:
    """Expected calibration error: bin-count-weighted mean |accuracy - confidence| over equal-width bins."""
    table = reliability_table(confidence, correct, bins)
    filled = table[table["count"] > 0]
    gap = (filled["accuracy"] - filled["confidence"]).abs()
    return float((filled["count"] * gap).sum() / filled["count"].sum())
