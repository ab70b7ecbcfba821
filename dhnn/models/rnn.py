"""CNN-RNN (the paper's DHNN): per-level inputs u_t from converted feature maps, read by an RNN.

u_t = 1/|S_t| sum_{s in S_t} g(a_s), with g from dhnn.models.conversions; a stacked bidirectional
LSTM (or GRU) reads u_1..u_T; the residual arc gives o_t = u_t + z(h_t); a shared output layer
scores every node and level t keeps the logits of its own nodes.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..decoding import beam_search_indices
from ..taxonomy import IGNORE_INDEX, Taxonomy
from .backbone import Backbone
from .conversions import create_conversion


class _GradInLayout(torch.autograd.Function):
    """The identity, whose gradient comes back in the memory format of its input.

    Average pooling returns its gradient in NCHW even for a channels-last map; added to the
    channels-last gradient of the next CNN block, it sends the whole backward through the CNN into
    mixed-layout kernels (ReLU's backward three times slower: benchmarks/speed.py --profile).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:
        ctx.channels_last = a.dim() == 4 and not a.is_contiguous() and a.is_contiguous(memory_format=torch.channels_last)
        return a.view_as(a)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last) if ctx.channels_last else grad


class LevelInputs(nn.Module):
    """u_t = mean over s in S_t of g_s(a_s), stacked to [B, T, p].

    Conversions with weights map every layer to the same p. Per-channel pooling (no weights) gives
    C_s*h*w, which differs between layers: the shorter vectors are padded with zeros to the longest,
    so no channel is mixed with another and the RNN's input weights simply see zeros there.
    """

    def __init__(self, level_layers: Sequence[Sequence[str]], shapes: dict[str, tuple[int, int, int]], conversion: dict):
        super().__init__()
        self.level_layers = [list(s) for s in level_layers]
        used = sorted({layer for s in self.level_layers for layer in s})
        cfg = dict(conversion)
        kind = cfg.pop("kind")
        self.convert = nn.ModuleDict({layer: create_conversion(kind, shapes[layer], **cfg) for layer in used})
        sizes = {m.out_features for m in self.convert.values()}
        if len(sizes) != 1 and not (kind == "pool" and len(cfg["grid"]) == 2):
            raise ValueError(f"conversions give different sizes {sizes}; every layer must map to the same p")
        self.out_features = max(sizes)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        p = self.out_features
        converted = {layer: F.pad(g(_GradInLayout.apply(feats[layer])), (0, p - g.out_features))
                     for layer, g in self.convert.items()}
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

    def loss(self, logits: torch.Tensor, paths: torch.Tensor, level_weights: Sequence[float],
             label_smoothing: float = 0.0) -> torch.Tensor:
        """sum_t w_t * CE(y_t, softmax(o_t)); levels a path does not reach are ignored.

        ``label_smoothing`` eps mixes each level's one-hot target with the uniform distribution over
        that level's nodes, as torch's cross_entropy does over the classes.

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
            nll = F.nll_loss(lp, y, ignore_index=IGNORE_INDEX, reduction="sum")
            if label_smoothing:
                uniform = -(lp.mean(-1) * (y != IGNORE_INDEX)).sum()
                nll = (1 - label_smoothing) * nll + label_smoothing * uniform
            total = total + w * nll / n
        return total

    @torch.no_grad()
    def top_paths(self, logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best paths by tree-constrained beam search of width k: (indices [B, k, T], scores [B, k])."""
        if self.multilabel:
            raise ValueError("a multi-label model predicts node scores (node_scores), not single paths")
        probs = [lp.exp() for lp in self.level_log_probs(logits)]
        return beam_search_indices(probs, self.taxonomy, k)

    @torch.no_grad()
    def argmax_consistent(self, logits: torch.Tensor) -> torch.Tensor:
        """Whether each level's most probable node is a child of the level above's [B], without the beam."""
        best = [lp.argmax(-1) for lp in self.level_log_probs(logits)]
        ok = torch.ones_like(best[0], dtype=torch.bool)
        for t in range(1, len(best)):
            ok &= self.taxonomy.parent_index(t).to(best[t].device)[best[t]] == best[t - 1]
        return ok

    @torch.no_grad()
    def predict(self, logits: torch.Tensor, beam_width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Best path per sample by tree-constrained beam search: (indices [B, T], scores [B])."""
        indices, scores = self.top_paths(logits, beam_width)
        return indices[:, 0], scores[:, 0]


