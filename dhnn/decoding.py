"""Beam search over a label tree (the slides' Algorithm 1), batched over samples.

Level 1 keeps the top-k nodes; at each later level the candidates are only the children of the
kept paths, scored by path probability (product of node probabilities). In a tree that is not
fixed-depth, a path that has reached a leaf is complete and competes unchanged at later levels.
"""

from __future__ import annotations

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


def beam_search_indices(
    level_scores: Sequence[torch.Tensor], taxonomy: Taxonomy, beam_width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k tree paths: indices [B, K, T] (IGNORE_INDEX-padded) and their probabilities [B, K]."""
    batch = _check_inputs(level_scores, taxonomy, beam_width)
    k, num_levels = beam_width, taxonomy.num_levels
    device = level_scores[0].device
    dtype = torch.promote_types(level_scores[0].dtype, torch.float32)  # no log-sums in half precision
    neg_inf = float("-inf")
    # log(0) is clamped to a finite floor so that -inf means "no path" only; T floors still sum
    # to a finite number, so a zero-probability real path always outranks an empty slot.
    floor = torch.finfo(dtype).min / (num_levels + 1)
    beam_ids = torch.arange(k, device=device).expand(batch, k)

    nodes: list[torch.Tensor] = []  # per level [B, K]: node index in levels[t], or IGNORE_INDEX
    backs: list[torch.Tensor] = []  # per level [B, K]: which beam of the previous level it extends
    score = node = None
    for t in range(num_levels):
        size = len(taxonomy.levels[t])
        logp = level_scores[t].to(device=device, dtype=dtype).log().clamp_min(floor)
        if t == 0:
            ext, ext_beam = logp, None
            carry = torch.full((batch, k), neg_inf, device=device, dtype=dtype)
        else:
            prev_size = len(taxonomy.levels[t - 1])
            valid = score > neg_inf
            active = valid & (node != IGNORE_INDEX)
            # Distinct kept paths end in distinct nodes, so the kept beams can be scattered into a
            # dense row over levels[t-1]; inactive slots all go to a spare last column.
            slot = torch.where(active, node, prev_size)
            dense = torch.full((batch, prev_size + 1), neg_inf, device=device, dtype=dtype)
            dense.scatter_(1, slot, torch.where(active, score, neg_inf))
            dense_beam = torch.zeros((batch, prev_size + 1), device=device, dtype=torch.long)
            dense_beam.scatter_(1, slot, beam_ids)
            parents = taxonomy.parent_index(t).to(device)
            ext = dense[:, parents] + logp  # only children of kept paths stay finite
            ext_beam = dense_beam[:, parents]
            leaf = torch.tensor([not taxonomy.children(n) for n in taxonomy.levels[t - 1]] + [False],
                                device=device)
            complete = valid & (~active | leaf[slot])
            carry = torch.where(complete, score, neg_inf)

        score, pick = torch.cat([ext, carry], dim=1).topk(k, dim=1)
        extended = pick < size
        node = torch.where(extended & (score > neg_inf), pick, IGNORE_INDEX)
        if ext_beam is None:
            back = torch.zeros_like(pick)
        else:
            back = torch.where(extended, ext_beam.gather(1, pick.clamp(max=size - 1)), pick - size)
        nodes.append(node)
        backs.append(back)

    indices = torch.empty((batch, k, num_levels), device=device, dtype=torch.long)
    ptr = beam_ids
    for t in reversed(range(num_levels)):
        indices[:, :, t] = nodes[t].gather(1, ptr)
        ptr = backs[t].gather(1, ptr)
    found = score > neg_inf
    indices[~found] = IGNORE_INDEX
    return indices, torch.where(found, score.exp(), 0.0)


def beam_search(
    level_scores: Sequence[torch.Tensor], taxonomy: Taxonomy, beam_width: int
) -> tuple[list[list[list[str]]], torch.Tensor]:
    """Top-k tree paths as node names (``paths[b]`` best first, padding dropped) and scores [B, K]."""
    indices, scores = beam_search_indices(level_scores, taxonomy, beam_width)
    batch, k, num_levels = indices.shape
    names = taxonomy.decode(indices.reshape(batch * k, num_levels).cpu())
    paths = [[p for p in names[b * k : (b + 1) * k] if p] for b in range(batch)]
    return paths, scores
