"""CNN-S2S on tiny inputs (CPU): shapes, gradients, END handling and the tree-constrained beam search."""
from __future__ import annotations

import random

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dhnn.evaluation.backoff import PrefixPredictions
from dhnn.evaluation.prefixes import expand_paths, on_full_tree
from dhnn.models import create_model
from dhnn.models.registry import resolve_config
from dhnn.models.s2s import CNNS2S, S2SOutputs, resolve_end_after
from dhnn.evaluation.scoring import score_paths
from dhnn.tasks import PathTask
from dhnn.taxonomy import IGNORE_INDEX, Taxonomy

sys.path.insert(0, str(Path(__file__).parent))

TREE = Taxonomy.from_csv("taxonomies/fashion_mnist.csv").collapse_chains()
# zero_init_last=False: timm zero-initialises the last BN of each block, which blocks gradients at step 0
BACKBONE = {"name": "resnet18", "pretrained": False, "kwargs": {"channels": [8, 16, 32, 64], "zero_init_last": False}}
LAYERS = ["layer4", "layer3", "layer2", "layer1"]
FEEDS = ["teacher", "softmax"]


def make(tree: Taxonomy = TREE, seed: int = 0, **s2s) -> CNNS2S:
    """A tiny CNN-S2S for ``tree``; level t reads one backbone layer, deepest first."""
    torch.manual_seed(seed)
    cfg = {"kind": "s2s", "backbone": BACKBONE, "level_layers": [[LAYERS[t % 4]] for t in range(tree.num_levels)],
           "conversion": {"kind": "pool", "grid": [8, 1, 1], "mode": "avg"},
           "s2s": {"hidden_size": 8, "num_layers": 1, **s2s}}
    return create_model({**cfg, "kind": "s2s"}, tree, in_chans=1, image_size=28).eval()


def sharpen(model: CNNS2S, seed: int) -> None:
    """Spread the untrained model's output distributions so that path scores rarely tie."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.out.weight.mul_(8.0)
        model.out.bias.copy_(torch.randn(model.out.bias.shape, generator=gen))


def images(n: int, seed: int = 0) -> torch.Tensor:
    """Random one-channel 28x28 inputs."""
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def all_paths(tree: Taxonomy, end_after: str) -> list[list[str]]:
    """Every path the decoder may return: root paths to the leaves, or to any node."""
    ends = tree.leaves if end_after == "leaves" else tree.nodes
    return [tree.path(n) for n in ends]


def path_step_log_probs(model: CNNS2S, state: tuple[torch.Tensor, torch.Tensor], path: list[str]) -> torch.Tensor:
    """log p of each token of ``path`` + END for one sample, running the decoder one step at a time."""
    tokens = [model.taxonomy.nodes.index(n) for n in path] + [model.end]
    x, (h, c), out = model.start[None], state, []
    for token in tokens:
        y, (h, c) = model.decoder(x[:, None], (h, c))
        logits = model.out(y[:, 0])
        out.append(logits.log_softmax(-1)[0, token])
        if model.feed == "teacher":
            x = model.embed(torch.tensor([token]))
        else:
            x = model.feed_proj(logits.softmax(-1))
    return torch.stack(out)


def random_tree(rng: random.Random) -> Taxonomy:
    """A random tree of depth <= 3 with 1-3 children per node, single-child chains included."""
    names = iter(f"n{i}" for i in range(1000))
    paths: list[list[str]] = []

    def grow(prefix: list[str]) -> None:
        for _ in range(rng.randint(1, 3)):
            path = prefix + [next(names)]
            paths.append(path)
            if len(path) < 3 and rng.random() < 0.6:
                grow(path)

    grow([])
    return Taxonomy.from_paths(paths)


def assert_root_paths(tree: Taxonomy, indices: torch.Tensor, leaves_only: bool) -> None:
    """Every row is a root path of ``tree``, padded with IGNORE_INDEX after its end."""
    for row, names in zip(indices.tolist(), tree.decode(indices)):
        assert names, "empty path"
        assert row[len(names):] == [IGNORE_INDEX] * (tree.num_levels - len(names))
        assert tree.encode_path(names).tolist() == row  # raises if not a root path
        if leaves_only:
            assert not tree.children(names[-1])


def test_collapsed_fashion_mnist_tree() -> None:
    assert TREE.num_levels == 3 and not TREE.is_fixed_depth
    assert {n: TREE.depth(n) for n in ("Trouser", "Dress", "Coat", "Bag", "Shirt", "Sneaker")} == {
        "Trouser": 2, "Dress": 2, "Coat": 2, "Bag": 2, "Shirt": 3, "Sneaker": 3}


@pytest.mark.parametrize("feed", FEEDS)
def test_forward_backward_reaches_every_parameter(feed: str) -> None:
    model = make(feed=feed).train()
    paths = TREE.leaf_paths()  # lengths 2 and 3 in one batch
    out = model(images(len(paths)), paths)
    assert isinstance(out, S2SOutputs)
    assert out.logits.shape == (len(paths), TREE.num_levels + 1, len(TREE) + 1)
    model.loss(out, paths, [1.0, 1.0, 1.0]).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    # without targets the decoder runs free, teacher feed included
    assert model(images(2)).logits.shape == (2, TREE.num_levels + 1, len(TREE) + 1)


def test_step_targets_end_after_the_path() -> None:
    model = make()
    paths = torch.stack([TREE.encode_path(TREE.path("Trouser")), TREE.encode_path(TREE.path("Shirt"))])
    node = TREE.nodes.index
    assert model.step_targets(paths).tolist() == [
        [node("clothes"), node("Trouser"), model.end, IGNORE_INDEX],
        [node("clothes"), node("tops"), node("Shirt"), model.end]]


@pytest.mark.parametrize("feed", FEEDS)
def test_teacher_forced_logits_match_step_by_step_decoding(feed: str) -> None:
    model = make(feed=feed)
    paths = TREE.leaf_paths()
    out = model(images(len(paths)), paths)
    got = out.logits.log_softmax(-1)
    targets = model.step_targets(paths)
    for b, leaf in enumerate(TREE.leaves):
        state = tuple(s[:, b:b + 1].contiguous() for s in out.state)
        want = path_step_log_probs(model, state, TREE.path(leaf))
        steps = torch.arange(len(want))
        assert torch.allclose(got[b, steps, targets[b, steps]], want, atol=1e-5)


def test_loss_ignores_steps_after_end_and_weights_steps() -> None:
    model = make(feed="teacher")
    paths = torch.stack([TREE.encode_path(TREE.path(n)) for n in ("Trouser", "Shirt", "Bag", "Sneaker")])
    out = model(images(4), paths)
    loss = model.loss(out, paths, [1.0, 2.0, 3.0])
    # per-step means over the samples with a target there; END's step takes that step's weight
    logp = out.logits.log_softmax(-1)
    targets = model.step_targets(paths)
    want = 0.0
    for s, w in enumerate([1.0, 2.0, 3.0, 3.0]):
        keep = targets[:, s] != IGNORE_INDEX
        want = want + w * -logp[keep, s].gather(1, targets[keep, s][:, None]).mean()
    assert torch.allclose(loss, want)
    # the short paths (Trouser, Bag) end at step 2: what the decoder says at step 3 does not count
    logits = out.logits.detach().clone()
    logits[[0, 2], 3] = torch.randn(2, len(TREE) + 1) * 10
    assert torch.allclose(model.loss(S2SOutputs(logits, out.state), paths, [1.0, 2.0, 3.0]), loss)
    with pytest.raises(ValueError, match="expected 3 level weights"):
        model.loss(out, paths, [1.0, 1.0])


@pytest.mark.parametrize("feed", FEEDS)
@pytest.mark.parametrize("end_after", ["leaves", "any"])
def test_decoding_never_leaves_the_tree(feed: str, end_after: str) -> None:
    model = make(feed=feed, end_after=end_after, seed=1)
    sharpen(model, 1)
    out = model(images(8, seed=1))
    indices, scores = model.decode_beams(out, beam_width=4)
    assert indices.shape == (8, 4, TREE.num_levels) and scores.shape == (8, 4)
    assert_root_paths(TREE, indices.flatten(0, 1), leaves_only=end_after == "leaves")
    pred, best = model.predict(out, beam_width=4)
    assert torch.equal(pred, indices[:, 0]) and torch.equal(best, scores[:, 0])


@pytest.mark.parametrize("feed", FEEDS)
def test_a_certain_end_stops_the_path(feed: str) -> None:
    # zero output weights: every step gives the same logits, and END's large bias makes it near-certain
    for end_after, length in [("any", 1), ("leaves", 2)]:
        model = make(feed=feed, end_after=end_after)
        with torch.no_grad():
            model.out.weight.zero_()
            model.out.bias.zero_()
            model.out.bias[model.end] = 20.0
        pred, _ = model.predict(model(images(3)), beam_width=3)
        names = TREE.decode(pred)
        # "any" stops right after level 1; "leaves" at the shallowest leaves (Trouser, Dress, Coat, Bag)
        assert [len(p) for p in names] == [length] * 3
        assert_root_paths(TREE, pred, leaves_only=end_after == "leaves")


@pytest.mark.parametrize("feed", FEEDS)
@pytest.mark.parametrize("end_after", ["leaves", "any"])
def test_wide_beam_equals_brute_force(feed: str, end_after: str) -> None:
    rng = random.Random(f"{feed}-{end_after}")
    trees = [TREE] + [random_tree(rng) for _ in range(3)]
    for i, tree in enumerate(trees):
        model = make(tree, seed=i, feed=feed, end_after=end_after)
        sharpen(model, i)
        out = model(images(2, seed=i))
        candidates = all_paths(tree, end_after)
        k = len(candidates) + 1  # one slot more than there are paths: it must come back empty
        indices, scores = model.decode_beams(out, k)
        assert torch.all(scores[:, :-1] >= scores[:, 1:])
        assert torch.all(indices[:, -1] == IGNORE_INDEX) and torch.all(scores[:, -1] == 0)
        for b in range(2):
            state = tuple(s[:, b:b + 1].contiguous() for s in out.state)
            with torch.no_grad():
                brute = {tuple(p): path_step_log_probs(model, state, p).sum().exp().item() for p in candidates}
            # with every path in the beam the search is exhaustive: same paths, same scores
            found = {tuple(p): s for p, s in zip(tree.decode(indices[b, :-1]), scores[b, :-1].tolist())}
            assert found.keys() == brute.keys()
            for p, s in found.items():
                assert s == pytest.approx(brute[p], rel=1e-4, abs=1e-12)
            ranked = sorted(brute.values(), reverse=True)
            best = max(brute, key=brute.get)
            assert scores[b, 0].item() == pytest.approx(ranked[0], rel=1e-4)
            if len(ranked) == 1 or ranked[1] < ranked[0] * (1 - 1e-3):  # a clear winner
                assert tree.decode(indices[b, :1]) == [list(best)]


@pytest.mark.parametrize("feed", FEEDS)
def test_wider_beam_never_loses_to_greedy(feed: str) -> None:
    model = make(feed=feed, seed=3)
    sharpen(model, 3)
    out = model(images(16, seed=3))
    greedy, greedy_score = model.predict(out, beam_width=1)
    assert_root_paths(TREE, greedy, leaves_only=True)
    _, scores = model.decode_beams(out, beam_width=3)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    # an exhaustive beam finds the best path, so it can only match or beat greedy
    _, wide = model.predict(out, beam_width=len(TREE.leaves))
    assert torch.all(wide >= greedy_score * (1 - 1e-5))
    assert torch.all(wide >= scores[:, 0] * (1 - 1e-5))


def test_bad_settings_fail_clearly() -> None:
    with pytest.raises(ValueError, match="feed must be one of"):
        make(feed="argmax")
    with pytest.raises(ValueError, match="end_after must be one of"):
        make(end_after="never")
    with pytest.raises(ValueError, match=r"unknown s2s settings \['attention'\]"):
        make(attention=True)
    cfg = {"kind": "s2s", "backbone": BACKBONE, "level_layers": [["layer4"], ["layer3"]],
           "conversion": {"kind": "pool", "grid": [8, 1, 1]}}
    with pytest.raises(ValueError, match="3 levels"):
        create_model(cfg, TREE, 1, 28)
    with pytest.raises(ValueError, match="unknown model kind 'seq2seq'"):
        create_model({**cfg, "kind": "seq2seq"}, TREE, 1, 28)
    model = make()
    with pytest.raises(ValueError, match="beam_width"):
        model.predict(model(images(1)), beam_width=0)
    with pytest.raises(ValueError, match=r"shape \[B, 3\]"):
        model.step_targets(torch.zeros(2, 2, dtype=torch.long))


def test_forget_gate_bias_is_one() -> None:
    model = make(num_layers=2)
    for lstm in (model.encoder, model.decoder):
        h = lstm.hidden_size
        biases = dict(lstm.named_parameters())
        for name in (n for n in biases if n.startswith("bias_ih")):
            total = biases[name] + biases[name.replace("bias_ih", "bias_hh")]  # what the gates see
            assert torch.equal(total[h:2 * h], torch.ones(h)), name  # the forget gate (gates i, f, g, o)
            assert total[:h].abs().sum() == 0 and total[2 * h:].abs().sum() == 0, name


# -- end_after: where a decoded path may stop, chosen from the data -----------------------------------

def test_end_after_auto_follows_the_labels() -> None:
    where = "params.yaml: variants.S2S.s2s.end_after (data 'image_folder')"
    assert resolve_end_after("auto", TREE, TREE.leaves, where) == "leaves"
    assert resolve_end_after("auto", TREE, [*TREE.leaves, "shoes"], where) == "any"
    assert resolve_end_after("any", TREE, TREE.leaves, where) == "any"
    assert resolve_end_after("leaves", TREE, TREE.leaves, where) == "leaves"
    with pytest.raises(ValueError) as err:
        resolve_end_after("leaves", TREE, [*TREE.leaves, "shoes", "clothes"], where)
    assert str(err.value).startswith(where + ": end_after is 'leaves'")
    assert "internal nodes ('clothes', 'shoes')" in str(err.value) and "'auto' or 'any'" in str(err.value)
    with pytest.raises(ValueError, match="resolved from the data's labels"):
        make(end_after="auto")
    cfg = {"kind": "s2s", "s2s": {"hidden_size": 8, "end_after": "auto"}}
    assert resolve_config(cfg, TREE, ["shoes"], where)["s2s"] == {"hidden_size": 8, "end_after": "any"}
    assert cfg["s2s"]["end_after"] == "auto"  # the variant's own entry is left alone
    rnn = {"kind": "rnn", "rnn": {}}
    assert resolve_config(rnn, TREE, ["shoes"], where) is rnn


def test_path_task_label_ends() -> None:
    class Data:
        paths = torch.stack([TREE.encode_path(TREE.path(n)) for n in ("Trouser", "Shirt", "shoes", "Shirt")])

    assert PathTask().label_ends([Data()], TREE) == {"Trouser", "Shirt", "shoes"}


def _folder_project(tmp_path, monkeypatch, end_after: str, internal_class: bool):
    """An image-folder project whose S2S variant has ``end_after``; with ``internal_class``, a class folder 'shoes'."""
    from test_datasets import write_images
    from test_pipeline_datasets import _image_folder, _params, _project

    from dhnn.params import validate
    from dhnn.pipeline import layout, taxonomy_stage, train_stage

    project = _project(tmp_path, monkeypatch)
    data, taxonomy = _image_folder(project)
    if internal_class:  # images labelled only down to 'shoes', which has children
        write_images(project / "data" / "images" / "shoes", 8, seed=9)
    raw = _params("image_folder", data, taxonomy, 3).model_dump(mode="json")
    raw["variants"]["S2S-Pool"]["s2s"]["end_after"] = end_after
    params = validate(raw, "params.yaml")
    taxonomy_stage.save_taxonomy(taxonomy_stage.build_taxonomy(params), project / "results")
    return params, layout.taxonomy_path(project / "results")


@pytest.mark.parametrize("internal_class", [False, True])
def test_auto_end_after_is_chosen_from_the_data(tmp_path, monkeypatch, internal_class: bool) -> None:
    from dhnn.pipeline import layout, taxonomy_stage, train_stage

    params, taxonomy = _folder_project(tmp_path, monkeypatch, "auto", internal_class)
    run = train_stage.prepare_training(params, "S2S-Pool", 0, taxonomy)
    want = "any" if internal_class else "leaves"
    assert run.cfg["s2s"]["end_after"] == want and run.model.end_after == want
    shoes = run.tree.nodes.index("shoes")
    assert bool(run.model.allowed[shoes, run.model.end]) == internal_class  # END may follow 'shoes'


def test_explicit_leaves_with_labels_above_the_leaves_fails_before_training(tmp_path, monkeypatch) -> None:
    from dhnn.pipeline import layout, taxonomy_stage, train_stage

    params, taxonomy = _folder_project(tmp_path, monkeypatch, "leaves", True)
    with pytest.raises(ValueError, match=r"params.yaml: variants.S2S-Pool.s2s.end_after \(data 'image_folder'\): "
                                         r"end_after is 'leaves', but labels of the data end at internal nodes "
                                         r"\('shoes'\)"):
        train_stage.prepare_training(params, "S2S-Pool", 0, taxonomy)


# -- a collapsed tree's predictions are scored on the full taxonomy -----------------------------------

FULL = Taxonomy.from_csv("taxonomies/fashion_mnist.csv")


def _encode(tree: Taxonomy, names: list[str]) -> np.ndarray:
    return torch.stack([tree.encode_path(tree.path(n)) for n in names]).numpy()


def test_expand_paths_puts_removed_nodes_back() -> None:
    names = ["Trouser", "Shirt", "Bag", "goods", "shoes"]
    full, depths = expand_paths(torch.as_tensor(_encode(TREE, names)), TREE, FULL)
    assert FULL.decode(full) == [FULL.path(n) for n in names]
    assert FULL.decode(full)[0] == ["clothes", "bottoms", "Trouser"]
    # bottoms (removed) reads the prefix probability of Trouser, the kept node below it
    assert depths.tolist()[0] == [0, 1, 1] and depths.tolist()[3] == [0, -1, -1]
    probs = np.array([[0.9, 0.8, np.nan]] * 5)
    pred = on_full_tree(PrefixPredictions(_encode(TREE, names), probs, _encode(TREE, names)), TREE, FULL)
    assert np.array_equal(pred.prefix_probs[0], [0.9, 0.8, 0.8])
    assert np.isnan(pred.prefix_probs[3, 1:]).all()
    empty = expand_paths(torch.full((1, 3), IGNORE_INDEX), TREE, FULL)[0]
    assert (empty == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="is not its path in the full taxonomy"):
        expand_paths(torch.as_tensor(_encode(TREE, names)), TREE, Taxonomy.from_paths([["clothes", "Trouser"]]))


def test_same_predictions_same_node_accuracy_collapsed_or_not(monkeypatch) -> None:
    true = ["Trouser", "Trouser", "Shirt", "Bag", "Coat", "Sneaker", "Dress", "Sandal"]
    pred = ["Trouser", "Dress", "Shirt", "Sandal", "Trouser", "Sneaker", "clothes", "shoes"]
    probs = {"full": np.array([[0.9, 0.8, 0.7]] * len(true)), "collapsed": np.array([[0.9, 0.8, 0.7]] * len(true))}
    hits, consistent = np.ones(len(pred), dtype=bool), np.ones(len(pred), dtype=bool)
    runs = {"full": PrefixPredictions(_encode(FULL, pred), probs["full"], _encode(FULL, true), None, hits, consistent),
            "collapsed": PrefixPredictions(_encode(TREE, pred), probs["collapsed"], _encode(TREE, true), None, hits,
                                           consistent)}
    for run in runs.values():  # NaN after each path's end
        run.prefix_probs[run.pred == IGNORE_INDEX] = np.nan

    def test(run: str, tree: Taxonomy, full_tree: Taxonomy | None):
        monkeypatch.setattr("dhnn.evaluation.scoring.predict_prefixes", lambda *args, **kwargs: runs[run])
        return score_paths(None, None, None, tree, torch.device("cpu"), 1, full_tree=full_tree, calibrate=False)

    full_metrics, full_rows = test("full", FULL, None)
    metrics, rows = test("collapsed", TREE, FULL)
    for key in ("path_accuracy", "node_accuracy", "level_accuracy"):
        assert metrics[key] == full_metrics[key], key
    assert rows[["true path", "predicted path"]].equals(full_rows[["true path", "predicted path"]])
    assert rows["true path"][0] == "clothes / bottoms / Trouser"
    # scored on the collapsed tree itself, the same predictions would count other levels
    assert test("collapsed", TREE, None)[0]["node_accuracy"] != full_metrics["node_accuracy"]
