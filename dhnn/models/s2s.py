"""CNN-S2S, the paper's general tree model: label paths of any length, ended by an END token.

The backbone and conversions are DHNN's: u_1..u_T, one input per level (T = taxonomy depth). A
bidirectional LSTM encodes them; an LSTM decoder of twice the hidden size, started from the
concatenated final forward/backward encoder states, emits T + 1 tokens over V + {END}: the path's
nodes, then END. Decoding is a beam search constrained to the tree, so every answer is a root path.

The paper's "-L" models (e.g. Res-S2S-Pool-L) need no code: the config sets a larger S2S, encoder
input p = 2048 and hidden size 1024 instead of p = 256 and hidden size 512.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..taxonomy import IGNORE_INDEX, Taxonomy
from .backbone import Backbone
from .rnn import LevelInputs

FEEDS = ("teacher", "softmax")
END_AFTER = ("leaves", "any")


@dataclass
class S2SOutputs:
    """What one forward pass hands to ``loss`` and ``predict``."""

    logits: torch.Tensor  # [B, T+1, |V|+1], column |V| is END
    state: tuple[torch.Tensor, torch.Tensor]  # decoder's initial (h, c), each [J, B, 2H]


def _init_lstm(lstm: nn.LSTM) -> None:
    """Orthogonal weights (the authors' choice) and a forget-gate bias of 1."""
    hidden = lstm.hidden_size
    for name, w in lstm.named_parameters():
        if name.startswith("weight"):
            nn.init.orthogonal_(w)
        else:
            nn.init.zeros_(w)
            w.data[hidden:2 * hidden] = 1.0


class CNNS2S(nn.Module):
    """Backbone -> per-level inputs -> biLSTM encoder -> LSTM decoder over the nodes plus END.

    ``feed`` picks the decoder input after step 0: "teacher" embeds the previous true node during
    training (the previous chosen node at inference); "softmax" is the authors' scheme, a linear map
    of the previous step's softmax, the same in training and inference. ``end_after`` says where a
    decoded path may stop: "leaves" only, or "any" node (for data labelled above the leaves).
    """

    def __init__(self, taxonomy: Taxonomy, backbone: Backbone, level_layers: Sequence[Sequence[str]],
                 conversion: dict, in_chans: int, image_size: int, hidden_size: int = 512, num_layers: int = 1,
                 feed: str = "softmax", end_after: str = "leaves", embed_size: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        if len(level_layers) != taxonomy.num_levels:
            raise ValueError(f"level_layers has {len(level_layers)} entries; the taxonomy has {taxonomy.num_levels} levels")
        if feed not in FEEDS:
            raise ValueError(f"s2s feed must be one of {FEEDS}, got {feed!r}")
        if end_after not in END_AFTER:
            raise ValueError(f"s2s end_after must be one of {END_AFTER}, got {end_after!r}")
        if hidden_size < 1 or num_layers < 1:
            raise ValueError(f"s2s hidden_size and num_layers must be >= 1, got {hidden_size} and {num_layers}")
        self.taxonomy, self.backbone, self.feed, self.end_after = taxonomy, backbone, feed, end_after
        self.num_levels = taxonomy.num_levels
        self.end = len(taxonomy)  # END's token index; nodes keep their ``taxonomy.nodes`` index
        self.inputs = LevelInputs(level_layers, backbone.feature_shapes(in_chans, image_size), conversion)
        p = self.inputs.out_features
        embed_size = embed_size or p
        dropout = dropout if num_layers > 1 else 0.0
        self.encoder = nn.LSTM(p, hidden_size, num_layers, batch_first=True, bidirectional=True, dropout=dropout)
        self.decoder = nn.LSTM(embed_size, 2 * hidden_size, num_layers, batch_first=True, dropout=dropout)
        _init_lstm(self.encoder)
        _init_lstm(self.decoder)
        self.out = nn.Linear(2 * hidden_size, self.end + 1)
        self.start = nn.Parameter(torch.randn(embed_size) * 0.02)
        # only the input map in use exists, so every parameter takes part in training
        if feed == "teacher":
            self.embed = nn.Embedding(self.end + 1, embed_size)
        else:
            self.feed_proj = nn.Linear(self.end + 1, embed_size)
        self._build_tables(taxonomy)

    def _build_tables(self, taxonomy: Taxonomy) -> None:
        """Buffers for targets and decoding: level offsets, token -> level index, allowed transitions."""
        nodes = taxonomy.nodes
        node_id = {n: i for i, n in enumerate(nodes)}
        offsets = [0]
        for size in taxonomy.level_sizes[:-1]:
            offsets.append(offsets[-1] + size)
        self.register_buffer("level_offsets", torch.tensor(offsets), persistent=False)
        level_index = torch.tensor([taxonomy.index(n) for n in nodes] + [IGNORE_INDEX])
        self.register_buffer("level_index", level_index, persistent=False)
        # allowed[prev, next]: rows are the tokens plus START (row |V|+1); a finished path may only repeat END
        allowed = torch.zeros(self.end + 2, self.end + 1, dtype=torch.bool)
        allowed[self.end + 1, [node_id[n] for n in taxonomy.levels[0]]] = True
        for n in nodes:
            children = taxonomy.children(n)
            allowed[node_id[n], [node_id[c] for c in children]] = True
            if not children or self.end_after == "any":
                allowed[node_id[n], self.end] = True
        allowed[self.end, self.end] = True
        self.register_buffer("allowed", allowed, persistent=False)

    # -- the network ---------------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's initial (h, c), each [J, B, 2H]: final forward and backward encoder states side by side."""
        u = self.inputs(self.backbone(images))
        _, (h, c) = self.encoder(u)
        layers, batch = self.encoder.num_layers, u.shape[0]

        def join(s: torch.Tensor) -> torch.Tensor:
            s = s.view(layers, 2, batch, -1)  # PyTorch orders h_n as (layer, direction)
            return torch.cat([s[:, 0], s[:, 1]], -1).contiguous()

        return join(h), join(c)

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One decoder step: input [N, E] and state -> logits [N, |V|+1] and the new state."""
        out, state = self.decoder(x.unsqueeze(1), state)
        return self.out(out.squeeze(1)), state

    def next_input(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Decoder input [N, E] after a step that gave ``logits`` [N, |V|+1] and chose ``tokens`` [N]."""
        if self.feed == "teacher":
            return self.embed(tokens)
        return self.feed_proj(logits.softmax(-1))

    def step_targets(self, paths: torch.Tensor) -> torch.Tensor:
        """Token targets [B, T+1] for per-level paths [B, T]: the path's nodes, END, then IGNORE_INDEX."""
        if paths.dim() != 2 or paths.shape[1] != self.num_levels:
            raise ValueError(f"expected paths of shape [B, {self.num_levels}], got {list(paths.shape)}")
        valid = paths != IGNORE_INDEX
        tokens = torch.where(valid, paths + self.level_offsets, IGNORE_INDEX)
        targets = torch.cat([tokens, tokens.new_full((len(paths), 1), IGNORE_INDEX)], 1)
        return targets.scatter(1, valid.sum(1, keepdim=True), self.end)

    def forward(self, images: torch.Tensor, paths: torch.Tensor | None = None) -> S2SOutputs:
        """Logits for all T + 1 steps; with feed="teacher" and ``paths`` given, teacher-forced, else free-running."""
        state = self.encode(images)
        batch = images.shape[0]
        start = self.start.expand(batch, -1)
        if self.feed == "teacher" and paths is not None:
            # all inputs are known, so the decoder runs over the whole sequence at once
            prev = self.step_targets(paths)[:, :-1]
            prev = torch.where(prev == IGNORE_INDEX, self.end, prev)
            x = torch.cat([start[:, None], self.embed(prev)], 1)
            out, _ = self.decoder(x, state)
            return S2SOutputs(self.out(out), state)
        # free-running: teacher feed without targets uses the argmax, as at inference with beam 1
        steps, x, s = [], start, state
        for t in range(self.num_levels + 1):
            logits, s = self.step(x, s)
            steps.append(logits)
            if t < self.num_levels:
                x = self.next_input(logits, logits.argmax(-1))
        return S2SOutputs(torch.stack(steps, 1), state)

    def loss(self, outputs: S2SOutputs, paths: torch.Tensor, level_weights: Sequence[float]) -> torch.Tensor:
        """sum_s w_s * CE over the T + 1 steps, each a mean over the samples with a target at that step.

        Step s < T takes the weight of level s + 1 whether its target is a node or END; the last
        step (only ever END) takes the last level's weight. Steps after END are ignored.
        """
        if len(level_weights) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} level weights, got {len(level_weights)}")
        targets = self.step_targets(paths)
        logp = outputs.logits.float().log_softmax(-1)
        total = logp.new_zeros(())
        for s, w in enumerate([*level_weights, level_weights[-1]]):
            y = targets[:, s]
            n = (y != IGNORE_INDEX).sum().clamp(min=1)  # a step nobody reaches adds 0, not NaN
            total = total + w * F.nll_loss(logp[:, s], y, ignore_index=IGNORE_INDEX, reduction="sum") / n
        return total

    # -- decoding -----------------------------------------------------------------------------

    @torch.no_grad()
    def decode_beams(self, outputs: S2SOutputs, beam_width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k tree paths by beam search: per-level indices [B, K, T] (IGNORE_INDEX-padded) and probabilities [B, K].

        A path's probability is the product of its steps' probabilities, END's included. Each beam
        keeps its own decoder state, since its next input depends on its own history.
        """
        if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
            raise ValueError(f"beam_width must be an integer >= 1, got {beam_width!r}")
        k, vocab, end = beam_width, self.end + 1, self.end
        dtype = self.out.weight.dtype  # outputs may come from bf16 autocast; decode in the weights' precision
        # [J, B*K, 2H]: the K beams of a sample sit next to each other
        h, c = (s.to(dtype).repeat_interleave(k, dim=1) for s in outputs.state)
        batch, device = h.shape[1] // k, h.device
        neg_inf = float("-inf")
        # log(0) is floored so that -inf only marks empty beams: T+1 floors still sum to a finite number
        floor = torch.finfo(torch.float32).min / (self.num_levels + 2)
        score = torch.full((batch, k), neg_inf, device=device)
        score[:, 0] = 0.0  # one live beam at the start, or the K copies would fill the beam with duplicates
        last = torch.full((batch, k), end + 1, device=device, dtype=torch.long)  # START
        offsets = (torch.arange(batch, device=device) * k)[:, None]
        x = self.start.to(dtype).expand(batch * k, -1)
        tokens, backs = [], []
        for t in range(self.num_levels + 1):
            logits, (h, c) = self.step(x, (h, c))
            logp = logits.float().log_softmax(-1).clamp_min(floor).view(batch, k, vocab)
            logp = logp.masked_fill((last == end)[..., None], 0.0)  # a finished path carries its score
            cand = (score[..., None] + logp).masked_fill(~self.allowed[last], neg_inf)
            score, pick = cand.view(batch, k * vocab).topk(k, dim=1)
            back, token = pick // vocab, pick % vocab
            token = torch.where(score > neg_inf, token, end)  # an empty beam stays empty
            tokens.append(token)
            backs.append(back)
            rows = (offsets + back).flatten()
            h, c, last = h[:, rows], c[:, rows], token
            if t < self.num_levels:
                x = self.next_input(logits[rows], token.flatten())
        seq = torch.empty((batch, k, self.num_levels), device=device, dtype=torch.long)
        ptr = torch.arange(k, device=device).expand(batch, k)
        for t in reversed(range(self.num_levels + 1)):
            if t < self.num_levels:
                seq[:, :, t] = tokens[t].gather(1, ptr)
            ptr = backs[t].gather(1, ptr)
        indices = self.level_index[seq]  # END -> IGNORE_INDEX
        found = score > neg_inf
        indices[~found] = IGNORE_INDEX
        return indices, torch.where(found, score.exp(), 0.0)

    @torch.no_grad()
    def top_paths(self, outputs: S2SOutputs, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best tree paths by beam search of width k: (indices [B, k, T], probabilities [B, k])."""
        return self.decode_beams(outputs, k)

    @torch.no_grad()
    def predict(self, outputs: S2SOutputs, beam_width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Best tree path per sample: (indices [B, T], scores [B])."""
        indices, scores = self.decode_beams(outputs, beam_width)
        return indices[:, 0], scores[:, 0]


def s2s_settings(cfg: dict) -> dict:
    """The CNNS2S keyword arguments of a variant's ``s2s`` entry, checked."""
    s2s = {k: v for k, v in cfg.get("s2s", {}).items() if v is not None}
    known = {"hidden_size", "num_layers", "feed", "end_after", "embed_size", "dropout"}
    unknown = sorted(set(s2s) - known)
    if unknown:
        raise ValueError(f"unknown s2s settings {unknown}; expected some of {sorted(known)}")
    return s2s
