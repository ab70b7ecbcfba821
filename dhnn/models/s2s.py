"""CNN-S2S, the paper's general tree model: label paths of any length, ended by an END token.

The backbone and conversions are DHNN's: u_1..u_T, one input per level (T = taxonomy depth). A
bidirectional LSTM encodes them; an LSTM decoder of twice the hidden size, started from the
concatenated final forward/backward encoder states, emits T + 1 tokens over V + {END}: the path's
nodes, then END. Decoding is a beam search constrained to the tree, so every answer is a root path.

Multi-label data (node sets, as in Open Images): the authors' sigmoid cross-entropy. Step t's
targets are the set's nodes at level t + 1, plus END where one of the set's paths stops at level t
(a node on with no child on); each step is scored over its own tokens, level t + 1's nodes and END.
``node_scores`` gives each node the sigmoid of its own level's step, so node and path F1 (a node
counts only when its whole root path passes the threshold) score it as they score CNN-RNN.

The paper's "-L" models (e.g. Res-S2S-Pool-L) need no code: the config sets a larger S2S, encoder
input p = 2048 and hidden size 1024 instead of p = 256 and hidden size 512.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..taxonomy import IGNORE_INDEX, Taxonomy
from .backbone import Backbone
from .rnn import LevelInputs

FEEDS = ("teacher", "softmax")
END_AFTER = ("leaves", "any")  # the params' default "auto" picks one of these from the labels (resolve_end_after)


@dataclass
class S2SOutputs:
    """What one forward pass hands to ``loss`` and ``predict``."""

    logits: torch.Tensor  # [B, T+1, |V|+1], column |V| is END
    state: tuple[torch.Tensor, torch.Tensor]  # decoder's initial (h, c), each [J, B, 2H]
    inputs: torch.Tensor | None = None  # u_1..u_T [B, T, p], kept only with level_inputs or residual (decoding needs them)


def _init_lstm(lstm: nn.LSTM) -> None:
    """Orthogonal weights (the authors' choice) and an effective forget-gate bias of 1, as in RNNHead."""
    hidden = lstm.hidden_size
    for name, w in lstm.named_parameters():
        if name.startswith("weight"):
            nn.init.orthogonal_(w)
        else:
            nn.init.zeros_(w)
            if name.startswith("bias_ih"):  # bias_hh adds to the same gate, so set it in one of the two
                w.data[hidden:2 * hidden] = 1.0


def _stops(on: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """Bool [N, |V|]: nodes on in ``on`` [N, |V|] with no child on; ``parent`` [|V|] is each node's parent id or -1."""
    child_on = torch.zeros(on.shape, dtype=torch.float32, device=on.device)
    has_parent = parent >= 0
    child_on.index_add_(1, parent[has_parent], on[:, has_parent].float())
    return on & (child_on == 0)


def parent_ids(taxonomy: Taxonomy) -> torch.Tensor:
    """Each node's parent as an index into ``taxonomy.nodes`` [|V|], -1 for level 1."""
    node_id = {n: i for i, n in enumerate(taxonomy.nodes)}
    return torch.tensor([node_id.get(taxonomy.parent(n), -1) for n in taxonomy.nodes])


def path_stops(node_sets: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
    """Bool [N, |V|] for ancestor-closed multi-hots [N, |V|]: where a path of each set stops (on, no child on)."""
    return _stops(node_sets > 0.5, parent_ids(taxonomy).to(node_sets.device))


def resolve_end_after(setting: str, taxonomy: Taxonomy, label_ends: Collection[str], where: str) -> str:
    """"leaves" or "any" for an ``end_after`` setting, given the nodes that the data's labels end at.

    "auto" is "any" when some label ends above the leaves, else "leaves" (which never wastes
    probability on stopping early). An explicit "leaves" with such labels raises: the decoder could
    never predict them, and training them would teach it an END it may not take.
    """
    ends = set(label_ends)
    inner = [n for n in taxonomy.nodes if n in ends and taxonomy.children(n)]
    if setting == "auto":
        return "any" if inner else "leaves"
    if setting == "leaves" and inner:
        shown = ", ".join(repr(n) for n in inner[:5]) + (f" and {len(inner) - 5} more" if len(inner) > 5 else "")
        raise ValueError(f"{where}: end_after is 'leaves', but labels of the data end at internal nodes ({shown}), "
                         "paths that a decoder stopping only at leaves can never predict; set end_after to "
                         "'auto' or 'any'")
    if setting not in END_AFTER:
        raise ValueError(f"s2s end_after must be one of {('auto', *END_AFTER)}, got {setting!r}")
    return setting


class CNNS2S(nn.Module):
    """Backbone -> per-level inputs -> biLSTM encoder -> LSTM decoder over the nodes plus END.

    ``feed`` picks the decoder input after step 0: "teacher" embeds the previous true node during
    training (the previous chosen node at inference); "softmax" is the authors' scheme, a linear map
    of the previous step's softmax, the same in training and inference. ``end_after`` says where a
    decoded path may stop: "leaves" only, or "any" node (for data labelled above the leaves).

    ``multilabel``: node-set targets (see the module docstring). "softmax" then feeds a linear map of
    the previous step's sigmoid scores over its own tokens. "teacher" feeds the mean embedding of the
    previous step's true token set in training (one token: exactly the single-label embedding; an
    empty set: zeros) and of the tokens scored >= 0.5 at inference: the evaluation's threshold is
    chosen only after training, and 0.5 is where the sigmoid CE puts a token as likely on as off.
    ``end_after`` plays no part (the END targets are trained, but decoding thresholds nodes).

    ``level_inputs`` (beyond the paper, default off): decoder step t also reads u_{t+1}, level t + 1's
    converted CNN input, beside its feed (zeros at the last step, END alone), as CNN-RNN's step t
    reads u_t. The paper's decoder sees the image only through its initial state. ``residual`` (beyond
    the paper, default off): CNN-RNN's residual arc on the decoder, step t's logits from u_{t+1} + z(h_t).
    """

    def __init__(self, taxonomy: Taxonomy, backbone: Backbone, level_layers: Sequence[Sequence[str]],
                 conversion: dict, in_chans: int, image_size: int, hidden_size: int = 512, num_layers: int = 1,
                 feed: str = "softmax", end_after: str = "leaves", embed_size: int | None = None,
                 dropout: float = 0.0, multilabel: bool = False, level_inputs: bool = False,
                 residual: bool = False):
        super().__init__()
        if len(level_layers) != taxonomy.num_levels:
            raise ValueError(f"level_layers has {len(level_layers)} entries; the taxonomy has {taxonomy.num_levels} levels")
        if feed not in FEEDS:
            raise ValueError(f"s2s feed must be one of {FEEDS}, got {feed!r}")
        if end_after == "auto":
            raise ValueError("s2s end_after 'auto' is resolved from the data's labels before the model is built "
                             "(dhnn.models.registry.resolve_config)")
        if end_after not in END_AFTER:
            raise ValueError(f"s2s end_after must be one of {END_AFTER}, got {end_after!r}")
        if hidden_size < 1 or num_layers < 1:
            raise ValueError(f"s2s hidden_size and num_layers must be >= 1, got {hidden_size} and {num_layers}")
        self.taxonomy, self.backbone, self.feed, self.end_after = taxonomy, backbone, feed, end_after
        self.multilabel, self.level_inputs, self.residual = multilabel, level_inputs, residual
        self.num_levels = taxonomy.num_levels
        self.end = len(taxonomy)  # END's token index; nodes keep their ``taxonomy.nodes`` index
        self.inputs = LevelInputs(level_layers, backbone.feature_shapes(in_chans, image_size), conversion)
        p = self.inputs.out_features
        embed_size = embed_size or p
        dropout = dropout if num_layers > 1 else 0.0
        self.encoder = nn.LSTM(p, hidden_size, num_layers, batch_first=True, bidirectional=True, dropout=dropout)
        self.decoder = nn.LSTM(embed_size + (p if level_inputs else 0), 2 * hidden_size, num_layers, batch_first=True, dropout=dropout)
        _init_lstm(self.encoder)
        _init_lstm(self.decoder)
        self.z = nn.Linear(2 * hidden_size, p) if residual else None  # aligns h_t with u_t, as RNNHead's z
        self.out = nn.Linear(p if residual else 2 * hidden_size, self.end + 1)
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
        # multi-label: each node's step (its level), parents, and the tokens each step is scored over
        node_level = torch.tensor([taxonomy.depth(n) - 1 for n in nodes])
        self.register_buffer("node_level", node_level, persistent=False)
        self.register_buffer("parent", parent_ids(taxonomy), persistent=False)
        step_tokens = torch.zeros(self.num_levels + 1, self.end + 1, dtype=torch.bool)
        step_tokens[node_level, torch.arange(len(nodes))] = True
        step_tokens[:, self.end] = True  # END at every step; the last step has no nodes, so END alone
        self.register_buffer("step_tokens", step_tokens, persistent=False)

    # -- the network ---------------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's initial (h, c), each [J, B, 2H]: final forward and backward encoder states side by side."""
        return self.encode_inputs(self.inputs(self.backbone(images)))

    def encode_inputs(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's initial (h, c) from the per-level inputs u [B, T, p] (see ``encode``)."""
        _, (h, c) = self.encoder(u)
        layers, batch = self.encoder.num_layers, u.shape[0]

        def join(s: torch.Tensor) -> torch.Tensor:
            s = s.view(layers, 2, batch, -1)  # PyTorch orders h_n as (layer, direction)
            return torch.cat([s[:, 0], s[:, 1]], -1).contiguous()

        return join(h), join(c)

    def readout(self, h: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """Logits [..., |V|+1] of decoder outputs h [..., 2H]; with residual, of u + z(h) (u: the step's level input)."""
        return self.out(h) if self.z is None else self.out(u + self.z(h))

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], inputs: torch.Tensor | None = None,
             t: int = 0) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Decoder step ``t``: feed [N, E] and state -> logits [N, |V|+1] and the new state.

        ``inputs`` (u_1..u_T [N, T, p], ``S2SOutputs.inputs``) is needed with level_inputs or
        residual: step t uses u_{t+1}, zeros at the last step (END alone).
        """
        u = None
        if inputs is not None:
            u = inputs[:, t] if t < self.num_levels else inputs.new_zeros(inputs.shape[0], inputs.shape[2])
            u = u.to(x.dtype)
        if self.level_inputs:
            x = torch.cat([x, u], -1)
        out, state = self.decoder(x.unsqueeze(1), state)
        return self.readout(out.squeeze(1), u), state

    def next_input(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Decoder input [N, E] after a step that gave ``logits`` [N, |V|+1] and chose ``tokens`` [N]."""
        if self.feed == "teacher":
            return self.embed(tokens)
        return self.feed_proj(logits.softmax(-1))

    def _embed_sets(self, sets: torch.Tensor) -> torch.Tensor:
        """Mean token embedding [..., E] of multi-hot token sets [..., |V|+1]; zeros for an empty set."""
        return sets @ self.embed.weight / sets.sum(-1, keepdim=True).clamp(min=1)

    def set_input(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """Multi-label: decoder input [N, E] after step ``step`` gave ``logits`` [N, |V|+1] (see the class doc)."""
        scores = logits.float().sigmoid() * self.step_tokens[step]  # tokens the step is not trained on say nothing
        if self.feed == "teacher":
            return self._embed_sets((scores >= 0.5).float())
        return self.feed_proj(scores)

    def set_targets(self, paths: torch.Tensor) -> torch.Tensor:
        """Multi-label: per-step multi-hot targets [B, T+1, |V|+1] for ancestor-closed node sets [B, |V|].

        Step t: the set's nodes at level t + 1, and END when one of its paths stops at level t (a node
        on with no child on); step 0 never has END, step T only END.
        """
        if paths.dim() != 2 or paths.shape[1] != self.end:
            raise ValueError(f"expected multi-hot node sets of shape [B, {self.end}], got {list(paths.shape)}")
        on = paths > 0.5
        ids = torch.arange(self.end, device=paths.device)
        targets = torch.zeros((len(paths), self.num_levels + 1, self.end + 1), device=paths.device)
        targets[:, self.node_level, ids] = on.float()
        stops = _stops(on, self.parent).float()
        ends = torch.zeros((len(paths), self.num_levels + 1), device=paths.device)
        targets[:, :, self.end] = (ends.index_add_(1, self.node_level + 1, stops) > 0).float()
        return targets

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
        u = self.inputs(self.backbone(images))
        state = self.encode_inputs(u)
        kept = u if self.level_inputs or self.residual else None
        batch = images.shape[0]
        start = self.start.expand(batch, -1)
        if self.feed == "teacher" and paths is not None:
            # all inputs are known, so the decoder runs over the whole sequence at once
            if self.multilabel:
                prev = self._embed_sets(self.set_targets(paths)[:, :-1])
            else:
                tokens = self.step_targets(paths)[:, :-1]
                prev = self.embed(torch.where(tokens == IGNORE_INDEX, self.end, tokens))
            x = torch.cat([start[:, None], prev.to(start.dtype)], 1)
            u = F.pad(u, (0, 0, 0, 1)).to(x.dtype)  # no level input at the last step
            if self.level_inputs:
                x = torch.cat([x, u], -1)
            out, _ = self.decoder(x, state)
            return S2SOutputs(self.readout(out, u), state, kept)
        # free-running: teacher feed without targets uses the argmax, as at inference with beam 1
        steps, x, s = [], start, state
        for t in range(self.num_levels + 1):
            logits, s = self.step(x, s, kept, t)
            steps.append(logits)
            if t < self.num_levels:
                x = self.set_input(logits, t) if self.multilabel else self.next_input(logits, logits.argmax(-1))
        return S2SOutputs(torch.stack(steps, 1), state, kept)

    def loss(self, outputs: S2SOutputs, paths: torch.Tensor, level_weights: Sequence[float],
             label_smoothing: float = 0.0) -> torch.Tensor:
        """sum_s w_s * CE over the T + 1 steps, each a mean over the samples with a target at that step.

        Step s < T takes the weight of level s + 1 whether its target is a node or END; the last
        step (only ever END) takes the last level's weight. Steps after END are ignored.
        ``label_smoothing`` eps mixes each step's one-hot target with the uniform distribution over
        the tokens that step can hold (its level's nodes and END).

        Multi-label (``paths`` multi-hot [B, |V|]): sum_s w_s * sigmoid CE of step s, a mean over the
        batch and the step's tokens (set_targets), with the same weights; like CNN-RNN's multi-label
        loss, every image counts at every step, so steps after its paths stop learn "nothing here".
        """
        if len(level_weights) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} level weights, got {len(level_weights)}")
        weights = [*level_weights, level_weights[-1]]
        if self.multilabel:
            ce = F.binary_cross_entropy_with_logits(outputs.logits.float(), self.set_targets(paths), reduction="none")
            per_step = (ce * self.step_tokens).sum((0, 2)) / (self.step_tokens.sum(1) * len(paths))
            return (per_step * per_step.new_tensor(weights)).sum()
        targets = self.step_targets(paths)
        logp = outputs.logits.float().log_softmax(-1)
        total = logp.new_zeros(())
        for s, w in enumerate(weights):
            y = targets[:, s]
            n = (y != IGNORE_INDEX).sum().clamp(min=1)  # a step nobody reaches adds 0, not NaN
            nll = F.nll_loss(logp[:, s], y, ignore_index=IGNORE_INDEX, reduction="sum")
            if label_smoothing:
                mask = self.step_tokens[s]
                uniform = -((logp[:, s] * mask).sum(-1) / mask.sum() * (y != IGNORE_INDEX)).sum()
                nll = (1 - label_smoothing) * nll + label_smoothing * uniform
            total = total + w * nll / n
        return total

    @torch.no_grad()
    def argmax_consistent(self, outputs: S2SOutputs) -> torch.Tensor:
        """Whether the free-running decoder's most probable token at each step makes a real path [B], without the beam."""
        tokens = outputs.logits.argmax(-1)  # [B, T+1]
        prev = torch.full_like(tokens[:, 0], self.end + 1)  # START
        ok = torch.ones_like(prev, dtype=torch.bool)
        for s in range(tokens.shape[1]):
            ok &= self.allowed[prev, tokens[:, s]]
            prev = tokens[:, s]
        return ok

    # -- decoding -----------------------------------------------------------------------------

    def node_scores(self, outputs: S2SOutputs) -> torch.Tensor:
        """Multi-label: sigmoid score of every node [B, |V|], level t's from decoder step t."""
        ids = torch.arange(self.end, device=outputs.logits.device)
        return outputs.logits[:, self.node_level, ids].float().sigmoid()

    @torch.no_grad()
    def decode_beams(self, outputs: S2SOutputs, beam_width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k tree paths by beam search: per-level indices [B, K, T] (IGNORE_INDEX-padded) and probabilities [B, K].

        A path's probability is the product of its steps' probabilities, END's included. Each beam
        keeps its own decoder state, since its next input depends on its own history.
        """
        if self.multilabel:
            raise ValueError("a multi-label model predicts node scores (node_scores), not single paths")
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
        # a sample's beams sit in its own K rows, so its level inputs need no reordering
        inputs = None if outputs.inputs is None else outputs.inputs.to(dtype).repeat_interleave(k, dim=0)
        tokens, backs = [], []
        for t in range(self.num_levels + 1):
            logits, (h, c) = self.step(x, (h, c), inputs, t)
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
    known = {"hidden_size", "num_layers", "feed", "end_after", "embed_size", "dropout", "level_inputs",
             "residual"}
    unknown = sorted(set(s2s) - known)
    if unknown:
        raise ValueError(f"unknown s2s settings {unknown}; expected some of {sorted(known)}")
    return s2s
