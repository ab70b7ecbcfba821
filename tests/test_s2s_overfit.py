"""Overfit check of multi-label CNN-S2S (issue 15): it must fit a few node sets to node F1 >= 95%.

The small-scale version of the 512-scene check of docs/s2s-diagnosis.md. A defect between the
targets and the scores (node sets -> per-step targets -> loss -> free-running decoder -> node
scores) caps the F1 that training can reach; a model that reads its scores where it was trained
fits these 24 images in a few seconds, with both feeds and with ``level_inputs``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dhnn.evaluation.metrics import node_f1

sys.path.insert(0, str(Path(__file__).parent))
from test_s2s import images  # noqa: E402
from test_s2s_multilabel import TREE, make, node_sets  # noqa: E402

# every kind of set: one path, two paths, paths that stop at level 1 or 2, siblings
SETS = [["a"], ["A"], ["a", "B"], ["B2"], ["A1", "A2"], ["b"], ["c"], ["A2", "B1"],
        ["a", "b"], ["c", "B2"], ["A", "B"], ["b", "c"]] * 2


def fit_f1(steps: int = 200, seed: int = 0, **s2s) -> float:
    """Train a tiny multi-label CNN-S2S on SETS (one image each) and return its node F1 on them at 0.5."""
    model = make(seed=seed, **s2s).train()
    x, sets = images(len(SETS), seed=5), node_sets(SETS)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    # a decaying rate lets the weights settle: at a constant 0.01 the last steps can undo the fit
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / steps)
    for _ in range(steps):
        loss = model.loss(model(x, sets), sets, [1.0, 1.0, 1.0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        scores = model.node_scores(model(x))  # free-running, as validation and test score it
    return node_f1(scores, sets, 0.5)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second thread only adds synchronisation, which a busy CPU makes minutes long."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("s2s", [{"feed": "softmax"}, {"feed": "teacher"}, {"feed": "softmax", "level_inputs": True}],
                         ids=["softmax", "teacher", "level_inputs"])
def test_s2s_fits_a_few_node_sets(s2s: dict) -> None:
    assert fit_f1(**s2s) >= 0.95
