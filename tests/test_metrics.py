from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dhnn.evaluation.metrics import evaluate_paths, leaf_to_paths, level_accuracy, node_accuracy, path_accuracy
from dhnn.taxonomy import IGNORE_INDEX as X
from dhnn.taxonomy import Taxonomy


def test_fixed_depth_by_hand() -> None:
    target = torch.tensor([[0, 1], [1, 3], [1, 4], [0, 0]])
    pred = torch.tensor([[0, 1], [1, 2], [0, 4], [1, 2]])
    assert path_accuracy(pred, target) == 0.25
    assert level_accuracy(pred, target) == [0.5, 0.5]
    assert node_accuracy(pred, target) == 0.5
    assert evaluate_paths(pred, target) == {
        "path_accuracy": 0.25, "node_accuracy": 0.5, "level_accuracy": [0.5, 0.5]}


def test_ignore_index_handling() -> None:
    target = torch.tensor([[1, X, X], [0, 1, X], [0, 0, 0], [0, 0, 1]])
    pred = torch.tensor([
        [1, X, X],  # right
        [0, 1, 0],  # too long: wrong path, but both target nodes right
        [0, 0, X],  # too short: wrong path, 2 of 3 nodes right
        [0, 0, 1],  # right
    ])
    assert path_accuracy(pred, target) == 0.5
    # Level 2 and 3 only count samples whose target reaches them.
    assert level_accuracy(pred, target) == [1.0, 1.0, 0.5]
    assert node_accuracy(pred, target) == pytest.approx(8 / 9)


def test_level_without_targets_is_nan() -> None:
    acc = level_accuracy(torch.tensor([[0, 1]]), torch.tensor([[0, X]]))
    assert acc[0] == 1.0 and math.isnan(acc[1])


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 20), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_fixed_depth_node_accuracy_is_mean_level_accuracy(n: int, t: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 3, (n, t), generator=g)
    pred = torch.randint(0, 3, (n, t), generator=g)
    assert node_accuracy(pred, target) == pytest.approx(sum(level_accuracy(pred, target)) / t)
    assert path_accuracy(target, target) == 1.0
    assert path_accuracy(pred, target) <= min(level_accuracy(pred, target))


def test_leaf_to_paths() -> None:
    tax = Taxonomy.from_paths([["goods"], ["clothes", "tops", "shirt"], ["clothes", "dress"]])
    assert tax.leaves == ["goods", "dress", "shirt"]
    paths = leaf_to_paths(torch.tensor([2, 0, 1, 2]), tax)
    assert paths.tolist() == [[1, 0, 0], [0, X, X], [1, 1, X], [1, 0, 0]]
    assert tax.decode(paths)[1] == ["goods"]
    with pytest.raises(ValueError, match=r"leaf_pred values must lie in \[0, 3\)"):
        leaf_to_paths(torch.tensor([3]), tax)
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        leaf_to_paths(torch.tensor([[0]]), tax)


@pytest.mark.parametrize("pred, target, message", [
    (torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long), "shapes differ"),
    (torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), r"pred must be a tensor of shape \[N, T\]"),
    (torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long), "integer node indices"),
    (torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long), "no samples"),
])
def test_validation(pred: torch.Tensor, target: torch.Tensor, message: str) -> None:
    for fn in (path_accuracy, level_accuracy, node_accuracy, evaluate_paths):
        with pytest.raises(ValueError, match=message):
            fn(pred, target)
