"""Models: a timm backbone, conversions of its feature maps into one RNN input per level, and heads.

DHNN (the paper's CNN-RNN): u_t = 1/|S_t| sum_{s in S_t} g(a_s), with g from conversions.py; a
stacked bidirectional LSTM (or GRU) reads u_1..u_T; the residual arc gives o_t = u_t + z(h_t); a
shared output layer scores every node and level t keeps the logits of its own nodes. The flat
baseline is the same backbone with one softmax over the leaves.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from .conversions import PoolConversion, create_conversion  # noqa: F401  PoolConversion is re-exported
from .decoding import beam_search_indices
from .metrics import leaf_to_paths
from .taxonomy import IGNORE_INDEX, Taxonomy


class Backbone(nn.Module):
    """A timm CNN that returns the feature maps of the named layers as a dict."""

    def __init__(self, name: str, layers: Sequence[str], in_chans: int = 3, pretrained: bool = False, **kwargs):
        super().__init__()
        probe = timm.create_model(name, pretrained=False, features_only=True, in_chans=in_chans, **kwargs)
        names = probe.feature_info.module_name()
        unknown = [layer for layer in layers if layer not in names]
        if unknown:
            raise ValueError(f"backbone {name!r} has no feature layers {unknown}; it has {names}")
        out_indices = [names.index(layer) for layer in layers]
        self.layers = list(layers)
        self.body = _create_timm(name, pretrained, features_only=True, out_indices=out_indices, in_chans=in_chans, **kwargs)
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


def _create_timm(name: str, pretrained: bool, **kwargs) -> nn.Module:
    """timm.create_model, falling back to random weights when pretrained ones can't be fetched."""
    if pretrained:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # offline, or no weights for this variant: train from scratch
            warnings.warn(f"no pretrained weights for {name!r} ({type(err).__name__}: {err}); training from scratch")
    return timm.create_model(name, pretrained=False, **kwargs)

class LevelInputs(nn.Module):
    """u_t = mean over s in S_t of g_s(a_s), stacked to [B, T, p]."""

    def __init__(self, level_layers: Sequence[Sequence[str]], shapes: dict[str, tuple[int, int, int]], conversion: dict):
        super().__init__()
        self.level_layers = [list(s) for s in level_layers]
        used = sorted({layer for s in self.level_layers for layer in s})
        cfg = dict(conversion)
        kind = cfg.pop("kind")
        self.convert = nn.ModuleDict({layer: create_conversion(kind, shapes[layer], **cfg) for layer in used})
        sizes = {m.out_features for m in self.convert.values()}
        if len(sizes) != 1:
            raise ValueError(f"conversions give different sizes {sizes}; every layer must map to the same p")
        self.out_features = sizes.pop()

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        converted = {layer: g(feats[layer]) for layer, g in self.convert.items()}
        return torch.stack([torch.stack([converted[s] for s in layers]).mean(0) for layers in self.level_layers], 1)


class RNNHead(nn.Module):
    """Stacked (bi)LSTM or GRU over u_1..u_T; o_t = u_t + z(h_t) with the residual arc; logits over all nodes."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool, residual: bool,
                 num_nodes: int, dropout: float = 0.0, cell: str = "lstm"):
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"rnn cell must be 'lstm' or 'gru', got {cell!r}")
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(input_size, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional,
                       dropout=dropout if num_layers > 1 else 0.0)
        rnn_out = hidden_size * (2 if bidirectional else 1)
        self.z = nn.Linear(rnn_out, input_size) if residual else None
        self.out = nn.Linear(input_size if residual else rnn_out, num_nodes)
        for name, w in self.rnn.named_parameters():
            if name.startswith("weight"):
                nn.init.orthogonal_(w)  # input and recurrent weights: the authors' initialisation
            else:
                nn.init.zeros_(w)
        if cell == "lstm":  # forget-gate bias 1 (gates i, f, g, o): remember by default; a GRU has no forget gate
            for name, b in self.rnn.named_parameters():
                if name.startswith("bias_ih"):  # bias_hh adds to the same gate, so set it in one of the two
                    nn.init.ones_(b[hidden_size:2 * hidden_size])

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(u)
        o = u + self.z(h) if self.z is not None else h
        return self.out(o)  # [B, T, |V|]


class DHNN(nn.Module):
    """CNN-RNN: backbone -> conversion -> RNN head; one distribution over level-t nodes per step t."""

    def __init__(self, taxonomy: Taxonomy, backbone: Backbone, level_layers: Sequence[Sequence[str]], conversion: dict,
                 rnn: dict, in_chans: int, image_size: int, softmax_over: str = "level", multilabel: bool = False):
        super().__init__()
        if len(level_layers) != taxonomy.num_levels:
            raise ValueError(f"level_layers has {len(level_layers)} entries; the taxonomy has {taxonomy.num_levels} levels")
        if softmax_over not in ("level", "all"):
            raise ValueError(f"softmax_over must be 'level' or 'all', got {softmax_over!r}")
        self.taxonomy, self.backbone, self.softmax_over, self.multilabel = taxonomy, backbone, softmax_over, multilabel
        self.inputs = LevelInputs(level_layers, backbone.feature_shapes(in_chans, image_size), conversion)
        self.head = RNNHead(self.inputs.out_features, num_nodes=len(taxonomy), **rnn)
        sizes = [len(level) for level in taxonomy.levels]
        self.level_slices = [slice(sum(sizes[:t]), sum(sizes[:t + 1])) for t in range(len(sizes))]

    def forward(self, x: torch.Tensor, paths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.inputs(self.backbone(x)))

    def level_log_probs(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """log p over the nodes of each level; with softmax_over='all', the slide's softmax over V, sliced."""
        if self.softmax_over == "all":
            logp = logits.float().log_softmax(-1)
            return [logp[:, t, s] for t, s in enumerate(self.level_slices)]
        return [logits[:, t, s].float().log_softmax(-1) for t, s in enumerate(self.level_slices)]

    def node_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Multi-label: sigmoid score of every node [B, |V|], level t's from step t."""
        return torch.cat([logits[:, t, s].float().sigmoid() for t, s in enumerate(self.level_slices)], 1)

    def loss(self, logits: torch.Tensor, paths: torch.Tensor, level_weights: Sequence[float]) -> torch.Tensor:
        """sum_t w_t * CE(y_t, softmax(o_t)); levels a path does not reach are ignored.

        Multi-label (``paths`` a multi-hot [B, |V|]): sum_t w_t * sigmoid cross-entropy over level t's nodes.
        """
        if self.multilabel:
            return sum(w * F.binary_cross_entropy_with_logits(logits[:, t, s].float(), paths[:, s].float())
                       for t, (w, s) in enumerate(zip(level_weights, self.level_slices)))
        total = logits.new_zeros((), dtype=torch.float32)
        for t, (w, lp) in enumerate(zip(level_weights, self.level_log_probs(logits))):
            y = paths[:, t]
            # a sum over the samples that reach level t: a batch where none does adds 0, not NaN
            n = (y != IGNORE_INDEX).sum().clamp(min=1)
            total = total + w * F.nll_loss(lp, y, ignore_index=IGNORE_INDEX, reduction="sum") / n
        return total

    @torch.no_grad()
    def predict(self, logits: torch.Tensor, beam_width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Best path per sample by tree-constrained beam search: (indices [B, T], scores [B])."""
        if self.multilabel:
            raise ValueError("a multi-label model predicts node scores (node_scores), not single paths")
        probs = [lp.exp() for lp in self.level_log_probs(logits)]
        indices, scores = beam_search_indices(probs, self.taxonomy, beam_width)
        return indices[:, 0], scores[:, 0]


class FlatClassifier(nn.Module):
    """The flat baseline: the backbone's last feature map, global average pooled, one softmax over the leaves."""

    def __init__(self, taxonomy: Taxonomy, backbone: Backbone, dropout: float = 0.0, multilabel: bool = False):
        super().__init__()
        self.taxonomy, self.backbone, self.multilabel = taxonomy, backbone, multilabel
        self.last = backbone.layers[-1]
        self.drop = nn.Dropout(dropout)
        # multi-label: one sigmoid per node (the flat multi-label CNN of the paper's Open Images table)
        self.fc = nn.Linear(backbone.channels[self.last], len(taxonomy) if multilabel else len(taxonomy.leaves))
        sizes = [len(level) for level in taxonomy.levels]
        self.register_buffer("level_offsets", torch.tensor([sum(sizes[:t]) for t in range(len(sizes))]), persistent=False)
        leaf_of_node = torch.full((len(taxonomy),), -1, dtype=torch.long)
        for i, leaf in enumerate(taxonomy.leaves):
            leaf_of_node[taxonomy.nodes.index(leaf)] = i
        self.register_buffer("leaf_of_node", leaf_of_node, persistent=False)

    def forward(self, x: torch.Tensor, paths: torch.Tensor | None = None) -> torch.Tensor:
        a = self.backbone(x)[self.last]
        return self.fc(self.drop(a.mean((2, 3))))

    def leaf_targets(self, paths: torch.Tensor) -> torch.Tensor:
        """The leaf index of each target path [B, T] (its deepest node)."""
        last = (paths != IGNORE_INDEX).sum(1) - 1
        node = self.level_offsets[last] + paths.gather(1, last[:, None]).squeeze(1)
        leaf = self.leaf_of_node[node]
        if (leaf < 0).any():
            raise ValueError("a target path ends at an internal node; the flat baseline needs paths to leaves")
        return leaf

    def node_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Multi-label: sigmoid score of every node [B, |V|]."""
        return logits.float().sigmoid()

    def loss(self, logits: torch.Tensor, paths: torch.Tensor, level_weights: Sequence[float] = ()) -> torch.Tensor:
        """Cross-entropy over the leaves (multi-label: sigmoid cross-entropy over the nodes)."""
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits.float(), paths.float())
        return F.cross_entropy(logits.float(), self.leaf_targets(paths))

    @torch.no_grad()
    def predict(self, logits: torch.Tensor, beam_width: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The most probable leaf, mapped to its path: (indices [B, T], scores [B])."""
        p, leaf = logits.float().softmax(-1).max(-1)
        return leaf_to_paths(leaf, self.taxonomy), p


def create_backbone(cfg: dict, layers: Sequence[str], in_chans: int) -> Backbone:
    """The timm backbone of a variant's ``backbone`` entry (name, pretrained, kwargs), returning ``layers``."""
    bb = dict(cfg)
    return Backbone(bb.pop("name"), layers, in_chans, bb.pop("pretrained", False), **bb.pop("kwargs", {}))


def create_model(cfg: dict, taxonomy: Taxonomy, in_chans: int, image_size: int, multilabel: bool = False) -> nn.Module:
    """Build a model from one ``variants`` entry of params.yaml: kind flat, rnn (CNN-RNN) or s2s (CNN-S2S).

    ``multilabel`` (Open Images) trains sigmoid cross-entropy over node sets instead of one path per image.
    """
    kind = cfg["kind"]
    if kind == "flat":
        backbone = create_backbone(cfg["backbone"], [cfg.get("layer", "layer4")], in_chans)
        return FlatClassifier(taxonomy, backbone, cfg.get("dropout", 0.0), multilabel)
    if kind in ("rnn", "s2s"):
        layers = sorted({layer for s in cfg["level_layers"] for layer in s})
        backbone = create_backbone(cfg["backbone"], layers, in_chans)
        if kind == "s2s":
            from .s2s import CNNS2S, s2s_settings  # s2s builds on this module

            if multilabel:
                raise ValueError("multi-label data needs kind 'flat' or 'rnn'; multi-label CNN-S2S is not implemented")
            return CNNS2S(taxonomy, backbone, cfg["level_layers"], cfg["conversion"], in_chans, image_size,
                          **s2s_settings(cfg))
        return DHNN(taxonomy, backbone, cfg["level_layers"], cfg["conversion"], cfg["rnn"], in_chans, image_size,
                    cfg.get("softmax_over", "level"), multilabel)
    raise ValueError(f"unknown model kind {kind!r}; expected 'flat', 'rnn' or 's2s'")


def conversion_summary(model: nn.Module, in_chans: int, image_size: int) -> dict[str, int]:
    """Trainable parameters and per-sample activation bytes of a model's conversions g (zero for Flat)."""
    from .conversions import conversion_cost

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
