"""The model registry: the one place a variant's ``kind`` is dispatched (flat, rnn, s2s)."""
from __future__ import annotations

from collections.abc import Collection
from typing import Callable

import torch.nn as nn

from ..taxonomy import Taxonomy
from .backbone import create_backbone, create_pre_logits
from .conversions import conversion_cost
from .flat import FlatClassifier
from .rnn import DHNN
from .small_resnet import create_small_resnet
from .s2s import CNNS2S, resolve_end_after, s2s_settings


def _flat(cfg: dict, tree: Taxonomy, in_chans: int, image_size: int, multilabel: bool) -> nn.Module:
    if cfg.get("pre_logits"):
        backbone = create_pre_logits(cfg["backbone"], in_chans)
    else:
        backbone = _backbone(cfg["backbone"], [cfg.get("layer", "layer4")], in_chans)
    return FlatClassifier(tree, backbone, cfg.get("dropout", 0.0), multilabel)


def _small_resnet(cfg: dict, layers: list[str], in_chans: int, downsample: dict[str, int] | None = None) -> nn.Module:
    if downsample:
        raise ValueError("downsample is for timm backbones; small_resnet (source dhnn) sets its resolution by its stages")
    if cfg["name"] != "small_resnet":
        raise ValueError(f"backbone source dhnn has one network, 'small_resnet'; got name {cfg['name']!r}")
    return create_small_resnet(cfg, layers, in_chans)


# backbone source -> builder(cfg, layers, in_chans, downsample): timm's models, or dhnn's own for small images
BACKBONES: dict[str, Callable[..., nn.Module]] = {"timm": create_backbone, "dhnn": _small_resnet}


def _backbone(cfg: dict, layers: list[str], in_chans: int, downsample: dict[str, int] | None = None) -> nn.Module:
    source = cfg.get("source", "timm")
    if source not in BACKBONES:
        raise ValueError(f"unknown backbone source {source!r}; expected one of {', '.join(BACKBONES)}")
    return BACKBONES[source](cfg, layers, in_chans, downsample)


def _levels_backbone(cfg: dict, in_chans: int):
    return _backbone(cfg["backbone"], sorted({layer for s in cfg["level_layers"] for layer in s}), in_chans,
                     cfg.get("downsample"))


def _rnn(cfg: dict, tree: Taxonomy, in_chans: int, image_size: int, multilabel: bool) -> nn.Module:
    return DHNN(tree, _levels_backbone(cfg, in_chans), cfg["level_layers"], _conversion(cfg), cfg.get("rnn", {}),
                in_chans, image_size, cfg.get("softmax_over", "level"), multilabel)


def _s2s(cfg: dict, tree: Taxonomy, in_chans: int, image_size: int, multilabel: bool) -> nn.Module:
    return CNNS2S(tree, _levels_backbone(cfg, in_chans), cfg["level_layers"], _conversion(cfg), in_chans, image_size,
                  **s2s_settings(cfg), multilabel=multilabel)


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


def resolve_config(cfg: dict, taxonomy: Taxonomy, label_ends: Collection[str], where: str) -> dict:
    """A variant's config with the settings that depend on the data fixed: CNN-S2S's ``end_after: auto``.

    ``label_ends``: the nodes the data's labels end at (the task's ``label_ends``). What this returns
    is what the model is built from and what its checkpoint records, so a bundle rebuilds it without
    the data.
    """
    if cfg.get("kind") != "s2s":
        return cfg
    s2s = dict(cfg.get("s2s") or {})
    s2s["end_after"] = resolve_end_after(s2s.get("end_after") or "auto", taxonomy, label_ends, where)
    return {**cfg, "s2s": s2s}


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
