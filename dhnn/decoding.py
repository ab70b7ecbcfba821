"""Beam search over a label tree (the slides' Algorithm 1), batched over samples.

Level 1 keeps the top-k nodes; at each later level the candidates are only the children of the
kept paths, scored by path probability (product of node probabilities). In a tree that is not
fixed-depth, a path that has reached a leaf is complete and competes unchanged at later levels.

Implementation: scores are summed log-probabilities. Per taxonomy and device, a padded table
lists each node's children (built once, see ``_tables``); at each level only the k * width
candidate slots of the kept paths are read (a gather), scored and ranked, so the work per sample
does not grow with the level's size. Samples are processed in chunks of ``_CHUNK``.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch

from .taxonomy import IGNORE_INDEX, Taxonomy


def _check_inputs(level_scores: Sequence[torch.Tensor], taxonomy: Taxonomy, beam_width: int) -> int:
    """Validate shapes and beam width; return the batch size."""
    if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(f"beam_width must be an integer >= 1, got {beam_width!r}")
    if len(level_scores) != taxonomy.num_levels:
        raise ValueError(f"expected {taxonomy.num_levels} score tensors (one per taxonomy level), "
                         f"got {len(level_scores)}")
    batch: int | None = None
    for t, (scores, size) in enumerate(zip(level_scores, taxonomy.level_sizes)):
        expected = f"[{'B' if batch is None else batch}, {size}]"
        if not isinstance(scores, torch.Tensor):
            raise ValueError(f"level {t + 1}: expected a tensor of shape {expected}, "
                             f"got {type(scores).__name__}")
        if scores.dim() != 2 or scores.shape[1] != size or (batch is not None and scores.shape[0] != batch):
            raise ValueError(f"level {t + 1}: expected scores of shape {expected}, "
                             f"got {list(scores.shape)}")
        if not scores.is_floating_point():
            raise ValueError(f"level {t + 1}: expected floating-point probabilities, got {scores.dtype}")
        batch = scores.shape[0]
    assert batch is not None
    return batch


class _Level:
    """Candidate slots of one level t >= 1, as tables with one row per kept path's last node.

    Row r (a node of levels[t-1]; the extra last row is a path that has already finished) holds
    ``width`` slots: the children of r, a single CARRY slot if r is a leaf above the last level
    (the finished path competes unchanged), and PAD slots up to the common width (never a path).
    """

    def __init__(self, taxonomy: Taxonomy, t: int, carry_possible: bool, device: torch.device) -> None:
        prev_size, size = len(taxonomy.levels[t - 1]), len(taxonomy.levels[t])
        kids: list[list[int]] = [[] for _ in range(prev_size + 1)]
        for child, parent in enumerate(taxonomy.parent_index(t).tolist()):
            kids[parent].append(child)
        if not carry_possible:  # no leaf above level t: the finished row is never used
            kids[prev_size] = [0]  # ... but may be indexed by an empty slot (score -inf)
        self.width = width = max(map(len, kids))
        # node: what a slot's path ends in at level t, a child index or `size` for a finished path
        node = torch.full((prev_size + 1, width), 0, dtype=torch.long)
        carry = torch.zeros((prev_size + 1, width), dtype=torch.bool)
        pad = torch.ones((prev_size + 1, width), dtype=torch.bool)
        for r, row in enumerate(kids):
            if row:
                node[r, : len(row)] = torch.tensor(row)
                pad[r, : len(row)] = False
            else:
                node[r, 0], carry[r, 0], pad[r, 0] = size, True, False
        if not carry_possible:
            pad[prev_size] = True
        self.node = node.to(device)
        self.has_carry = bool(carry.any())
        # where a slot's probability is read (a carry slot reads a dummy entry, then zeroes it)
        self.read = node.clamp(max=size - 1).to(device) if self.has_carry else self.node
        self.carry = carry.to(device) if self.has_carry else None
        self._pad = pad if bool(pad.any()) else None
        self._bias: dict[torch.dtype, torch.Tensor] = {}

    def bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """[rows, width] in dtype: 0 for a real slot, -inf for a PAD; None without PADs."""
        if self._pad is None:
            return None
        if dtype not in self._bias:
            zeros = torch.zeros(self._pad.shape, dtype=dtype)
            self._bias[dtype] = zeros.masked_fill_(self._pad, float("-inf")).to(self.node.device)
        return self._bias[dtype]


# Candidate tables per taxonomy (by identity; Taxonomy is unhashable) and device.
_TABLES: dict[int, tuple[weakref.ref, dict[torch.device, list[_Level]]]] = {}


def _tables(taxonomy: Taxonomy, device: torch.device) -> list[_Level]:
    """The per-level candidate tables (index 0 unused), built once per taxonomy and device."""
    key = id(taxonomy)
    entry = _TABLES.get(key)
    if entry is None or entry[0]() is not taxonomy:
        def forget(ref: weakref.ref, key: int = key) -> None:
            if key in _TABLES and _TABLES[key][0] is ref:
                del _TABLES[key]

        entry = _TABLES[key] = (weakref.ref(taxonomy, forget), {})
    per_device = entry[1]
    if device not in per_device:
        tables: list[_Level] = [None]  # type: ignore[list-item]
        carry_possible = False
        for t in range(1, taxonomy.num_levels):
            carry_possible = carry_possible or any(
                not taxonomy.children(n) for n in taxonomy.levels[t - 1])
            tables.append(_Level(taxonomy, t, carry_possible, device))
        per_device[device] = tables
    return per_device[device]


def _top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """topk(k, dim=1) of a [B, n] tensor (which it may overwrite), sorted best first.

    On CPU, for a small k against a wider row, k rounds of max() (lowest index first on ties)
    are faster than topk's selection; an already-picked entry is set to -inf, so a row with
    fewer than k entries above -inf repeats an index among its last picks (which score -inf,
    i.e. are empty slots, as topk's would).
    """
    n = scores.shape[1]
    if scores.device.type != "cpu" or k > 6 or n < 4 * k:
        return scores.topk(k, dim=1)
    values, picks = [], []
    removed = scores.new_full((scores.shape[0], 1), float("-inf"))  # (a tensor: faster than a scalar)
    for j in range(k):
        value, pick = scores.max(dim=1, keepdim=True)
        values.append(value)
        picks.append(pick)
        if j + 1 < k:
            scores.scatter_(1, pick, removed)
    return torch.cat(values, dim=1), torch.cat(picks, dim=1)


# Samples per chunk, and at most this many candidate slots (k * width, or level-1 nodes) per
# chunk: bounds the memory of the per-level candidate tensors for wide trees and beams.
_CHUNK = 16384
_CHUNK_SLOTS = 1 << 20


def beam_search_indices(
    level_scores: Sequence[torch.Tensor], taxonomy: Taxonomy, beam_width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k tree paths: indices [B, K, T] (IGNORE_INDEX-padded) and their probabilities [B, K]."""
    batch = _check_inputs(level_scores, taxonomy, beam_width)
    k, num_levels = beam_width, taxonomy.num_levels
    device = level_scores[0].device
    dtype = torch.promote_types(level_scores[0].dtype, torch.float32)  # no log-sums in half precision
    # log(0) is clamped to a finite floor so that -inf means "no path" only; T floors still sum
    # to a finite number, so a zero-probability real path always outranks an empty slot.
    floor = torch.finfo(dtype).min / (num_levels + 1)
    if torch.is_grad_enabled() and any(s.requires_grad for s in level_scores):
        # search without autograd (in-place ops), then score the found paths differentiably
        with torch.no_grad():
            indices, _ = beam_search_indices(level_scores, taxonomy, beam_width)
        total = torch.zeros(indices.shape[:2], device=device, dtype=dtype)
        for t, s in enumerate(level_scores):
            node = indices[:, :, t]
            logp = s.to(device=device, dtype=dtype).gather(1, node.clamp(min=0)).log().clamp_min(floor)
            total = total + torch.where(node != IGNORE_INDEX, logp, 0.0)
        return indices, torch.where(indices[:, :, 0] != IGNORE_INDEX, total.exp(), 0.0)
    tables = _tables(taxonomy, device)
    inputs = [s if s.device == device else s.to(device) for s in level_scores]
    indices = torch.empty((batch, k, num_levels), device=device, dtype=torch.long)
    scores = torch.empty((batch, k), device=device, dtype=dtype)
    slots = max([taxonomy.level_sizes[0]] + [k * table.width for table in tables[1:]])
    chunk = max(1, min(_CHUNK, _CHUNK_SLOTS // slots))
    for start in range(0, max(batch, 1), chunk):
        stop = min(start + chunk, batch)
        _search_chunk([s[start:stop] for s in inputs], tables, k, dtype, floor,
                      indices[start:stop], scores[start:stop])
    return indices, scores


def _search_chunk(level_scores: list[torch.Tensor], tables: list[_Level], k: int,
                  dtype: torch.dtype, floor: float, indices: torch.Tensor, out_scores: torch.Tensor
                  ) -> None:
    """beam_search_indices on one chunk of samples, written into indices and out_scores.

    A kept path is (score [B, k] as a log-probability, its last node [B, k]); at level t its
    candidates are the k * width slots of its nodes' table rows, scored as score + log p.
    """
    batch, num_levels = level_scores[0].shape[0], len(level_scores)
    neg_inf = float("-inf")
    size = level_scores[0].shape[1]
    logp = level_scores[0].to(dtype).log().clamp_min_(floor)
    if size < k:  # fewer level-1 nodes than beams: empty slots
        logp = torch.cat([logp, logp.new_full((batch, k - size), neg_inf)], dim=1)
    if num_levels > 1 and logp.shape[1] > k:  # later levels re-rank: level 1 needs no order
        score, node = logp.topk(k, dim=1, sorted=False)
    else:
        score, node = _top(logp, k)
    if size < k:
        node = node.clamp_(max=size)  # an empty slot's node only has to index a table row
    nodes, backs = [node], [node]  # per level: node ids and the kept path each extends
    for t in range(1, num_levels):
        table = tables[t]
        width = table.width
        rows = node.reshape(-1)
        cand_node = table.node.index_select(0, rows).view(batch, k * width)
        read = cand_node if not table.has_carry else table.read.index_select(0, rows)
        cand = level_scores[t].gather(1, read.view(batch, k * width))
        cand = (cand.to(dtype) if cand.dtype != dtype else cand).log_().clamp_min_(floor)
        if table.carry is not None:  # a finished path keeps its score
            cand.masked_fill_(table.carry.index_select(0, rows).view(batch, k * width), 0.0)
        base = score.unsqueeze(2)
        bias = table.bias(dtype)
        if bias is not None:  # PAD slots get -inf
            base = bias.index_select(0, rows).view(batch, k, width).add_(base)
        cand.view(batch, k, width).add_(base)
        score, pick = _top(cand, k)
        node = cand_node.gather(1, pick)
        beam_of = torch.arange(k, device=pick.device).repeat_interleave(width)
        nodes.append(node)
        backs.append(beam_of.index_select(0, pick.reshape(-1)).view(batch, k))

    ptr = None
    for t in reversed(range(num_levels)):
        indices[:, :, t] = nodes[t] if ptr is None else nodes[t].gather(1, ptr)
        if t:
            ptr = backs[t] if ptr is None else backs[t].gather(1, ptr)
            if tables[t].has_carry:  # a finished path's node id at this level
                column = indices[:, :, t]
                column.masked_fill_(column >= level_scores[t].shape[1], IGNORE_INDEX)
    indices.masked_fill_((score == neg_inf).unsqueeze(2), IGNORE_INDEX)
    torch.exp(score, out=out_scores)  # an empty slot's -inf becomes 0


def beam_search(
    level_scores: Sequence[torch.Tensor], taxonomy: Taxonomy, beam_width: int
) -> tuple[list[list[list[str]]], torch.Tensor]:
    """Top-k tree paths as node names (``paths[b]`` best first, padding dropped) and scores [B, K]."""
    indices, scores = beam_search_indices(level_scores, taxonomy, beam_width)
    batch, k, num_levels = indices.shape
    names = taxonomy.decode(indices.reshape(batch * k, num_levels).cpu())
    paths = [[p for p in names[b * k : (b + 1) * k] if p] for b in range(batch)]
    return paths, scores


def leaf_to_paths(leaf_pred: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
    """Map a flat classifier's leaf predictions (indices into taxonomy.leaves) to paths [N, T]."""
    if not isinstance(leaf_pred, torch.Tensor) or leaf_pred.dim() != 1:
        shape = list(leaf_pred.shape) if isinstance(leaf_pred, torch.Tensor) else type(leaf_pred).__name__
        raise ValueError(f"leaf_pred must be a tensor of shape [N], got {shape}")
    if leaf_pred.is_floating_point() or leaf_pred.is_complex():
        raise ValueError(f"leaf_pred must hold integer leaf indices, got {leaf_pred.dtype}")
    num_leaves = len(taxonomy.leaves)
    if leaf_pred.numel() and (leaf_pred.min() < 0 or leaf_pred.max() >= num_leaves):
        raise ValueError(f"leaf_pred values must lie in [0, {num_leaves}), got "
                         f"[{leaf_pred.min().item()}, {leaf_pred.max().item()}]")
    return taxonomy.leaf_paths().to(leaf_pred.device)[leaf_pred.long()]
