"""The model registry: the one place a variant's ``kind`` is dispatched (flat, rnn, s2s)."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..taxonomy import Taxonomy
from .backbone import create_backbone
from .conversions import conversion_cost
from .flat import FlatClassifier
from .rnn import DHNN
from .s2s import CNNS2S, s2s_settings


def _flat(cfg: dict, tree: Taxonomy, in_chans: int, image_size: int, multilabel: bool) -> nn.Module:
    backbone = create_backbone(cfg["backbone"], [cfg.get("layer", "layer4")], in_chans)
    return FlatClassifier(tree, backbone, cfg.get("dropout", 0.0), multilabel)


def _levels_backbone(cfg: dict, in_chans: int):
    return create_backbone(cfg["backbone"], sorted({layer for s in cfg["level_layers"] for layer in s}), in_chans)


def _rnn(cfg: dict, tree: Taxonomy, in_chans: int, image_size: int, multilabel: bool) -> nn.Module:
    return DHNN(tree, _levels_backbone(cfg, in_chans), cfg["level_layers"], _conversion(cfg), cfg.get("rnn", {}),
                in_chans, image_size, cfg.get("softmax_over", "level"), multilabel)


def _s2s(cfg: dict, tree: Taxonomy, in_chans: int, image_size: int, multilabel: bool) -> nn.Module:
    if multilabel:
        raise ValueError("multi-label data needs kind 'flat' or 'rnn'; multi-label CNN-S2S is not implemented")
    return CNNS2S(tree, _levels_backbone(cfg, in_chans), cfg["level_layers"], _conversion(cfg), in_chans, image_size,
                  **s2s_settings(cfg))


def _conversion(cfg: dict) -> dict:
    """The conversion entry without the keys the schema fills with None (the modules keep their own defaults)."""
    return {k: v for k, v in cfg["conversion"].items() if v is not None}


# kind -> builder(cfg, tree, in_chans, image_size, multilabel)
MODEL_KINDS: dict[str, Callable[..., nn.Module]] = {"flat": _flat, "rnn": _rnn, "s2s": _s2s}


def create_model(cfg: dict, taxonomy: Taxonomy, in_chans: int, image_size: int, multilabel: bool = False) -> nn.Module:
    """Build a model from one ``variants`` entry of params.yaml: kind flat, rnn (CNN-RNN) or s2s (CNN-S2S).

    ``multilabel`` (node-set labels, as in Open Images) trains sigmoid cross-entropy over node sets.
    """
    if cfg.get("kind") not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {cfg.get('kind')!r}; expected one of {', '.join(MODEL_KINDS)}")
    return MODEL_KINDS[cfg["kind"]](cfg, taxonomy, in_chans, image_size, multilabel)


def conversion_summary(model: nn.Module, in_chans: int, image_size: int) -> dict[str, int]:
    """Trainable parameters and per-sample activation bytes of a model's conversions g (zero for Flat)."""
    inputs = getattr(model, "inputs", None)
    if inputs is None:
        return {"conversion_params": 0, "conversion_activation_bytes": 0}
    shapes = model.backbone.feature_shapes(in_chans, image_size)
    costs = [conversion_cost(g, shapes[layer]) for layer, g in inputs.convert.items()]
    return {"conversion_params": sum(c["params"] for c in costs),
            "conversion_activation_bytes": sum(c["activation_bytes"] for c in costs)}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
