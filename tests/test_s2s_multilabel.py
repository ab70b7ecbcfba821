"""Multi-label CNN-S2S (node sets, as in Open Images): targets, loss, both feeds, tree-consistent decoding."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

from dhnn.evaluation.inference import predict_scores
from dhnn.evaluation.metrics import path_f1, path_prediction, search_threshold
from dhnn.models import create_model
from dhnn.models.s2s import CNNS2S, S2SOutputs
from dhnn.tasks import NodeSetTask
from dhnn.taxonomy import Taxonomy

sys.path.insert(0, str(Path(__file__).parent))
from test_decoding import random_trees  # noqa: E402
from test_s2s import BACKBONE, LAYERS, images  # noqa: E402

# A stops at level 1 when labelled alone; A2 and B2 are leaves at level 2
TREE = Taxonomy.from_paths([["A", "A1", "a"], ["A", "A2"], ["A", "A1", "b"], ["B", "B1", "c"], ["B", "B2"]])
FEEDS = ["teacher", "softmax"]


def make(tree: Taxonomy = TREE, seed: int = 0, **s2s) -> CNNS2S:
    """A tiny multi-label CNN-S2S for ``tree``."""
    torch.manual_seed(seed)
    cfg = {"kind": "s2s", "backbone": BACKBONE, "level_layers": [[LAYERS[t % 4]] for t in range(tree.num_levels)],
           "conversion": {"kind": "pool", "grid": [8, 1, 1], "mode": "avg"}, "s2s": {"hidden_size": 8, **s2s}}
    return create_model(cfg, tree, in_chans=1, image_size=28, multilabel=True)


def node_sets(labels: list[list[str]], tree: Taxonomy = TREE) -> torch.Tensor:
    """Ancestor-closed multi-hots [N, |V|] of label lists, as the data sets yield them."""
    out = torch.zeros(len(labels), len(tree))
    for i, names in enumerate(labels):
        for n in names:
            out[i, [tree.nodes.index(a) for a in tree.path(n)]] = 1.0
    return out


LABELS = [["a"], ["A"], ["a", "B"], ["B2"], ["A1", "A2"]]


def test_step_targets_by_hand() -> None:
    model = make()
    got = model.set_targets(node_sets(LABELS))
    assert got.shape == (5, TREE.num_levels + 1, len(TREE) + 1)
    names = TREE.nodes + ["END"]
    steps = [[{names[i] for i in row.nonzero().flatten().tolist()} for row in sample] for sample in got]
    assert steps == [
        [{"A"}, {"A1"}, {"a"}, {"END"}],
        [{"A"}, {"END"}, set(), set()],             # a path that stops at level 1: END at step 2
        [{"A", "B"}, {"A1", "END"}, {"a"}, {"END"}],  # two paths, one stops at level 1
        [{"B"}, {"B2"}, {"END"}, set()],            # a leaf at level 2
        [{"A"}, {"A1", "A2"}, {"END"}, set()],      # A1 (internal) and A2 (a leaf) both stop at level 2
    ]
    with pytest.raises(ValueError, match=rf"shape \[B, {len(TREE)}\]"):
        model.set_targets(torch.zeros(2, 3))


def test_loss_by_hand() -> None:
    model = make()
    sets = node_sets(LABELS)
    logits = torch.randn(5, TREE.num_levels + 1, len(TREE) + 1, generator=torch.Generator().manual_seed(0))
    outputs = S2SOutputs(logits, None)
    targets = model.set_targets(sets)
    end = len(TREE)
    want = 0.0
    for s, w in enumerate([1.0, 2.0, 3.0, 3.0]):  # the extra last step takes the last level's weight
        tokens = [i for i, n in enumerate(TREE.nodes) if TREE.depth(n) == s + 1] + [end]
        terms = [-(y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x))
                 for b in range(5) for x, y in zip(logits[b, s, tokens], targets[b, s, tokens])]
        want += w * sum(terms) / len(terms)
    assert model.loss(outputs, sets, [1.0, 2.0, 3.0]).item() == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("feed", FEEDS)
def test_both_feeds_learn_a_tiny_batch(feed: str) -> None:
    model = make(feed=feed).train()
    x, sets = images(8, seed=1), node_sets(LABELS + [["b"], ["c"], ["A2", "B1"]])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(25):
        loss = model.loss(model(x, sets), sets, [1.0, 1.0, 1.0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
    assert sum(losses[-5:]) < sum(losses[:5])
    model.eval()
    scores = model.node_scores(model(x))  # free-running, as at inference
    assert scores.shape == (8, len(TREE)) and ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.parametrize("feed", FEEDS)
def test_node_scores_and_inputs(feed: str) -> None:
    model = make(feed=feed)
    out = model(images(3))
    scores = model.node_scores(out)
    for i, n in enumerate(TREE.nodes):  # level t's nodes are read from step t
        assert torch.allclose(scores[:, i], out.logits[:, TREE.depth(n) - 1, i].sigmoid(), rtol=1e-6, atol=1e-7)  # kernels vary by ISA
    logits = torch.randn(3, len(TREE) + 1)
    x = model.set_input(logits, 1)
    mine = model.step_tokens[1] & (logits.sigmoid() >= 0.5)  # only the step's own tokens are fed back
    if feed == "teacher":
        want = torch.stack([model.embed.weight[m].mean(0) if m.any() else torch.zeros(x.shape[1]) for m in mine])
    else:
        want = model.feed_proj(logits.sigmoid() * model.step_tokens[1])
    assert torch.allclose(x, want, atol=1e-6)
    with pytest.raises(ValueError, match="node scores"):
        model.predict(out, beam_width=2)


def test_teacher_forcing_feeds_the_true_sets() -> None:
    model = make(feed="teacher")
    sets = node_sets(LABELS)
    out = model(images(5), sets)
    targets = model.set_targets(sets)
    x, state = model.start.expand(5, -1), out.state
    for t in range(TREE.num_levels + 1):
        logits, state = model.step(x, state)
        assert torch.allclose(out.logits[:, t], logits, atol=1e-5)
        counts = targets[:, t].sum(-1, keepdim=True).clamp(min=1)
        x = targets[:, t] @ model.embed.weight / counts


def test_create_model_builds_multilabel_s2s() -> None:
    model = make(feed="softmax")
    assert isinstance(model, CNNS2S) and model.multilabel
    sets = node_sets(LABELS)
    model.train()
    model.loss(model(images(5), sets), sets, [1.0, 1.0, 1.0]).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


# -- tree-consistent thresholded decoding -------------------------------------------------------------

def brute_force(tree: Taxonomy, scores: list[float], threshold: float) -> set[str]:
    """The largest ancestor-closed node set whose nodes all score >= threshold, by enumerating every subset."""
    nodes = tree.nodes
    best: list[set[str]] = [set()]
    for mask in range(1, 1 << len(nodes)):
        chosen = {n for i, n in enumerate(nodes) if mask >> i & 1}
        closed = all(tree.parent(n) is None or tree.parent(n) in chosen for n in chosen)
        if closed and all(scores[nodes.index(n)] >= threshold for n in chosen):
            if len(chosen) > len(best[0]):
                best = [chosen]
            elif len(chosen) == len(best[0]):
                best.append(chosen)
    assert len(best) == 1  # the union of two such sets is one too, so the largest is unique
    return best[0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(random_trees(top_width=2, width=2), st.data())
def test_path_prediction_is_the_largest_ancestor_closed_set_above_threshold(tree: Taxonomy, data) -> None:
    assume(len(tree) <= 11)  # 2**11 subsets at most for the brute force
    grid = st.sampled_from([k / 10 for k in range(11)])  # scores on the thresholds' grid: ties included
    rows = data.draw(st.lists(st.lists(grid, min_size=len(tree), max_size=len(tree)), min_size=1, max_size=3))
    threshold = data.draw(grid)
    pred = path_prediction(torch.tensor(rows), tree, threshold)
    for row, got in zip(rows, pred):
        want = brute_force(tree, row, threshold)
        assert {n for n, on in zip(tree.nodes, got.tolist()) if on} == want
        # and it is "every node whose whole root path scores >= threshold"
        assert want == {n for n in tree.nodes if all(row[tree.nodes.index(a)] >= threshold for a in tree.path(n))}


# -- epoch selection: path F1 against the labels as annotated, for every model kind ------------------

class NodeSetData(Dataset):
    """Images with ancestor-closed targets and the annotated labels (``original``), as OpenImagesDataset."""

    def __init__(self, labels: list[list[str]]):
        self.images = images(len(labels), seed=2)
        self.targets = node_sets(labels)
        self.original = torch.zeros_like(self.targets)
        for i, names in enumerate(labels):
            self.original[i, [TREE.nodes.index(n) for n in names]] = 1.0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i], i


@pytest.mark.parametrize("kind", ["flat", "rnn", "s2s"])
def test_validation_path_f1_is_against_the_annotated_labels(kind: str) -> None:
    layers = [[LAYERS[t]] for t in range(TREE.num_levels)]
    cfg = {"flat": {"kind": "flat", "backbone": BACKBONE, "layer": "layer4"},
           "rnn": {"kind": "rnn", "backbone": BACKBONE, "level_layers": layers,
                   "conversion": {"kind": "pool", "grid": [8, 1, 1]},
                   "rnn": {"hidden_size": 8, "num_layers": 1, "bidirectional": True, "residual": False}},
           "s2s": {"kind": "s2s", "backbone": BACKBONE, "level_layers": layers,
                   "conversion": {"kind": "pool", "grid": [8, 1, 1]}, "s2s": {"hidden_size": 8}}}[kind]
    torch.manual_seed(0)
    model = create_model(cfg, TREE, 1, 28, multilabel=True).eval()
    loader = DataLoader(NodeSetData(LABELS * 2), batch_size=4)
    task = NodeSetTask()
    got = task.evaluate(model, loader, torch.device("cpu"), beam_width=2, amp=False)
    assert task.select == "path_f1"
    scores, targets, index = predict_scores(model, loader, torch.device("cpu"), amp=False)
    original = loader.dataset.original[index]
    assert not torch.equal(original, targets)  # annotated labels lack the ancestors
    assert got["path_f1"] == search_threshold(scores, original, lambda s, t, th: path_f1(s, t, TREE, th))[1]


def test_label_ends_of_node_sets() -> None:
    data = NodeSetData(LABELS)
    assert NodeSetTask().label_ends([data], TREE) == {"a", "A", "B", "B2", "A1", "A2"}
