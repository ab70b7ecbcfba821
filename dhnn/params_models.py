"""The schema of a ``variants`` entry of params.yaml: the backbone, the conversion, the CNN-RNN and
CNN-S2S heads, the alternating schedule, and the three kinds of variant (dhnn.params uses it)."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from .params_base import Strict



class BackboneParams(Strict):
    name: str
    source: Literal["timm", "dhnn"] = "timm"  # dhnn: small_resnet (dhnn.models.small_resnet), for 28-64 px images
    pretrained: bool = False
    allow_random_init: bool = False  # with pretrained: train from scratch when the weights can't be had
    kwargs: dict[str, Any] = {}


class PoolConv(Strict):
    kind: Literal["pool"]
    grid: Annotated[list[PositiveInt], Field(min_length=2, max_length=3)]  # [H, W] per channel; [C, H, W] mixes channels
    mode: Literal["max", "avg"] = "max"


class PoolLinearConv(Strict):
    kind: Literal["pool_linear"]
    p: PositiveInt
    repeats: NonNegativeInt | None = None
    mode: Literal["max", "avg"] = "max"


class LinearConv(Strict):
    kind: Literal["linear"]
    out: Annotated[list[PositiveInt], Field(min_length=3, max_length=3)]  # [m, n, v]


class DenseConv(Strict):
    kind: Literal["dense"]
    p: PositiveInt


class ConvConv(Strict):
    kind: Literal["conv"]
    channels: PositiveInt
    kernel: PositiveInt | list[PositiveInt] | None = None


Conversion = Annotated[Union[PoolConv, PoolLinearConv, LinearConv, DenseConv, ConvConv], Field(discriminator="kind")]


class RNNParams(Strict):
    cell: Literal["lstm", "gru"] = "lstm"
    hidden_size: PositiveInt = 128
    num_layers: PositiveInt = 1
    bidirectional: bool = True
    residual: bool = True
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


class S2SParams(Strict):
    hidden_size: PositiveInt = 512
    num_layers: PositiveInt = 1
    feed: Literal["softmax", "teacher"] = "softmax"
    end_after: Literal["auto", "leaves", "any"] = "auto"  # auto: "any" when labels end above the leaves, else "leaves"
    embed_size: PositiveInt | None = None
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    level_inputs: bool = False  # beyond the paper: decoder step t also reads u_t (default off: the paper's decoder)
    residual: bool = False      # beyond the paper: CNN-RNN's residual arc on the decoder, logits of u_t + z(h_t)


class AltParams(Strict):
    alt1: NonNegativeInt  # joint training once epoch > alt1 (the authors' test)
    alt2: PositiveInt     # until then, the phase toggles every alt2 epochs
    start: Literal["pretrained"] = "pretrained"  # what the frozen CNN starts from: its pretrained weights


class FlatVariant(Strict):
    kind: Literal["flat"]
    backbone: BackboneParams
    layer: str = "layer4"
    pre_logits: bool = False  # the timm classifier but its last layer (VGG-16's fc6/fc7) instead of `layer`
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    collapse_chains: bool = False
    epochs: PositiveInt | None = None  # this variant's train.epochs (the paper: 15 flat, 20 hierarchical)


class _Hierarchical(Strict):
    backbone: BackboneParams
    level_layers: Annotated[list[Annotated[list[str], Field(min_length=1)]], Field(min_length=1)]
    downsample: dict[str, PositiveInt] = {}  # layer -> k: k x k max pooling, stride k, before its conversion
    conversion: Conversion
    alt: AltParams | None = None
    collapse_chains: bool = False
    epochs: PositiveInt | None = None  # this variant's train.epochs

    @model_validator(mode="after")
    def _alt_from_trained_cnn(self) -> "_Hierarchical":
        if self.alt is not None and not self.backbone.pretrained:
            raise ValueError("alt: the alternating schedule freezes the CNN, which only means something when the "
                             "CNN starts from pretrained weights (backbone.pretrained: true); a randomly "
                             "initialised CNN would stay random")
        return self


class RNNVariant(_Hierarchical):
    kind: Literal["rnn"]
    rnn: RNNParams = RNNParams()
    softmax_over: Literal["level", "all"] = "level"


class S2SVariant(_Hierarchical):
    kind: Literal["s2s"]
    s2s: S2SParams = S2SParams()


Variant = Annotated[Union[FlatVariant, RNNVariant, S2SVariant], Field(discriminator="kind")]
