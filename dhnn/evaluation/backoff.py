"""Back-off: answer with the deepest prefix of the best path that is probable enough.

A prediction is a path of per-level indices [T] (IGNORE_INDEX after its end) and the probability
of each of its prefixes [T] (NaN after its end). Prefix probabilities never grow with depth, so
backing off at a threshold tau keeps the leading prefixes whose probability is at least tau;
depth 0 (the empty path, "no decision") when even level 1 is below tau.

The tables here are what the report plots per variant: risk against coverage as tau moves, how
deep the backed-off answers go, and the tau that reaches a target precision on validation. A
backed-off answer of depth d is correct when it equals the true path's prefix of depth d.
Everything takes numpy arrays or CPU tensors and returns numpy arrays or DataFrames.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..taxonomy import IGNORE_INDEX

DEFAULT_TAUS = np.round(np.linspace(0.0, 1.0, 101), 2)
# precision is a ratio of counts: allow for its last bit when comparing with a target such as 0.95
_EPS = 1e-12


def _array(x: Any, dtype: Any = None) -> np.ndarray:
    """A numpy array of ``x`` (a CPU or GPU tensor, an array or nested lists)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _pair(correct_prefix: Any, prefix_probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """The two [N, T] inputs as (bool, float) arrays, checked to have the same shape."""
    correct, probs = _array(correct_prefix, bool), _array(prefix_probs, np.float64)
    if probs.ndim != 2 or correct.shape != probs.shape:
        raise ValueError(f"correct_prefix and prefix_probs must both be [N, T], got {list(correct.shape)} "
                         f"and {list(probs.shape)}")
    return correct, probs


@dataclass
class PrefixPredictions:
    """A data set's best paths with their prefix probabilities and the true paths."""

    pred: np.ndarray  # [N, T] per-level indices, IGNORE_INDEX after the path's end
    prefix_probs: np.ndarray  # [N, T] probability of the prefix of each depth, NaN after the end
    target: np.ndarray  # [N, T] true paths, same encoding as pred
    score: np.ndarray | None = None  # [N] the best path's probability (with END for a CNN-S2S)
    topk_hit: np.ndarray | None = None  # [N] bool: the true path is among the beam's k paths
    consistent: np.ndarray | None = None  # [N] bool: the per-level argmax nodes form a real path
    uncalibrated: np.ndarray | None = None  # [N] the best path's probability (END excluded) before temperature scaling

    @property
    def path_prob(self) -> np.ndarray:
        """[N] the probability of each whole predicted path: its deepest prefix's (calibrated if the prefixes are)."""
        probs = np.asarray(self.prefix_probs, dtype=np.float64)
        depth = (~np.isnan(probs)).sum(1)
        return np.where(depth > 0, probs[np.arange(len(probs)), np.maximum(depth - 1, 0)], np.nan)

    @property
    def correct(self) -> np.ndarray:
        """[N, T] bool: the predicted prefix of each depth equals the true one (see correct_prefixes)."""
        return correct_prefixes(self.pred, self.target)


def correct_prefixes(pred: Any, target: Any) -> np.ndarray:
    """[N, T] bool: the predicted path reaches depth d and its first d nodes are the true path's."""
    pred, target = _array(pred), _array(target)
    if pred.ndim != 2 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be [N, T], got {list(pred.shape)} and {list(target.shape)}")
    same = (pred == target) & (pred != IGNORE_INDEX)
    return np.logical_and.accumulate(same, axis=1) if same.size else same


def _running_min(probs: np.ndarray) -> np.ndarray:
    """Per-depth minimum of the probabilities so far; -inf after the path's end (NaN)."""
    filled = np.where(np.isnan(probs), -np.inf, probs)
    return np.minimum.accumulate(filled, axis=-1) if filled.size else filled


def backoff_depth(prefix_probs: Any, tau: float) -> np.ndarray:
    """Depth [...] of the backed-off answer for prefix probabilities [..., T]: 0 means no decision."""
    if math.isnan(tau):
        raise ValueError("tau must be a number, got NaN")
    # the leading run of prefixes at or above tau: robust to sums of leaf probabilities that are
    # not exactly monotone in floating point
    return (_running_min(_array(prefix_probs, np.float64)) >= tau).sum(-1)


def backoff(prefix_probs: Sequence[float], tau: float, path: Sequence[str]) -> tuple[list[str], float]:
    """The deepest prefix of ``path`` whose probability is >= tau, and that probability (the empty path: 1)."""
    probs = _array(prefix_probs, np.float64)
    if probs.ndim != 1:
        raise ValueError(f"prefix_probs must be one path's [T] probabilities, got shape {list(probs.shape)}")
    depth = int(backoff_depth(probs, tau))
    return list(path[:depth]), float(probs[depth - 1]) if depth else 1.0


def _outcome(correct: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Whether each backed-off answer is right: correct[i, depth_i - 1], False for no decision."""
    picked = correct[np.arange(len(depth)), np.maximum(depth - 1, 0)] if correct.size else np.zeros(0, bool)
    return picked & (depth > 0)


def risk_coverage(correct_prefix: Any, prefix_probs: Any, taus: Sequence[float] | None = None) -> pd.DataFrame:
    """One row per tau: coverage (share with an answer), risk (share of answers that are wrong), mean_depth.

    ``correct_prefix`` [N, T] as from :func:`correct_prefixes`, ``prefix_probs`` [N, T] (NaN after
    each path's end). mean_depth is over the answered images; risk and mean_depth are NaN at a
    tau that leaves no answer. Default taus: 0, 0.01, ..., 1.
    """
    correct, probs = _pair(correct_prefix, prefix_probs)
    rows = []
    for tau in DEFAULT_TAUS if taus is None else taus:
        depth = backoff_depth(probs, float(tau))
        answered = depth > 0
        n = int(answered.sum())
        rows.append({"tau": float(tau), "coverage": n / len(depth) if len(depth) else math.nan,
                     "risk": 1.0 - _outcome(correct, depth).sum() / n if n else math.nan,
                     "mean_depth": float(depth[answered].mean()) if n else math.nan})
    return pd.DataFrame(rows, columns=["tau", "coverage", "risk", "mean_depth"])


def per_depth(correct_prefix: Any, prefix_probs: Any, tau: float = 0.0) -> pd.DataFrame:
    """One row per depth 0..T at threshold tau: share of images backed off to it, and their accuracy.

    Depth 0 is "no decision" (accuracy NaN); the coverages sum to 1. At tau 0 every path keeps its
    full depth, so the rows are the distribution of predicted path lengths.
    """
    correct, probs = _pair(correct_prefix, prefix_probs)
    depth = backoff_depth(probs, tau)
    right = _outcome(correct, depth)
    rows = []
    for d in range(probs.shape[1] + 1):
        at = depth == d
        n = int(at.sum())
        rows.append({"depth": d, "coverage": n / len(depth) if len(depth) else math.nan,
                     "accuracy": float(right[at].mean()) if n and d else math.nan})
    return pd.DataFrame(rows, columns=["depth", "coverage", "accuracy"])


def precision_curve(correct_prefix: Any, prefix_probs: Any) -> pd.DataFrame:
    """Every tau where the backed-off answers change (ascending): answered and correct counts there.

    One sort instead of one pass per tau: lowering tau past an image's running-minimum
    probability at depth d makes its answer d deep, which adds one answer at d = 1 and turns its
    outcome from correct[d - 2] into correct[d - 1].
    """
    correct, probs = _pair(correct_prefix, prefix_probs)
    level = _running_min(probs)
    keep = np.isfinite(level)
    step = correct.astype(np.int64)
    step[:, 1:] -= correct[:, :-1]
    order = np.argsort(level[keep], kind="stable")
    thresholds = level[keep][order]
    answers = np.zeros(level.shape, dtype=np.int64)
    answers[:, 0] = 1
    # suffix sums over events at or above each threshold
    answered = np.cumsum(answers[keep][order][::-1])[::-1]
    right = np.cumsum(step[keep][order][::-1])[::-1]
    taus, first = np.unique(thresholds, return_index=True)
    return pd.DataFrame({"tau": taus, "answered": answered[first], "correct": right[first]})


def tau_for_precision(val_correct: Any, val_probs: Any, target_precision: float) -> float:
    """The smallest tau whose backed-off validation answers reach ``target_precision``; inf if none does.

    Precision is the share of answered images whose backed-off path is right. Only the probabilities
    that occur can change the answers, so the search is over those; at tau = inf back-off always
    abstains.
    """
    if not 0.0 <= target_precision <= 1.0:
        raise ValueError(f"target_precision must lie in [0, 1], got {target_precision}")
    curve = precision_curve(val_correct, val_probs)
    ok = (curve["answered"] > 0) & (curve["correct"] >= (target_precision - _EPS) * curve["answered"])
    return float(curve["tau"][ok].iloc[0]) if ok.any() else math.inf


def evaluate_backoff(val: PrefixPredictions, test: PrefixPredictions, target_precision: float = 0.95,
                     taus: Sequence[float] | None = None) -> dict[str, Any]:
    """What the report shows per run: tau chosen on validation, and test risk-coverage and per-depth tables.

    Returns ``{"tau", "target_precision", "risk_coverage", "per_depth", "test_coverage", "test_precision",
    "test_mean_depth"}``; the per-depth table and the test numbers are at the chosen tau.
    """
    tau = tau_for_precision(val.correct, val.prefix_probs, target_precision)
    test_correct = test.correct
    at_tau = risk_coverage(test_correct, test.prefix_probs, [tau]).iloc[0]
    return {"tau": tau, "target_precision": target_precision,
            "risk_coverage": risk_coverage(test_correct, test.prefix_probs, taus),
            "per_depth": per_depth(test_correct, test.prefix_probs, tau),
            "test_coverage": float(at_tau["coverage"]), "test_precision": float(1.0 - at_tau["risk"]),
            "test_mean_depth": float(at_tau["mean_depth"])}
