"""Model shapes, gradients and the loss on tiny inputs (CPU)."""
from __future__ import annotations

import pytest
import torch

from dhnn.taxonomy import IGNORE_INDEX, Taxonomy
from dhnn.models import count_parameters, create_model
from dhnn.models.registry import resolve_config
from dhnn.models.conversions import PoolConversion
from dhnn.params import Variant, settings

TREE = Taxonomy.from_csv("taxonomies/fashion_mnist.csv")
# zero_init_last=False: timm zero-initialises the last BN of each block, which blocks gradients at step 0
BACKBONE = {"name": "resnet18", "pretrained": False, "kwargs": {"channels": [8, 16, 32, 64], "zero_init_last": False}}
RNN = {"kind": "rnn", "backbone": BACKBONE, "level_layers": [["layer4"], ["layer3"], ["layer2", "layer1"]],
       "conversion": {"kind": "pool", "grid": [8, 2, 2], "mode": "max"},
       "rnn": {"hidden_size": 16, "num_layers": 2, "bidirectional": True, "residual": True}}
FLAT = {"kind": "flat", "backbone": BACKBONE, "layer": "layer4"}
SMALL = {"source": "dhnn", "name": "small_resnet", "kwargs": {"widths": [8, 16, 32, 64]}}


def _batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    leaves = torch.randint(len(TREE.leaves), (n,))
    return torch.randn(n, 1, 28, 28), TREE.leaf_paths()[leaves]


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("softmax_over", ["level", "all"])
def test_rnn_shapes_and_gradients(residual: bool, softmax_over: str) -> None:
    cfg = {**RNN, "rnn": {**RNN["rnn"], "residual": residual}, "softmax_over": softmax_over}
    model = create_model(cfg, TREE, in_chans=1, image_size=28)
    x, paths = _batch()
    logits = model(x)
    assert logits.shape == (4, TREE.num_levels, len(TREE))
    log_probs = model.level_log_probs(logits)
    assert [lp.shape for lp in log_probs] == [(4, n) for n in TREE.level_sizes]
    model.loss(logits, paths, [1.0, 1.0, 1.0]).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    pred, score = model.predict(logits, beam_width=2)
    assert pred.shape == (4, TREE.num_levels) and score.shape == (4,)
    # every prediction is a real path of the tree
    leaf_rows = {tuple(r) for r in TREE.leaf_paths().tolist()}
    assert all(tuple(p) in leaf_rows for p in pred.tolist())


def test_flat_shapes_gradients_and_paths() -> None:
    model = create_model(FLAT, TREE, in_chans=1, image_size=28)
    x, paths = _batch()
    logits = model(x)
    assert logits.shape == (4, len(TREE.leaves))
    model.loss(logits, paths).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    pred, _ = model.predict(logits)
    leaf = logits.argmax(-1)
    assert torch.equal(pred, TREE.leaf_paths()[leaf])


def test_flat_leaf_targets_invert_leaf_paths() -> None:
    model = create_model(FLAT, TREE, in_chans=1, image_size=28)
    assert torch.equal(model.leaf_targets(TREE.leaf_paths()), torch.arange(len(TREE.leaves)))


def test_loss_weights_and_ignored_levels() -> None:
    model = create_model(RNN, TREE, in_chans=1, image_size=28)
    x, paths = _batch()
    logits = model(x)
    per_level = [model.loss(logits, paths, w) for w in ([1, 0, 0], [0, 1, 0], [0, 0, 1])]
    assert torch.allclose(model.loss(logits, paths, [1, 2, 3]), per_level[0] + 2 * per_level[1] + 3 * per_level[2])
    cut = paths.clone()
    cut[:, 2] = IGNORE_INDEX  # paths that stop at level 2 contribute nothing at level 3
    assert torch.allclose(model.loss(logits, cut, [1, 1, 1]), per_level[0] + per_level[1])


def test_pool_conversion_has_no_parameters_and_fixed_size() -> None:
    for shape in [(8, 7, 7), (64, 1, 1), (3, 5, 9)]:
        across = PoolConversion(shape, (4, 2, 2))  # asked to pool across channels too: one size for every layer
        per_channel = PoolConversion(shape, (2, 2))
        assert count_parameters(across) == count_parameters(per_channel) == 0
        assert across(torch.randn(2, *shape)).shape == (2, 16)
        assert per_channel(torch.randn(2, *shape)).shape == (2, shape[0] * 4) and per_channel.out_features == shape[0] * 4


def test_pool_conversion_is_the_pooled_tensor() -> None:
    a = torch.arange(2 * 4 * 4, dtype=torch.float).reshape(1, 2, 4, 4)
    out = PoolConversion((2, 4, 4), (1, 2, 2), mode="max")(a)
    assert out.tolist() == [[21.0, 23.0, 29.0, 31.0]]


def test_bad_configs_fail_clearly() -> None:
    with pytest.raises(ValueError, match="no feature layers"):
        create_model({**RNN, "level_layers": [["layer9"], ["layer3"], ["layer2"]]}, TREE, 1, 28)
    with pytest.raises(ValueError, match="3 levels"):
        create_model({**RNN, "level_layers": [["layer4"], ["layer3"]]}, TREE, 1, 28)
    with pytest.raises(ValueError, match="unknown model kind"):
        create_model({**RNN, "kind": "transformer"}, TREE, 1, 28)


LAYERS = [["layer4"], ["layer3"], ["layer2", "layer1"]]
HEAD = {"hidden_size": 8, "num_layers": 1, "bidirectional": True, "residual": True}
# every model kind and conversion (the tests never read the live params.yaml, which users edit)
VARIANTS = {
    "flat": {"kind": "flat", "backbone": BACKBONE, "layer": "layer4"},
    "rnn-pool": {"kind": "rnn", "backbone": BACKBONE, "level_layers": LAYERS,
                 "conversion": {"kind": "pool", "grid": [8, 1, 1], "mode": "avg"}, "rnn": {**HEAD, "residual": False}},
    "rnn-linear-gru": {"kind": "rnn", "backbone": BACKBONE, "level_layers": LAYERS,
                       "conversion": {"kind": "linear", "out": [4, 2, 2]}, "rnn": {**HEAD, "cell": "gru"}},
    "rnn-conv-alt": {"kind": "rnn", "backbone": {**BACKBONE, "pretrained": True, "allow_random_init": True},
                     "level_layers": LAYERS,
                     "conversion": {"kind": "conv", "channels": 8}, "rnn": HEAD, "alt": {"alt1": 1, "alt2": 6}},
    "rnn-dense": {"kind": "rnn", "backbone": BACKBONE, "level_layers": LAYERS,
                  "conversion": {"kind": "dense", "p": 8}, "rnn": HEAD},
    "rnn-pool-linear": {"kind": "rnn", "backbone": BACKBONE, "level_layers": LAYERS,
                        "conversion": {"kind": "pool_linear", "p": 8}, "rnn": HEAD},
    "s2s-pool": {"kind": "s2s", "collapse_chains": True, "backbone": BACKBONE, "level_layers": LAYERS,
                 "conversion": {"kind": "pool", "grid": [8, 1, 1]}, "s2s": {"hidden_size": 8}},
    # the default grid's: dhnn's small-image ResNet, pooling per channel (layers of 8..64 channels, zero-padded)
    "flat-small": {"kind": "flat", "backbone": SMALL, "layer": "layer4"},
    "rnn-small-pool": {"kind": "rnn", "backbone": SMALL, "level_layers": LAYERS,
                       "conversion": {"kind": "pool", "grid": [1, 1], "mode": "avg"}, "rnn": HEAD},
    "s2s-small-pool": {"kind": "s2s", "collapse_chains": True, "backbone": SMALL, "level_layers": LAYERS,
                       "conversion": {"kind": "pool", "grid": [2, 2]}, "s2s": {"hidden_size": 8}},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_model_kind_trains_on_tiny_inputs(name: str) -> None:
    """Each kind of model and conversion, on a thin backbone: forward, backward, gradients, per-level outputs."""
    cfg = settings(Variant, VARIANTS[name])
    tree = TREE.collapse_chains() if cfg.get("collapse_chains") else TREE
    cfg = resolve_config(cfg, tree, tree.leaves, "test")  # labels at the leaves: CNN-S2S's end_after auto -> leaves
    model = create_model(cfg, tree, in_chans=1, image_size=28)
    x = torch.randn(4, 1, 28, 28)
    paths = tree.leaf_paths()[torch.arange(4) % len(tree.leaves)]
    outputs = model(x, paths)
    model.loss(outputs, paths, [1.0] * tree.num_levels).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    pred, score = model.predict(outputs, beam_width=2)
    assert pred.shape == (4, tree.num_levels) and score.shape == (4,)
    leaf_rows = {tuple(r) for r in tree.leaf_paths().tolist()}
    assert all(tuple(p) in leaf_rows for p in pred.tolist())


@pytest.mark.parametrize("name", ["flat", "rnn-pool", "s2s-pool", "rnn-small-pool"])
def test_label_smoothing_mixes_in_the_uniform_target_over_each_level(name: str) -> None:
    """eps = 0 is plain cross-entropy; the smoothed loss is linear in eps (torch's definition, per level)."""
    cfg = settings(Variant, VARIANTS[name])
    tree = TREE.collapse_chains() if cfg.get("collapse_chains") else TREE
    model = create_model(resolve_config(cfg, tree, tree.leaves, "test"), tree, in_chans=1, image_size=28).eval()
    x, paths = torch.randn(4, 1, 28, 28), tree.leaf_paths()[torch.arange(4) % len(tree.leaves)]
    with torch.no_grad():
        out = model(x, paths)
        w = [1.0] * tree.num_levels
        plain, half, full = (model.loss(out, paths, w, label_smoothing=e).item() for e in (0.0, 0.5, 1.0))
    assert plain == pytest.approx(model.loss(out, paths, w).item())
    assert half == pytest.approx((plain + full) / 2, rel=1e-5) and full != pytest.approx(plain)
    if name == "flat":  # the leaf softmax: exactly torch's label-smoothed cross-entropy
        target = model.leaf_targets(paths)
        assert half == pytest.approx(torch.nn.functional.cross_entropy(out, target, label_smoothing=0.5).item(), rel=1e-5)


def test_argmax_consistency_checks_each_level_against_its_parent() -> None:
    """Per-level argmax nodes that form no path are inconsistent; the flat model is consistent by construction."""
    model = create_model(settings(Variant, VARIANTS["rnn-pool"]), TREE, in_chans=1, image_size=28)
    logits = torch.full((2, TREE.num_levels, len(TREE)), -10.0)
    for row, path in enumerate([["clothes", "tops", "Shirt"], ["goods", "tops", "Shirt"]]):  # the second: no path
        for t, node in enumerate(path):
            logits[row, t, TREE.nodes.index(node)] = 10.0
    assert model.argmax_consistent(logits).tolist() == [True, False]
    flat = create_model(settings(Variant, VARIANTS["flat"]), TREE, in_chans=1, image_size=28)
    assert flat.argmax_consistent(torch.randn(3, len(TREE.leaves))).all()

