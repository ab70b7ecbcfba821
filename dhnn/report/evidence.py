"""Evidence behind the report's sentences: per-image scores, paired bootstrap comparisons with a
baseline, and hierarchical metrics beyond path accuracy (single-label runs).

Every run's ``predictions.csv`` (from the infer stage) holds, per test image, the true path, the
predicted path and its probability (multi-label runs: the true and predicted node sets). The
functions here read those files once and derive everything from them, so the comparisons and the
metrics agree by construction.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation.backoff import per_depth, risk_coverage
from ..evaluation.bootstrap import compare_to_baseline, describe_difference, paired_bootstrap_counts
from ..evaluation.hierarchical import (expected_calibration_error, hierarchical_prf, mistake_severity,
                                       reliability_table)
from ..evaluation.metrics import f1_counts, weighted_f1_of_counts
from ..evaluation.records import NODE_SET_COLUMNS
from .tables import run_dirs

SEPARATOR = " / "
PER_IMAGE_METRICS = ("path_accuracy", "node_accuracy")


def _node_accuracy(true: list[str], pred: list[str]) -> float:
    """The fraction of the true path's levels that the prediction gets right."""
    return sum(t == p for t, p in zip(true, pred)) / len(true)


def _deepest(prefix_probs: np.ndarray) -> np.ndarray:
    """[N] the probability of each path's deepest prefix (the whole path), from [N, T] with NaN after the end."""
    depth = (~np.isnan(prefix_probs)).sum(1)
    return np.where(depth > 0, prefix_probs[np.arange(len(prefix_probs)), np.maximum(depth - 1, 0)], 0.0)


def per_image(results_dir: str | Path, variants: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """One row per (variant, seed, test image): path and node correctness, the path's probability, both paths."""
    frames = []
    for variant in variants:
        for seed in seeds:
            path = run_dirs(results_dir, variant, seed)[1] / "predictions.csv"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no predictions; did the infer stage run?")
            df = pd.read_csv(path, keep_default_na=False)
            missing = {"test_index", "true path", "predicted path", "score"} - set(df.columns)
            if missing:
                raise ValueError(f"{path}: missing columns {sorted(missing)}")
            true = [p.split(SEPARATOR) for p in df["true path"]]
            pred = [p.split(SEPARATOR) if p else [] for p in df["predicted path"]]
            levels = sorted((c for c in df.columns if c.startswith("p_level")), key=lambda c: int(c[7:]))
            # a path that ends early has no probability below its end: an empty cell, read as NaN
            prefixes = df[levels].replace("", np.nan).to_numpy(dtype=float) if levels else None
            score = df["score"].to_numpy(dtype=float)
            frames.append(pd.DataFrame({
                "variant": variant, "seed": seed, "image": df["test_index"].to_numpy(),
                "path_accuracy": [float(t == p) for t, p in zip(true, pred)],
                "node_accuracy": [_node_accuracy(t, p) for t, p in zip(true, pred)],
                "score": score, "true": true, "pred": pred,
                # the path's probability as the run reports it (its deepest prefix's, calibrated where the
                # infer stage fitted temperatures), and before temperature scaling
                "probability": score if prefixes is None else _deepest(prefixes),
                "uncalibrated": df["uncalibrated"].to_numpy(dtype=float) if "uncalibrated" in df else score,
                "topk_hit": df["topk_hit"].to_numpy(dtype=float) if "topk_hit" in df else np.nan,
                "consistent": df["consistent"].to_numpy(dtype=float) if "consistent" in df else np.nan,
                "prefix_probs": list(prefixes) if levels else None}))
    return pd.concat(frames, ignore_index=True)


def comparisons(images: pd.DataFrame, pairs: Sequence[tuple[str, str]], n_boot: int = 2000,
                seed: int = 0) -> pd.DataFrame:
    """95% paired bootstrap intervals (images and seeds resampled) of variant minus baseline, in points.

    ``pairs`` lists (variant, baseline); each row: variant, baseline, metric, difference, ci_low,
    ci_high, and the sentence the report may say about it.
    """
    rows = []
    for variant, baseline in pairs:
        both = images[images["variant"].isin([variant, baseline])]
        table = compare_to_baseline(both, baseline, list(PER_IMAGE_METRICS), n_boot=n_boot, seed=seed)
        rows.append(table[table["variant"] == variant])
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["variant", "baseline", "metric", "difference", "ci_low", "ci_high"])
    out["verdict"] = [describe_difference(row) for _, row in out.iterrows()]
    return out


# -- node sets (multi-label runs) ------------------------------------------------------------------
#
# Node and path F1 are weighted F1 scores over the test set, not means over images, so the
# comparisons resample the per-image true/false positive and false negative counts of each node at
# the run's thresholds (chosen on validation, fixed here) and recompute F1 on every resample.

def _node_set(cell: str) -> list[int]:
    return [int(i) for i in cell.split()]


def node_set_counts(results_dir: str | Path, variants: Sequence[str], seeds: Sequence[int]
                    ) -> dict[str, dict[str, object]]:
    """Per variant: its ``nodes`` (the score columns) and, for node_f1 and path_f1, per-image F1 counts
    [S, N, 3 |V|] (evaluation.metrics.f1_counts) over the test images in ``test_index`` order."""
    out: dict[str, dict[str, object]] = {}
    for variant in variants:
        runs: dict[str, list[np.ndarray]] = {"node_f1": [], "path_f1": []}
        nodes = images = None
        for seed in seeds:
            path = run_dirs(results_dir, variant, seed)[1] / "predictions.csv"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no predictions; did the infer stage run?")
            df = pd.read_csv(path, keep_default_na=False, dtype={c: str for c in NODE_SET_COLUMNS})
            missing = {"test_index", *NODE_SET_COLUMNS} - set(df.columns)
            if missing:
                raise ValueError(f"{path}: missing columns {sorted(missing)}; rerun its infer stage")
            df = df.sort_values("test_index")
            columns = [c for c in df.columns if c != "test_index" and c not in NODE_SET_COLUMNS]
            if nodes is not None and (columns != nodes or not np.array_equal(df["test_index"], images)):
                raise ValueError(f"{path}: other nodes or test images than seed {seeds[0]} of {variant!r}")
            nodes, images = columns, df["test_index"].to_numpy()
            sets = {}
            for name in NODE_SET_COLUMNS:
                mask = np.zeros((len(df), len(nodes)), dtype=bool)
                for row, cell in enumerate(df[name]):
                    mask[row, _node_set(cell)] = True
                sets[name] = mask
            runs["node_f1"].append(f1_counts(sets["true nodes"], sets["node prediction"]))
            runs["path_f1"].append(f1_counts(sets["true labels"], sets["path prediction"]))
        out[variant] = {"nodes": nodes, "images": images, **{m: np.stack(c) for m, c in runs.items()}}
    return out


def node_set_comparisons(counts: dict[str, dict[str, object]], pairs: Sequence[tuple[str, str]],
                         n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """95% paired bootstrap intervals (images and seeds resampled) of node and path F1, variant minus
    baseline, in points; the columns of :func:`comparisons`. Pairs scored on different trees
    (collapse_chains) or test images are left out, with a warning: their F1 scores are not paired."""
    import warnings

    rows = []
    for variant, baseline in pairs:
        a, b = counts[variant], counts[baseline]
        if a["nodes"] != b["nodes"] or not np.array_equal(a["images"], b["images"]):
            warnings.warn(f"{variant} vs {baseline}: scored on different nodes or test images; not compared",
                          stacklevel=2)
            continue
        for metric in ("node_f1", "path_f1"):
            res = paired_bootstrap_counts(a[metric], b[metric], weighted_f1_of_counts, n_boot=n_boot, seed=seed)
            rows.append({"variant": variant, "baseline": baseline, "metric": metric,
                         **{k: 100.0 * v for k, v in res.items()}})
    out = pd.DataFrame(rows, columns=["variant", "baseline", "metric", "difference", "ci_low", "ci_high"])
    out["verdict"] = [describe_difference(row) for _, row in out.iterrows()]
    return out


def default_pairs(variants: Sequence[str], baseline: str = "Flat") -> list[tuple[str, str]]:
    """Each variant against the flat baseline, the residual arc (X-Resi against X), and CNN-S2S against
    CNN-RNN (S2S-X against RNN-X), wherever both ran."""
    pairs = [(v, baseline) for v in variants if v != baseline] if baseline in variants else []
    pairs += [(v, v.removesuffix("-Resi")) for v in variants if v.endswith("-Resi") and v.removesuffix("-Resi") in variants]
    pairs += [(v, "RNN-" + v.removeprefix("S2S-")) for v in variants
              if v.startswith("S2S-") and "RNN-" + v.removeprefix("S2S-") in variants]
    return pairs


def hierarchical_metrics(images: pd.DataFrame) -> pd.DataFrame:
    """Per variant, mean (sd) over seeds: hierarchical precision/recall/F1, mistake severity, the
    expected calibration error of the path probability after and before temperature scaling, the
    area under the full-path risk-coverage curve (AURC), top-k path accuracy (the beam's k paths) and
    the consistency rate of the per-level argmax, all in percent except severity (levels)."""
    rows = []
    for (variant, seed), run in images.groupby(["variant", "seed"], sort=False):
        hp, hr, hf = hierarchical_prf(list(run["true"]), list(run["pred"]))
        rows.append({"variant": variant, "seed": seed, "hP": 100 * hp, "hR": 100 * hr, "hF1": 100 * hf,
                     "severity": mistake_severity(list(run["true"]), list(run["pred"])),
                     "ECE": 100 * expected_calibration_error(run["probability"].clip(0, 1), run["path_accuracy"]),
                     "ECE uncalibrated": 100 * expected_calibration_error(run["uncalibrated"].clip(0, 1),
                                                                         run["path_accuracy"]),
                     "AURC": 100 * _selective(run)["risk"].mean(),
                     "top-k": 100 * run["topk_hit"].mean(), "consistency": 100 * run["consistent"].mean()})
    runs = pd.DataFrame(rows)
    stats = runs.drop(columns="seed").groupby("variant", sort=False).agg(["mean", "std"])
    out = pd.DataFrame({"variant": stats.index})
    for metric in ("hP", "hR", "hF1", "severity", "ECE", "ECE uncalibrated", "AURC", "top-k", "consistency"):
        digits = 3 if metric == "severity" else 2
        out[metric] = [f"{m:.{digits}f}" + ("" if np.isnan(s) else f" ({s:.{digits}f})")
                       for m, s in zip(stats[(metric, "mean")], stats[(metric, "std")])]
    return out


def _prefix_arrays(run: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """[N, T] correctness of each predicted prefix, and its probability (NaN after the path's end)."""
    probs = np.stack(run["prefix_probs"].to_numpy())
    depth = probs.shape[1]
    correct = np.array([[len(p) > t and p[:t + 1] == q[:t + 1] for t in range(depth)]
                        for p, q in zip(run["pred"], run["true"])])
    return correct, probs


def backoff_curves(images: pd.DataFrame) -> pd.DataFrame:
    """Risk-coverage of back-off per variant and seed: columns variant, seed, tau, coverage, risk, mean_depth."""
    frames = []
    for (variant, seed), run in images.groupby(["variant", "seed"], sort=False):
        if run["prefix_probs"].isna().any():
            continue  # predictions written without prefix probabilities
        frames.append(risk_coverage(*_prefix_arrays(run)).assign(variant=variant, seed=seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["variant", "seed", "tau", "coverage", "risk", "mean_depth"])


def backoff_depths(images: pd.DataFrame, taus: dict[tuple[str, int], float | None]) -> pd.DataFrame:
    """Coverage and accuracy per depth at each run's tau (chosen on validation), mean over seeds."""
    frames = []
    for (variant, seed), run in images.groupby(["variant", "seed"], sort=False):
        tau = taus.get((variant, seed))
        if tau is None or run["prefix_probs"].isna().any():
            continue
        frames.append(per_depth(*_prefix_arrays(run), tau).assign(variant=variant, seed=seed))
    if not frames:
        return pd.DataFrame(columns=["variant", "depth", "coverage", "accuracy"])
    table = pd.concat(frames, ignore_index=True)
    return table.groupby(["variant", "depth"], sort=False)[["coverage", "accuracy"]].mean().reset_index()


def backoff_summary(results_dir: str | Path, variants: Sequence[str], seeds: Sequence[int]
                    ) -> tuple[dict[tuple[str, int], float | None], pd.DataFrame]:
    """Each run's back-off tau (from its metrics.json), and per variant the mean test coverage,
    precision and depth of the answers at that tau."""
    import json

    taus, rows = {}, []
    for variant in variants:
        for seed in seeds:
            path = run_dirs(results_dir, variant, seed)[1] / "metrics.json"
            metrics = json.loads(path.read_text(encoding="utf-8"))
            if "backoff_coverage" not in metrics:
                continue
            taus[(variant, seed)] = metrics["backoff_tau"]
            rows.append({"variant": variant, "target precision": metrics["backoff_precision"],
                         "tau": np.nan if metrics["backoff_tau"] is None else metrics["backoff_tau"],
                         "coverage": metrics["backoff_coverage"], "precision": metrics["backoff_test_precision"],
                         "mean depth": metrics["backoff_mean_depth"]})
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.groupby("variant", sort=False).mean().reset_index()
    return taus, table


def severity_per_run(images: pd.DataFrame) -> pd.DataFrame:
    """Mistake severity of every (variant, seed) run: columns variant, seed, severity (levels)."""
    return pd.DataFrame([{"variant": v, "seed": s, "severity": mistake_severity(list(run["true"]), list(run["pred"]))}
                         for (v, s), run in images.groupby(["variant", "seed"], sort=False)])


def reliability(images: pd.DataFrame, bins: int = 15) -> pd.DataFrame:
    """Per variant (its seeds pooled), the reliability table of the best path's probability, before
    temperature scaling and after (column ``probability``: "uncalibrated" or "calibrated")."""
    frames = [reliability_table(run[column].clip(0, 1), run["path_accuracy"], bins).assign(variant=v, probability=name)
              for name, column in (("uncalibrated", "uncalibrated"), ("calibrated", "probability"))
              for v, run in images.groupby("variant", sort=False)]
    return pd.concat(frames, ignore_index=True)


def _selective(run: pd.DataFrame) -> pd.DataFrame:
    """Full-path selective classification of one run: answering the whole path for the k most probable
    images and abstaining on the rest, the risk (share of wrong paths) at every coverage k / N."""
    order = np.argsort(-run["probability"].to_numpy(dtype=float), kind="stable")
    wrong = 1.0 - run["path_accuracy"].to_numpy(dtype=float)[order]
    k = np.arange(1, len(order) + 1)
    return pd.DataFrame({"coverage": k / len(order), "risk": np.cumsum(wrong) / k})


def selective_curves(images: pd.DataFrame, points: int = 101) -> pd.DataFrame:
    """Risk against coverage of full-path selective classification per variant and seed, at ``points``
    coverages from 0 to 1 (the risk of the largest answered set at or below each): variant, seed, coverage, risk."""
    grid = np.linspace(0, 1, points)
    frames = []
    for (variant, seed), run in images.groupby(["variant", "seed"], sort=False):
        curve = _selective(run)
        at = np.searchsorted(curve["coverage"].to_numpy(), grid, side="right") - 1
        frames.append(pd.DataFrame({"variant": variant, "seed": seed, "coverage": grid,
                                    "risk": np.where(at >= 0, curve["risk"].to_numpy()[np.maximum(at, 0)], np.nan)}))
    return pd.concat(frames, ignore_index=True)
