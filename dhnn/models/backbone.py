"""Backbones: a timm CNN (``features_only``) that returns the feature maps of named layers, or its pre-logits."""
from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..console import say


class Backbone(nn.Module):
    """A timm CNN that returns the feature maps of the named layers as a dict.

    A layer is one of timm's feature taps (``feature_info``: "layer4", "features.29") or, for
    VGG-like nets, any module of timm's flattened feature sequence, read by a forward hook. Either
    may be named as timm's feature net names its modules, "features_25" for "features.25" (conv5_1's
    ReLU): a name without dots can key the per-layer conversions. ``downsample`` max-pools a layer's
    map by a factor (k x k, stride k, ceil mode) before it is returned.
    """

    def __init__(self, name: str, layers: Sequence[str], /, in_chans: int = 3, pretrained: bool = False,
                 allow_random_init: bool = False, downsample: dict[str, int] | None = None, **kwargs):
        # name and layers are positional-only, so that timm's own ``layers`` (block counts) can pass in kwargs
        super().__init__()
        probe = _probe(name, in_chans, **kwargs)
        names = probe.feature_info.module_name()
        taps = {**{_key(n): n for n in names}, **{n: n for n in names}}
        order = [n for n, _ in probe.named_children()]  # the flattened sequence: "features_25", or "layer1"
        extra = [layer for layer in layers if layer not in taps]
        unknown = [layer for layer in extra if _key(layer) not in order]
        if unknown:
            raise ValueError(f"backbone {name!r} has no feature layers {unknown}; it has {names}")
        self.downsample = {k: int(v) for k, v in (downsample or {}).items()}
        if set(self.downsample) - set(layers) or any(v < 1 for v in self.downsample.values()):
            raise ValueError(f"downsample {self.downsample}: factors >= 1 for some of the layers {list(layers)}")
        out_indices = {names.index(taps[layer]) for layer in layers if layer in taps}
        for layer in extra:  # timm drops the modules after the last tap: keep a tap at or after each hooked layer
            at = order.index(_key(layer))
            out_indices.add(next(i for i, n in enumerate(names) if order.index(_key(n)) >= at))
        self.layers, self.taps, self.hooked = list(layers), {k: taps[k] for k in layers if k in taps}, extra
        self.body = _create_timm(name, pretrained, allow_random_init, features_only=True,
                                 out_indices=sorted(out_indices), in_chans=in_chans, **kwargs)
        info = dict(zip(self.body.feature_info.module_name(), self.body.feature_info.channels()))
        self.channels = {layer: info[tap] for layer, tap in self.taps.items()}
        for layer in extra:
            self.channels[layer] = _channels_before(self.body, _key(layer))
            self.body[_key(layer)].register_forward_hook(_keep_output)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = dict(zip(self.body.feature_info.module_name(), self.body(x)))
        feats = {layer: out[tap] for layer, tap in self.taps.items()}
        for layer in self.hooked:  # popped, so no map outlives its call
            feats[layer] = self.body[_key(layer)].__dict__.pop("kept_output")
        return {layer: _max_pool(feats[layer], self.downsample.get(layer, 1)) for layer in self.layers}

    def feature_shapes(self, in_chans: int, image_size: int) -> dict[str, tuple[int, int, int]]:
        """(C, H, W) of each returned feature map for a square input of ``image_size``."""
        return feature_shapes(self, in_chans, image_size)


def feature_shapes(net: nn.Module, in_chans: int, image_size: int) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of each feature map that ``net`` returns (a dict) for a square input of ``image_size``."""
    was_training = net.training
    net.eval()
    with torch.no_grad():
        feats = net(torch.zeros(1, in_chans, image_size, image_size))
    net.train(was_training)
    return {k: tuple(v.shape[1:]) for k, v in feats.items()}


def _probe(name: str, in_chans: int, **kwargs) -> nn.Module:
    """The feature net of ``name``, for its layer names only: on the meta device, no weights are made."""
    import timm  # timm imports torchvision: seconds per process, paid only when a timm net is built

    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, features_only=True, in_chans=in_chans, **kwargs)
    except Exception:  # a model whose construction computes with tensors: build it for real
        return timm.create_model(name, pretrained=False, features_only=True, in_chans=in_chans, **kwargs)


def _key(layer: str) -> str:
    """The name timm's flattened feature net gives a module of a top-level Sequential."""
    return layer.replace(".", "_")


def _keep_output(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
    """Forward hook: park a module's output on the module (not on a closure, so copies of the net work)."""
    module.__dict__["kept_output"] = out


def _channels_before(body: nn.Module, key: str) -> int:
    """Output channels of module ``key``: those of the last convolution (or norm) up to it in the sequence."""
    found = None
    for name, module in body.named_children():
        for m in module.modules():
            found = getattr(m, "out_channels", None) or getattr(m, "num_features", None) or found
        if name == key:
            break
    if not found:
        raise ValueError(f"can't tell how many channels {key!r} has: no convolution before it")
    return int(found)


def _max_pool(a: torch.Tensor, factor: int) -> torch.Tensor:
    """k x k max pooling of stride k; ceil mode keeps the edge of an odd map, as TF's SAME padding does."""
    return a if factor == 1 else F.max_pool2d(a, factor, factor, ceil_mode=True)


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
    import timm

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


def create_backbone(cfg: dict, layers: Sequence[str], in_chans: int,
                    downsample: dict[str, int] | None = None) -> Backbone:
    """The timm backbone of a variant's ``backbone`` entry (name, pretrained, kwargs), returning ``layers``."""
    return Backbone(cfg["name"], layers, in_chans, cfg.get("pretrained", False),
                    cfg.get("allow_random_init", False), downsample, **cfg.get("kwargs", {}))


class PreLogits(nn.Module):
    """A whole timm classifier but its last linear layer, as a 1 x 1 map named ``pre_logits``.

    For VGG-16 that keeps fc6 and fc7 (timm's ``pre_logits`` ConvMlp), as the authors' flat
    ``vgg_16`` does; for a ResNet it is the globally pooled last stage.
    """

    def __init__(self, name: str, in_chans: int = 3, pretrained: bool = False, allow_random_init: bool = False,
                 **kwargs):
        super().__init__()
        self.body = _create_timm(name, pretrained, allow_random_init, num_classes=0, in_chans=in_chans, **kwargs)
        self.layers = ["pre_logits"]
        self.channels = {"pre_logits": int(getattr(self.body, "head_hidden_size", None) or self.body.num_features)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pre_logits": self.body(x)[:, :, None, None]}


def create_pre_logits(cfg: dict, in_chans: int) -> PreLogits:
    """The timm classifier of a variant's ``backbone`` entry without its last layer."""
    return PreLogits(cfg["name"], in_chans, cfg.get("pretrained", False), cfg.get("allow_random_init", False),
                     **cfg.get("kwargs", {}))
