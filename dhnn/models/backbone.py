"""Backbones: a timm CNN (``features_only``) that returns the feature maps of named layers."""
from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Iterator, Sequence

import timm
import torch
import torch.nn as nn

from ..console import say


class Backbone(nn.Module):
    """A timm CNN that returns the feature maps of the named layers as a dict."""

    def __init__(self, name: str, layers: Sequence[str], in_chans: int = 3, pretrained: bool = False,
                 allow_random_init: bool = False, **kwargs):
        super().__init__()
        probe = timm.create_model(name, pretrained=False, features_only=True, in_chans=in_chans, **kwargs)
        names = probe.feature_info.module_name()
        unknown = [layer for layer in layers if layer not in names]
        if unknown:
            raise ValueError(f"backbone {name!r} has no feature layers {unknown}; it has {names}")
        out_indices = [names.index(layer) for layer in layers]
        self.layers = list(layers)
        self.body = _create_timm(name, pretrained, allow_random_init, features_only=True, out_indices=out_indices, in_chans=in_chans, **kwargs)
        self.channels = dict(zip(self.body.feature_info.module_name(), self.body.feature_info.channels()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.body.feature_info.module_name(), self.body(x)))

    def feature_shapes(self, in_chans: int, image_size: int) -> dict[str, tuple[int, int, int]]:
        """(C, H, W) of each returned feature map for a square input of ``image_size``."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            feats = self(torch.zeros(1, in_chans, image_size, image_size))
        self.train(was_training)
        return {k: tuple(v.shape[1:]) for k, v in feats.items()}


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for and could not be loaded."""


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the weights' hub answers at all (offline, its client would retry for about a minute)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextmanager
def _cache_only(offline: bool) -> Iterator[None]:
    """Make the Hugging Face client read only its cache while ``offline``."""
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


def _create_timm(name: str, pretrained: bool, allow_random_init: bool, **kwargs) -> nn.Module:
    """timm.create_model; pretrained weights that can't be had stop the run unless random init is allowed."""
    if pretrained:
        try:
            with _cache_only(not hub_reachable()):
                return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # offline and not cached, or no weights for this model
            message = f"backbone {name!r}: no pretrained weights ({type(err).__name__}: {err})"
            if not allow_random_init:
                raise PretrainedWeightsError(f"{message}. Connect to the network (or fill the Hugging Face cache), "
                                             f"or set allow_random_init: true in the variant's backbone to train "
                                             f"from scratch") from None
            say(f"warning: {message}; training from random weights (allow_random_init)")
    return timm.create_model(name, pretrained=False, **kwargs)


def create_backbone(cfg: dict, layers: Sequence[str], in_chans: int) -> Backbone:
    """The timm backbone of a variant's ``backbone`` entry (name, pretrained, kwargs), returning ``layers``."""
    return Backbone(cfg["name"], layers, in_chans, cfg.get("pretrained", False),
                    cfg.get("allow_random_init", False), **cfg.get("kwargs", {}))
