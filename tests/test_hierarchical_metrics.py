"""Tests of dhnn.evaluation.hierarchical and dhnn.evaluation.bootstrap."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dhnn.evaluation.bootstrap import compare_to_baseline, describe_difference, paired_bootstrap
from dhnn.evaluation.hierarchical import (
    consistency_rate,
    expected_calibration_error,
    hierarchical_prf,
    mistake_severity,
    reliability_table,
    topk_path_accuracy,
)

# Few names, reused on every level, so that equal names on different branches are common.
_path = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4)
_pairs = st.lists(st.tuples(_path, _path), min_size=1, max_size=12)


def _hiclass_rows(paths: list[list[str]], width: int) -> np.ndarray:
    """hiclass input: a 2-D array of node names padded with "", each name made unique by its prefix."""
    rows = [["/".join(p[: d + 1]) for d in range(len(p))] + [""] * (width - len(p)) for p in paths]
    return np.array(rows, dtype=object)


# ---------------------------------------------------------------- hierarchical precision / recall / F1

@settings(max_examples=60, deadline=None)
@given(_pairs)
def test_prf_equals_hiclass(pairs):
    metrics = pytest.importorskip("hiclass.metrics")
    true, pred = [t for t, _ in pairs], [p for _, p in pairs]
    width = max(len(p) for p in true + pred)
    yt, yp = _hiclass_rows(true, width), _hiclass_rows(pred, width)
    hp, hr, hf = hierarchical_prf(true, pred)
    assert hp == pytest.approx(metrics.precision(yt, yp, average="micro"))
    assert hr == pytest.approx(metrics.recall(yt, yp, average="micro"))
    assert hf == pytest.approx(metrics.f1(yt, yp, average="micro", zero_division=0))


def test_prf_hiclass_docstring_example():
    metrics = pytest.importorskip("hiclass.metrics")
    true, pred = [["0", "1", "2"], ["3", "4", "5"]], [["0", "1", "2"], ["6", "7", "8"]]
    assert hierarchical_prf(true, pred) == pytest.approx((0.5, 0.5, 0.5))
    assert metrics.f1(np.array(true), np.array(pred)) == pytest.approx(0.5)


def test_prf_hand_computed():
    true = [["animal", "dog", "terrier"], ["plant", "tree"]]
    pred = [["animal", "dog"], ["plant", "flower", "rose"]]
    # hits: 2 + 1; predicted nodes: 2 + 3; true nodes: 3 + 2
    hp, hr, hf = hierarchical_prf(true, pred)
    assert (hp, hr) == pytest.approx((3 / 5, 3 / 5))
    assert hf == pytest.approx(3 / 5)


@settings(max_examples=30, deadline=None)
@given(st.lists(_path, min_size=1, max_size=10))
def test_prf_perfect_predictions(paths):
    assert hierarchical_prf(paths, [list(p) for p in paths]) == (1.0, 1.0, 1.0)


def test_prf_same_name_on_other_branch_is_no_hit():
    hp, hr, hf = hierarchical_prf([["animal", "other"]], [["plant", "other"]])
    assert (hp, hr, hf) == (0.0, 0.0, 0.0)


def test_prf_empty_prediction_gives_zero_precision():
    assert hierarchical_prf([["a", "b"]], [[]]) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("true, pred, match", [
    ([["a"]], [["a"], ["b"]], "differ in length"),
    ([], [], "no samples"),
    (["ab"], [["a"]], "list of node names"),
    ([["a"]], [3], "list of node names"),
])
def test_path_inputs_are_validated(true, pred, match):
    for fn in (hierarchical_prf, mistake_severity):
        with pytest.raises(ValueError, match=match):
            fn(true, pred)


# ---------------------------------------------------------------- mistake severity

def test_severity_of_sibling_mistake_is_one():
    assert mistake_severity([["animal", "dog", "terrier"]], [["animal", "dog", "poodle"]]) == 1.0


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_severity_of_wrong_level_one_node_is_depth(depth):
    true = [f"t{d}" for d in range(depth)]
    pred = [f"p{d}" for d in range(depth)]
    assert mistake_severity([true], [pred]) == depth


def test_severity_averages_only_wrong_samples():
    true = [["a", "b", "c"], ["a", "b", "c"], ["x", "y", "z"], ["a", "b"]]
    pred = [["a", "b", "c"], ["a", "q", "r"], ["w", "y", "z"], ["a"]]
    # correct, LCA 2 up, LCA 3 up, stopped one level early
    assert mistake_severity(true, pred) == pytest.approx((2 + 3 + 1) / 3)


def test_severity_counts_over_deep_prediction_as_height_zero():
    assert mistake_severity([["a", "b"], ["a"]], [["a", "b"], ["a", "b"]]) == 0.0


def test_severity_is_nan_when_nothing_is_wrong():
    assert math.isnan(mistake_severity([["a", "b"]], [["a", "b"]]))


# ---------------------------------------------------------------- top-k path accuracy

def test_topk_path_accuracy():
    target = torch.tensor([[0, 1, 2], [1, 3, -100], [2, 4, 5]])
    topk = torch.tensor([
        [[0, 1, 3], [0, 1, 2]],          # second candidate is right
        [[1, 3, 7], [1, 2, -100]],       # runs past the end / wrong node: both wrong
        [[2, 4, 5], [2, 4, 6]],          # first candidate is right
    ])
    assert topk_path_accuracy(topk, target) == pytest.approx(2 / 3)
    assert topk_path_accuracy(topk[:, :1], target) == pytest.approx(1 / 3)


def test_topk_path_accuracy_validates():
    with pytest.raises(ValueError, match="shape"):
        topk_path_accuracy(torch.zeros(4, 2, 3, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        topk_path_accuracy(torch.zeros(4, 2, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="no samples"):
        topk_path_accuracy(torch.zeros(0, 2, 3, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long))


# ---------------------------------------------------------------- consistency rate

# level 0: A=0, B=1; level 1: a0=0 (A), a1=1 (A), b0=2 (B); level 2: x=0 (a0), y=1 (b0)
_PARENTS = [torch.tensor([0, 0, 1]), torch.tensor([0, 2])]


def test_consistency_rate():
    argmax = torch.tensor([
        [0, 0, 0],   # A > a0 > x: a path
        [1, 2, 1],   # B > b0 > y: a path
        [1, 0, 0],   # a0 is not under B
        [0, 1, 0],   # x is not under a1
    ])
    assert consistency_rate(argmax, _PARENTS) == pytest.approx(0.5)


def test_consistency_rate_with_ended_paths():
    argmax = torch.tensor([[0, 1, -100], [1, -100, 1], [-100, -100, -100]])
    # stopping after a1 is a path; a node after an end is not; an empty path is trivially one
    assert consistency_rate(argmax, _PARENTS) == pytest.approx(2 / 3)


def test_consistency_rate_validates():
    with pytest.raises(ValueError, match="T - 1"):
        consistency_rate(torch.zeros(2, 3, dtype=torch.long), _PARENTS[:1])
    with pytest.raises(ValueError, match="covers only"):
        consistency_rate(torch.tensor([[0, 5, 0]]), _PARENTS)


# ---------------------------------------------------------------- calibration

def test_ece_of_calibrated_data_is_near_zero():
    rng = np.random.default_rng(0)
    conf = rng.random(200_000)
    correct = rng.random(conf.size) < conf
    assert expected_calibration_error(conf, correct) < 0.01


def test_ece_of_overconfident_predictions():
    conf = torch.full((100,), 0.9)
    correct = torch.zeros(100, dtype=torch.bool)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.9)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=50),
       st.integers(1, 20))
def test_reliability_table_agrees_with_ece(samples, bins):
    conf = np.array([c for c, _ in samples])
    correct = np.array([k for _, k in samples])
    table = reliability_table(conf, correct, bins=bins)
    assert list(table.columns) == ["bin_low", "bin_high", "count", "confidence", "accuracy"]
    assert len(table) == bins and table["count"].sum() == len(samples)
    filled = table[table["count"] > 0]
    # every mean confidence lies in its own bin
    assert ((filled["confidence"] >= filled["bin_low"]) & (filled["confidence"] <= filled["bin_high"])).all()
    gap = (filled["count"] * (filled["accuracy"] - filled["confidence"]).abs()).sum() / len(samples)
    assert expected_calibration_error(conf, correct, bins=bins) == pytest.approx(gap)


def test_calibration_validates():
    with pytest.raises(ValueError, match="differ in length"):
        expected_calibration_error([0.5, 0.2], [1])
    with pytest.raises(ValueError, match="no samples"):
        reliability_table([], [])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.5], [1])
    with pytest.raises(ValueError, match="0/1"):
        expected_calibration_error([0.5], [2])


# ---------------------------------------------------------------- paired bootstrap

def _shifted(shift: float, s: int = 3, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paired 0/1 correctness where the variant's accuracy is the baseline's plus `shift`."""
    rng = np.random.default_rng(seed)
    u = rng.random((s, n))
    return (u < 0.7 + shift).astype(float), (u < 0.7).astype(float)


def test_bootstrap_ci_contains_true_difference():
    a, b = _shifted(0.05)
    res = paired_bootstrap(a, b, n_boot=1000, seed=1)
    assert res["ci_low"] <= 0.05 <= res["ci_high"]
    assert res["ci_low"] > 0  # a 5-point gain on 12,000 paired images is clearly detected
    assert res["difference"] == pytest.approx(a.mean() - b.mean())


def test_bootstrap_is_seeded():
    a, b = _shifted(0.02, n=500)
    assert paired_bootstrap(a, b, n_boot=300, seed=7) == paired_bootstrap(a, b, n_boot=300, seed=7)
    assert paired_bootstrap(a, b, n_boot=300, seed=7) != paired_bootstrap(a, b, n_boot=300, seed=8)


def test_bootstrap_zero_difference_contains_zero():
    a, _ = _shifted(0.0, n=1000)
    same = paired_bootstrap(a, a.copy(), n_boot=200)
    assert same == {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    # same per-seed accuracy, different images right: mean difference exactly 0 but noisy
    b = a[:, np.random.default_rng(3).permutation(a.shape[1])]
    res = paired_bootstrap(a, b, n_boot=500)
    assert res["difference"] == 0.0
    assert res["ci_low"] < 0 < res["ci_high"]


def test_bootstrap_is_fast_at_full_size():
    a, b = _shifted(0.01, s=3, n=10_000)
    start = time.perf_counter()
    paired_bootstrap(a, b, n_boot=2000)
    assert time.perf_counter() - start < 2.0


def test_bootstrap_validates():
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap(np.zeros((3, 5)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="no scores"):
        paired_bootstrap(np.zeros((3, 0)), np.zeros((3, 0)))
    with pytest.raises(ValueError, match="ci"):
        paired_bootstrap(np.zeros((1, 5)), np.zeros((1, 5)), ci=1.0)
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap(np.full((1, 5), np.nan), np.zeros((1, 5)))


# ---------------------------------------------------------------- comparison table

def _per_image() -> pd.DataFrame:
    """Three variants; Better wins on every image, Worse loses, baseline on seeds 1-3, others 0-2."""
    rng = np.random.default_rng(0)
    rows = []
    setups = (("Flat", [1, 2, 3], 0.0), ("Better", [0, 1, 2], 0.1), ("Worse", [0, 1, 2], -0.1))
    for variant, seeds, shift in setups:
        for s in seeds:
            u = np.random.default_rng(s).random(2000)
            for i in range(2000 if variant != "Flat" else 1900):  # baseline lacks the last 100 images
                rows.append({"variant": variant, "seed": s, "image": i,
                             "path_accuracy": float(u[i] < 0.6 + shift), "node_accuracy": rng.random()})
    return pd.DataFrame(rows)


def test_compare_to_baseline():
    df = _per_image()
    table = compare_to_baseline(df, "Flat", ["path_accuracy", "node_accuracy"], n_boot=300)
    assert list(table.columns) == ["variant", "baseline", "metric", "difference", "ci_low", "ci_high"]
    assert list(zip(table["variant"], table["metric"])) == [
        ("Better", "path_accuracy"), ("Better", "node_accuracy"),
        ("Worse", "path_accuracy"), ("Worse", "node_accuracy")]
    assert (table["baseline"] == "Flat").all()
    # shared seeds 1, 2 and images 0..1899; reported in percentage points
    shared = df[df["seed"].isin([1, 2]) & (df["image"] < 1900)]
    means = shared.groupby("variant")["path_accuracy"].mean()
    better = table.iloc[0]
    assert better["difference"] == pytest.approx(100 * (means["Better"] - means["Flat"]))
    assert better["ci_low"] > 0 and table.iloc[2]["ci_high"] < 0
    assert describe_difference(better).endswith(": better")
    assert describe_difference(table.iloc[2]).endswith(": worse")


def test_compare_to_baseline_errors():
    df = _per_image()
    with pytest.raises(ValueError, match="not among the variants"):
        compare_to_baseline(df, "Missing", ["path_accuracy"])
    with pytest.raises(ValueError, match="lacks columns"):
        compare_to_baseline(df, "Flat", ["top5"])
    with pytest.raises(ValueError, match="share no seed"):
        compare_to_baseline(df[df["seed"] != 1].loc[lambda d: d["seed"] != 2], "Flat", ["path_accuracy"])
    no_images = df[(df["variant"] == "Flat") | (df["image"] >= 1900)]
    with pytest.raises(ValueError, match="share no image"):
        compare_to_baseline(no_images, "Flat", ["path_accuracy"])
    with pytest.raises(ValueError, match="several rows"):
        compare_to_baseline(pd.concat([df, df.head(1)]), "Flat", ["path_accuracy"])


def test_describe_difference_wording():
    row = {"variant": "RNN-Pool-Resi", "baseline": "Flat", "metric": "path_accuracy",
           "difference": 0.42, "ci_low": -0.10, "ci_high": 0.951}
    assert describe_difference(row) == ("RNN-Pool-Resi vs Flat, path_accuracy: +0.42 pp "
                                        "(95% CI -0.10 to +0.95): no evidence of a difference")
    assert describe_difference({**row, "ci_low": -0.001, "difference": -0.001}).startswith(
        "RNN-Pool-Resi vs Flat, path_accuracy: +0.00 pp (95% CI +0.00 to")
