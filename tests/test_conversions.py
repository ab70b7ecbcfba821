"""The conversions g: [C, H, W] -> R^p, their costs, and the CNN-RNN built with each of them (CPU)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dhnn.taxonomy import Taxonomy
from dhnn.models import create_model
from dhnn.models.conversions import (ConvConversion, DenseLinear, NModeLinear, PoolConversion, PoolLinearConversion,
                              conversion_cost, create_conversion)
from dhnn.models.rnn import RNNHead

TREE = Taxonomy.from_csv("taxonomies/fashion_mnist.csv")
# zero_init_last=False: timm zero-initialises the last BN of each block, which blocks gradients at step 0
BACKBONE = {"name": "resnet18", "pretrained": False, "kwargs": {"channels": [8, 16, 32, 64], "zero_init_last": False}}
LEVEL_LAYERS = [["layer4"], ["layer3"], ["layer2", "layer1"]]  # at 28x28: 1x1, 2x2, 4x4 and 7x7 maps

# One config per kind, each giving p = 12 on every feature map (so a DHNN can average over S_t).
CONFIGS = {
    "pool": {"grid": [3, 2, 2], "mode": "max"},
    "pool_linear": {"p": 12},
    "linear": {"out": [2, 3, 2]},
    "dense": {"p": 12},
    "conv": {"channels": 12},
}


def n_mode_reference(a: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor, u3: torch.Tensor) -> torch.Tensor:
    """vec(a x1 U1 x2 U2 x3 U3) by mode-k unfolding, (A x_k U)_(k) = U @ A_(k), for a batch [B, C, H, W]."""
    t = a.transpose(2, 3)  # the slides' mode order: [B, D, W, H]
    for k, u in enumerate([u1, u2, u3], start=1):
        moved = t.movedim(k, 1)  # mode k first (after the batch)
        unfolded = moved.reshape(moved.shape[0], moved.shape[1], -1)  # A_(k), one per sample
        product = (u @ unfolded).reshape(moved.shape[0], u.shape[0], *moved.shape[2:])
        t = product.movedim(1, k)
    return t.flatten(1)  # row-major over (m, n, v)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.lists(st.integers(1, 6), min_size=3, max_size=3),
       st.lists(st.integers(1, 4), min_size=3, max_size=3), st.integers(0, 2 ** 16))
def test_n_mode_product_matches_unfolding(batch: int, shape: list[int], out: list[int], seed: int) -> None:
    torch.manual_seed(seed)
    g = NModeLinear(shape, out).double()
    a = torch.randn(batch, *shape, dtype=torch.float64)
    expected = n_mode_reference(a, g.u1, g.u2, g.u3)
    assert g(a).shape == (batch, math.prod(out)) == expected.shape
    torch.testing.assert_close(g(a), expected)


def test_n_mode_factors_act_on_the_documented_modes() -> None:
    # U1 mixes channels, U2 width, U3 height: pick one entry of each and read it back
    g = NModeLinear((2, 3, 4), (1, 1, 1))
    with torch.no_grad():
        for u in (g.u1, g.u2, g.u3):
            u.zero_()
        g.u1[0, 1], g.u2[0, 3], g.u3[0, 2] = 1.0, 1.0, 1.0
    a = torch.randn(1, 2, 3, 4)
    assert g(a).item() == pytest.approx(a[0, 1, 2, 3].item())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_n_mode_init_keeps_the_variance(seed: int) -> None:
    torch.manual_seed(seed)
    g = NModeLinear((64, 7, 7), (8, 8, 8))
    out = g(torch.randn(64, 64, 7, 7))
    assert 0.9 < out.var().item() < 1.1


def test_parameter_counts() -> None:
    c, h, w, p = 6, 7, 5, 10
    count = lambda g: sum(t.numel() for t in g.parameters())  # noqa: E731
    assert count(PoolConversion((c, h, w), (4, 2, 2))) == 0
    # 7x5 -> 3x2 -> 1x1 by default; one pooling leaves 3x2
    assert count(PoolLinearConversion((c, h, w), p)) == c * 1 * 1 * p
    assert count(PoolLinearConversion((c, h, w), p, repeats=1)) == c * 3 * 2 * p
    assert count(PoolLinearConversion((c, h, w), p, repeats=0)) == c * h * w * p
    assert count(NModeLinear((c, h, w), (2, 3, 4))) == 2 * c + 3 * w + 4 * h
    assert count(DenseLinear((c, h, w), p)) == c * h * w * p
    assert count(ConvConversion((c, h, w), p)) == p * c * h * w + p
    assert count(ConvConversion((c, h, w), p, kernel=[2, 3])) == p * c * 2 * 3 + p


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (7, 7), (4, 9)])
def test_conv_default_kernel_covers_the_map(hw: tuple[int, int]) -> None:
    g = ConvConversion((5, *hw), channels=7)
    assert g.out_features == 7
    assert g(torch.randn(2, 5, *hw)).shape == (2, 7)


@pytest.mark.parametrize("kernel, expected_hw", [(1, (7, 6)), (3, (5, 4)), ([2, 6], (6, 1)), ((7, 1), (1, 6))])
def test_conv_with_kernel_keeps_the_valid_positions(kernel, expected_hw: tuple[int, int]) -> None:
    g = ConvConversion((5, 7, 6), channels=4, kernel=kernel)
    assert g.out_features == 4 * math.prod(expected_hw)
    assert g(torch.randn(2, 5, 7, 6)).shape == (2, g.out_features)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@pytest.mark.parametrize("shape", [(8, 7, 7), (16, 4, 4), (64, 1, 1), (3, 5, 9)])
def test_every_kind_forward_and_backward(kind: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    g = create_conversion(kind, shape, **CONFIGS[kind])
    assert g.out_features == 12
    a = torch.randn(2, *shape, requires_grad=True)
    out = g(a)
    assert out.shape == (2, 12) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0  # the gradient reaches the CNN
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in g.parameters())


def test_conversion_cost() -> None:
    small, large = (8, 7, 7), (8, 14, 14)
    for kind, cfg in CONFIGS.items():
        cost_small = conversion_cost(create_conversion(kind, small, **cfg), small)
        cost_large = conversion_cost(create_conversion(kind, large, **cfg), large)
        assert cost_small["output_bytes"] == 12 * 4
        assert 0 < cost_small["activation_bytes"] < cost_large["activation_bytes"], kind
    assert conversion_cost(PoolConversion(small, (4, 2, 2)), small)["params"] == 0
    assert conversion_cost(DenseLinear(small, 12), small)["params"] == 8 * 7 * 7 * 12
    # a dense layer saves its input (the flattened map) for backward, and not its weight
    dense = conversion_cost(DenseLinear(small, 12), small)
    assert dense["activation_bytes"] == dense["input_saved_bytes"] == 8 * 7 * 7 * 4
    # two max poolings of 7x7 save their inputs and int64 argmax indices besides the input
    pool_linear = conversion_cost(PoolLinearConversion(small, 12), small)
    assert pool_linear["input_saved_bytes"] == 8 * 7 * 7 * 4
    assert pool_linear["activation_bytes"] == 8 * (7 * 7 * 4 + 3 * 3 * 8 + 3 * 3 * 4 + 1 * 1 * 8 + 1 * 1 * 4)


def test_bad_conversion_configs_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown conversion 'fft'.*'conv'"):
        create_conversion("fft", (8, 7, 7))
    with pytest.raises(ValueError, match=r"missing keys \['out'\]"):
        create_conversion("linear", (8, 7, 7))
    with pytest.raises(ValueError, match=r"unknown keys \['grid'\].*\['channels'\]"):
        create_conversion("conv", (8, 7, 7), channels=4, grid=[1, 1, 1])
    with pytest.raises(ValueError, match="out"):
        create_conversion("linear", (8, 7, 7), out=[4, 4])
    with pytest.raises(ValueError, match="larger than"):
        create_conversion("conv", (8, 2, 2), channels=4, kernel=3)
    with pytest.raises(ValueError, match="shrink"):
        create_conversion("pool_linear", (8, 2, 2), p=4, repeats=2)
    with pytest.raises(ValueError, match="mode"):
        create_conversion("pool", (8, 2, 2), grid=[1, 1, 1], mode="median")


def test_layers_with_different_p_are_rejected() -> None:
    # a 1x1 kernel keeps every position, so the 7x7 and 1x1 maps give different p
    cfg = {"kind": "rnn", "backbone": BACKBONE, "level_layers": LEVEL_LAYERS,
           "conversion": {"kind": "conv", "channels": 4, "kernel": 1},
           "rnn": {"hidden_size": 8, "num_layers": 1, "bidirectional": False, "residual": False}}
    with pytest.raises(ValueError, match="same p"):
        create_model(cfg, TREE, in_chans=1, image_size=28)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_head_initialisation(cell: str) -> None:
    head = RNNHead(12, hidden_size=6, num_layers=2, bidirectional=True, residual=True, num_nodes=5, cell=cell)
    assert isinstance(head.rnn, torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)
    for name, w in head.rnn.named_parameters():
        if name.startswith("weight_hh"):  # orthogonal: [gates*h, h] with orthonormal columns
            torch.testing.assert_close(w.T @ w, torch.eye(6))
        elif name.startswith("bias_ih") and cell == "lstm":  # PyTorch's gate order is i, f, g, o
            assert w[6:12].eq(1).all() and w[:6].eq(0).all() and w[12:].eq(0).all()
        elif name.startswith("bias"):
            assert w.eq(0).all(), name
    with pytest.raises(ValueError, match="'lstm' or 'gru'"):
        RNNHead(12, hidden_size=6, num_layers=1, bidirectional=False, residual=False, num_nodes=5, cell="rnn")


# Every kind with both cells. The (bidirectional, residual) pairs rotate so that each kind meets both
# values of each flag (the GRU gets the LSTM's pair flipped) and each cell meets all four pairs.
PAIRS = [(False, False), (False, True), (True, True), (True, False)]
CASES = [case for i, kind in enumerate(sorted(CONFIGS)) for case in
         [(kind, "lstm", *PAIRS[i % 4]), (kind, "gru", *[not flag for flag in PAIRS[i % 4]])]]


@pytest.mark.parametrize("kind, cell, bidirectional, residual", CASES)
def test_dhnn_with_every_conversion_and_cell(kind: str, cell: str, bidirectional: bool, residual: bool) -> None:
    cfg = {"kind": "rnn", "backbone": BACKBONE, "level_layers": LEVEL_LAYERS,
           "conversion": {"kind": kind, **CONFIGS[kind]},
           "rnn": {"cell": cell, "hidden_size": 8, "num_layers": 2, "bidirectional": bidirectional,
                   "residual": residual, "dropout": 0.1}}
    torch.manual_seed(0)
    model = create_model(cfg, TREE, in_chans=1, image_size=28)
    assert model.inputs.out_features == 12
    x = torch.randn(3, 1, 28, 28)
    paths = TREE.leaf_paths()[torch.tensor([0, 4, 9])]
    logits = model(x)
    assert logits.shape == (3, TREE.num_levels, len(TREE)) and torch.isfinite(logits).all()
    model.loss(logits, paths, [1.0, 1.0, 1.0]).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_pooling_per_channel_never_mixes_channels() -> None:
    """grid [h, w] pools each channel over space alone (the slides); p = C*h*w depends on the layer."""
    a = torch.randn(2, 5, 6, 6)
    g = create_conversion("pool", (5, 6, 6), grid=[2, 2], mode="avg")
    assert g.out_features == 5 * 2 * 2
    expected = torch.nn.functional.adaptive_avg_pool2d(a, (2, 2)).flatten(1)
    assert torch.equal(g(a), expected)
    a[:, 1:] = 0  # the other channels' values never reach channel 0's entries
    assert torch.equal(g(a)[:, :4], expected[:, :4])


def test_level_inputs_pad_per_channel_pooling_and_keep_channels_last_gradients() -> None:
    """Layers of different widths are zero-padded to the widest; the CNN's gradients stay channels-last."""
    from dhnn.models.rnn import LevelInputs

    shapes = {"layer1": (4, 8, 8), "layer2": (8, 4, 4), "layer3": (16, 2, 2)}
    inputs = LevelInputs([["layer3"], ["layer2", "layer1"]], shapes, {"kind": "pool", "grid": [1, 1], "mode": "avg"})
    assert inputs.out_features == 16
    feats = {k: torch.randn(3, *s).contiguous(memory_format=torch.channels_last).requires_grad_() for k, s in shapes.items()}
    u = inputs(feats)
    assert u.shape == (3, 2, 16)
    assert torch.equal(u[:, 0], feats["layer3"].mean((2, 3)))
    level2 = (torch.nn.functional.pad(feats["layer2"].mean((2, 3)), (0, 8))
              + torch.nn.functional.pad(feats["layer1"].mean((2, 3)), (0, 12))) / 2
    assert torch.allclose(u[:, 1], level2)
    u.sum().backward()
    assert all(f.grad.is_contiguous(memory_format=torch.channels_last) for f in feats.values())

