"""Paired bootstrap confidence intervals for differences between model variants.

A variant and a baseline are scored on the same test images under the same training seeds, so
their per-image scores are paired; resampling images and seeds jointly (two-level bootstrap)
lets the interval reflect both test-set sampling noise and seed-to-seed training noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["compare_to_baseline", "describe_difference", "paired_bootstrap", "paired_bootstrap_counts"]

# Elements gathered per chunk of replicates (float64: 32 MB) - bounds memory for large S x N.
_CHUNK_ELEMENTS = 4_000_000

_RESULT_COLUMNS = ["variant", "baseline", "metric", "difference", "ci_low", "ci_high"]


def _as_scores(name: str, x: Any) -> np.ndarray:
    """A finite float [S, N] array; a 1-D input is taken as a single seed."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [S, N] (seeds x images), got {list(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} holds no scores (shape {list(arr.shape)})")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite scores")
    return arr


def paired_bootstrap(a: Any, b: Any, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict[str, float]:
    """Percentile CI of mean(a) - mean(b) for paired [S, N] scores, resampling seeds and images."""
    a, b = _as_scores("a", a), _as_scores("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape [S, N], got {list(a.shape)} vs {list(b.shape)}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie strictly between 0 and 1, got {ci!r}")
    # Pairing means only the per-(seed, image) differences matter; resampling them is resampling both.
    d = a - b
    s, n = d.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    chunk = max(1, _CHUNK_ELEMENTS // (s * n))
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        images = rng.integers(0, n, size=(c, n))
        seeds = rng.integers(0, s, size=(c, s))
        # mean over resampled images for every seed, then average the resampled seeds' means;
        # equal to the mean over all (seed, image) pairs as each seed keeps n images
        per_seed = d[:, images].mean(axis=2).T  # [c, S]
        stats[start:start + c] = np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)
    alpha = 1.0 - ci
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return {"difference": float(d.mean()), "ci_low": float(low), "ci_high": float(high)}


def paired_bootstrap_counts(a: Any, b: Any, statistic: Callable[[np.ndarray], np.ndarray], n_boot: int = 2000,
                            seed: int = 0, ci: float = 0.95) -> dict[str, float]:
    """Percentile CI of the seeds' mean of statistic(a_s) - statistic(b_s), for a statistic of counts summed over images.

    ``a`` and ``b`` are paired per-image counts [S, N, K] (seeds x images x counts), and
    ``statistic`` maps summed counts [..., K] to values [...]: a score such as weighted F1 that is
    not a mean over images. Seeds and images are resampled as in :func:`paired_bootstrap` (the same
    images for every seed and both models), so with ``statistic = sum / N`` the two agree.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 3 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"a and b must have the same non-empty shape [S, N, K], got {list(a.shape)} and {list(b.shape)}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie strictly between 0 and 1, got {ci!r}")
    s, n, _ = a.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    chunk = max(1, _CHUNK_ELEMENTS // (s * n))  # paired_bootstrap's chunks: the same draws
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        images = rng.integers(0, n, size=(c, n))
        seeds = rng.integers(0, s, size=(c, s))
        # how often each image is drawn: the resampled sums are then one matrix product per seed
        weights = np.bincount((np.arange(c)[:, None] * n + images).ravel(), minlength=c * n).reshape(c, n)
        per_seed = np.stack([statistic(weights @ a[k]) - statistic(weights @ b[k]) for k in range(s)], axis=1)
        stats[start:start + c] = np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)
    low, high = np.quantile(stats, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    difference = np.mean([statistic(a[k].sum(0)) - statistic(b[k].sum(0)) for k in range(s)])
    return {"difference": float(difference), "ci_low": float(low), "ci_high": float(high)}


def _wide(rows: pd.DataFrame, metric: str, variant: str) -> pd.DataFrame:
    """One variant's metric as a seed x image table; duplicates are an error, not silently averaged."""
    dup = rows.duplicated(["seed", "image"])
    if dup.any():
        first = rows.loc[dup, ["seed", "image"]].iloc[0].tolist()
        raise ValueError(f"variant {variant!r} has several rows for (seed, image) = {tuple(first)}")
    return rows.pivot(index="seed", columns="image", values=metric)


def compare_to_baseline(per_image: pd.DataFrame, baseline: str, metrics: list[str],
                        n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Paired-bootstrap difference (percentage points, 95% CI) of every other variant vs the baseline."""
    if isinstance(metrics, str):
        metrics = [metrics]
    if not metrics:
        raise ValueError("metrics is empty: name at least one per-image metric column")
    missing = [c for c in ["variant", "seed", "image", *metrics] if c not in per_image.columns]
    if missing:
        raise ValueError(f"per_image lacks columns {missing}; it has {list(per_image.columns)}")
    variants = list(dict.fromkeys(per_image["variant"]))  # first-seen order, for a stable table
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not among the variants {variants}")
    base_rows = per_image[per_image["variant"] == baseline]
    results = []
    for variant in variants:
        if variant == baseline:
            continue
        rows = per_image[per_image["variant"] == variant]
        for metric in metrics:
            va, vb = _wide(rows, metric, variant), _wide(base_rows, metric, baseline)
            seeds = sorted(set(va.index) & set(vb.index))
            if not seeds:
                raise ValueError(f"{variant!r} and baseline {baseline!r} share no seed "
                                 f"({sorted(va.index)} vs {sorted(vb.index)})")
            images = sorted(set(va.columns) & set(vb.columns))
            va, vb = va.loc[seeds, images], vb.loc[seeds, images]
            # an image must be scored under every shared seed by both, or the pairs are unbalanced
            complete = va.notna().all(axis=0) & vb.notna().all(axis=0)
            if not complete.any():
                raise ValueError(f"{variant!r} and baseline {baseline!r} share no image with a "
                                 f"{metric!r} value under every shared seed {seeds}")
            res = paired_bootstrap(va.loc[:, complete].to_numpy(), vb.loc[:, complete].to_numpy(),
                                   n_boot=n_boot, seed=seed)
            results.append({"variant": variant, "baseline": baseline, "metric": metric,
                            **{k: 100.0 * v for k, v in res.items()}})
    return pd.DataFrame(results, columns=_RESULT_COLUMNS)


def _signed(x: float) -> str:
    """Two decimals with an explicit sign, never "-0.00"."""
    return f"{round(float(x), 2) + 0.0:+.2f}"


def describe_difference(row: Mapping[str, Any] | pd.Series, ci: float = 0.95) -> str:
    """One sentence for a compare_to_baseline row: the difference, its CI and the verdict."""
    low, high = float(row["ci_low"]), float(row["ci_high"])
    # "better" presumes a higher-is-better metric, as for accuracies and F1 scores
    if low > 0:
        verdict = "better"
    elif high < 0:
        verdict = "worse"
    else:
        verdict = "no evidence of a difference"
    level = f"{100 * ci:g}"
    return (f"{row['variant']} vs {row['baseline']}, {row['metric']}: {_signed(row['difference'])} pp "
            f"({level}% CI {_signed(low)} to {_signed(high)}): {verdict}")
