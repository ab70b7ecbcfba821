"""A ResNet for small images (28-64 px), built here: timm's ResNets all start with an ImageNet stem.

timm's stem (a stride-2 7x7 convolution, then max pooling) turns a 28-px Fashion-MNIST image into
7x7 maps before the first block, and its quarter-width ResNet-18 leaves layer4 at 1x1. This
network keeps the image: a 3x3 stem at full resolution, then four stages of basic blocks
(``layer1``..``layer4``, the names timm uses, so ``level_layers`` read the same), each halving the
map. At 28 px, layer1..4 are 14, 7, 4 and 2 px wide. On a 2-core CPU it also trains faster per
accuracy point than the timm net (benchmarks/speed.py), and importing it costs nothing beyond torch
(timm imports torchvision, seconds per process).

Select it with ``backbone: {source: dhnn, name: small_resnet, kwargs: {widths: [...], depths: [...]}}``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import feature_shapes


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (a strided 1x1 convolution when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)), inplace=True)))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)), inplace=True)


class SmallResNet(nn.Module):
    """Stem (3x3 conv at full resolution) and stages ``layer1``..``layerN``, each halving the map.

    ``forward`` returns the feature maps of ``layers`` as a dict, like dhnn.models.backbone.Backbone.
    """

    def __init__(self, layers: Sequence[str], in_chans: int = 1, widths: Sequence[int] = (16, 32, 64, 128),
                 depths: Sequence[int] = (1, 1, 1, 1), stem: int | None = None):
        super().__init__()
        if len(widths) != len(depths) or not widths or min([*widths, *depths]) < 1:
            raise ValueError(f"small_resnet: widths {list(widths)} and depths {list(depths)} must be positive "
                             f"and of the same length")
        names = [f"layer{i + 1}" for i in range(len(widths))]
        unknown = [layer for layer in layers if layer not in names]
        if unknown:
            raise ValueError(f"backbone 'small_resnet' has no feature layers {unknown}; it has {names}")
        stem = stem or widths[0]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU(inplace=True))
        stages, cin = [], stem
        for width, depth in zip(widths, depths):
            stages.append(nn.Sequential(BasicBlock(cin, width, 2), *[BasicBlock(width, width, 1) for _ in range(depth - 1)]))
            cin = width
        last = max(names.index(layer) for layer in layers)
        self.stages = nn.ModuleDict(zip(names[:last + 1], stages[:last + 1]))  # later stages would never train
        self.layers = list(layers)
        self.channels = {layer: widths[names.index(layer)] for layer in layers}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x, feats = self.stem(x), {}
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self.channels:
                feats[name] = x
        return {layer: feats[layer] for layer in self.layers}

    def feature_shapes(self, in_chans: int, image_size: int) -> dict[str, tuple[int, int, int]]:
        """(C, H, W) of each returned feature map for a square input of ``image_size``."""
        return feature_shapes(self, in_chans, image_size)


def create_small_resnet(cfg: dict, layers: Sequence[str], in_chans: int) -> SmallResNet:
    """The small ResNet of a variant's ``backbone`` entry (``kwargs``: widths, depths, stem)."""
    if cfg.get("pretrained"):
        raise ValueError("backbone 'small_resnet' (source dhnn) has no pretrained weights; set pretrained: false")
    return SmallResNet(layers, in_chans, **cfg.get("kwargs", {}))
