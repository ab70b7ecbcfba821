"""The k best paths of any model kind, and the probability of every prefix of a path.

The probability of a path's prefix of depth d is what back-off compares with tau:

- flat: the exact marginal, the sum of the leaf probabilities under the prefix's last node;
- CNN-RNN: the product of the per-level probabilities of the prefix's nodes;
- CNN-S2S: the product of the decoder's step probabilities of the prefix's nodes (END excluded:
  the prefix may go on), replaying the decoder along the path as the beam search ran it.

Each is non-increasing with depth. Depths after a path's end get NaN.

A model trained on a collapsed tree (collapse_chains) is scored on the full taxonomy: its paths
and prefix probabilities are re-encoded on it first (``on_full_tree``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .inference import autocast
from ..models.flat import FlatClassifier
from ..models.rnn import DHNN
from ..models.s2s import CNNS2S, S2SOutputs
from ..taxonomy import IGNORE_INDEX, Taxonomy
from .backoff import PrefixPredictions


def _along(step_probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Cumulative products [B, K, T] of per-depth probabilities, NaN where the path has ended."""
    cum = torch.where(valid, step_probs, 1.0).cumprod(-1)
    return torch.where(valid, cum, torch.nan)


def _flat(model: FlatClassifier, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Exact marginals: per level, the leaf probabilities summed onto their level-t ancestor."""
    probs = logits.float().softmax(-1)  # [B, leaves]
    leaf_paths = model.taxonomy.leaf_paths().to(probs.device)  # [leaves, T]
    out = []
    for t, size in enumerate(model.taxonomy.level_sizes):
        under = leaf_paths[:, t] != IGNORE_INDEX  # leaves that reach level t
        marginal = probs.new_zeros(probs.shape[0], size).index_add_(1, leaf_paths[under, t], probs[:, under])
        out.append(marginal.gather(1, indices[:, :, t].clamp(min=0)))
    probs_at = torch.stack(out, -1)
    return torch.where(indices != IGNORE_INDEX, probs_at, torch.nan)


def _rnn(model: DHNN, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Products of the per-level probabilities along each path."""
    steps = torch.stack([lp.exp().gather(1, indices[:, :, t].clamp(min=0))
                         for t, lp in enumerate(model.level_log_probs(logits))], -1)
    return _along(steps, indices != IGNORE_INDEX)


def _s2s(model: CNNS2S, outputs: S2SOutputs, indices: torch.Tensor) -> torch.Tensor:
    """Products of the decoder's step probabilities, each path fed back as decode_beams feeds it."""
    batch, k, levels = indices.shape
    dtype = model.out.weight.dtype  # decode in the weights' precision, as decode_beams does
    h, c = (s.to(dtype).repeat_interleave(k, dim=1) for s in outputs.state)  # the K paths of a sample side by side
    flat = indices.reshape(batch * k, levels)
    valid = flat != IGNORE_INDEX
    # node ids in the decoder's vocabulary; END after the path's end (only its feedback is used)
    tokens = torch.where(valid, flat + model.level_offsets, model.end)
    x = model.start.to(dtype).expand(batch * k, -1)
    inputs = None if outputs.inputs is None else outputs.inputs.to(dtype).repeat_interleave(k, dim=0)
    steps = []
    for t in range(levels):
        logits, (h, c) = model.step(x, (h, c), inputs, t)
        steps.append(logits.float().softmax(-1).gather(1, tokens[:, t:t + 1]).squeeze(1))
        x = model.next_input(logits, tokens[:, t])
    return _along(torch.stack(steps, -1), valid).view(batch, k, levels)


@torch.no_grad()
def prefix_probs(model: nn.Module, outputs: torch.Tensor | S2SOutputs, indices: torch.Tensor) -> torch.Tensor:
    """Probability [B, K, T] of the prefix of each depth of the paths ``indices`` [B, K, T] (NaN after the end)."""
    if getattr(model, "multilabel", False):
        raise ValueError("a multi-label model scores node sets, not paths; prefix probabilities need a path model")
    if isinstance(model, FlatClassifier):
        return _flat(model, outputs, indices)
    if isinstance(model, DHNN):
        return _rnn(model, outputs, indices)
    if isinstance(model, CNNS2S):
        return _s2s(model, outputs, indices)
    raise ValueError(f"no prefix probabilities for a model of type {type(model).__name__}")


@torch.no_grad()
def top_paths_with_prefixes(model: nn.Module, images: torch.Tensor, k: int
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's k best paths [B, k, T], their probabilities [B, k] and their prefix probabilities [B, k, T]."""
    outputs = model(images)
    indices, scores = model.top_paths(outputs, k)
    return indices, scores.float(), prefix_probs(model, outputs, indices)


@torch.no_grad()
def predict_prefixes(model: nn.Module, loader: DataLoader, device: torch.device, beam_width: int,
                     amp: bool = True) -> PrefixPredictions:
    """A loader's best paths (beam of ``beam_width``), their prefix probabilities and the true paths.

    The best path is the one ``model.predict`` gives (dhnn.evaluation.inference.predict), so back-off
    tables describe the same predictions as the run's metrics. Per image also: whether the true
    path is among the beam's ``beam_width`` paths (top-k), and whether the per-level most probable
    nodes form a real path without the beam (``model.argmax_consistent``).
    """
    model.eval()
    preds, probs, targets, scores, hits, consistent = [], [], [], [], [], []
    for images, paths, _ in loader:
        with autocast(device, amp):
            outputs = model(images.to(device, memory_format=torch.channels_last))
        indices, score = model.top_paths(outputs, beam_width)
        best = indices[:, :1]
        preds.append(best[:, 0].cpu())
        scores.append(score[:, 0].float().cpu())
        probs.append(prefix_probs(model, outputs, best)[:, 0].float().cpu())
        targets.append(paths)
        hits.append((indices.cpu() == paths[:, None]).all(-1).any(-1))
        consistent.append(model.argmax_consistent(outputs).cpu())
    return PrefixPredictions(torch.cat(preds).numpy(), torch.cat(probs).numpy().astype(np.float64),
                             torch.cat(targets).numpy(), torch.cat(scores).numpy().astype(np.float64),
                             torch.cat(hits).numpy(), torch.cat(consistent).numpy())


def _full_tables(tree: Taxonomy, full: Taxonomy) -> tuple[torch.Tensor, torch.Tensor]:
    """Per node of ``tree`` (and a last row for the empty path): its root path encoded on ``full``
    [|V|+1, T_full], and per full depth the depth in ``tree`` whose prefix probability applies (-1: none)."""
    paths = torch.full((len(tree) + 1, full.num_levels), IGNORE_INDEX)
    depths = torch.full((len(tree) + 1, full.num_levels), -1)
    for i, n in enumerate(tree.nodes):
        chain = full.path(n) if n in full else []
        if [m for m in chain if m in tree] != tree.path(n):
            raise ValueError(f"node {n!r}: its path in the model's tree {tree.path(n)} is not its path in the full "
                             f"taxonomy {chain or '(not a node there)'} with single-child nodes removed")
        paths[i] = full.encode_path(chain)
        kept = -1
        for j in reversed(range(len(chain))):  # a removed node takes the depth of the kept node below it
            kept = tree.depth(chain[j]) - 1 if chain[j] in tree else kept
            depths[i, j] = kept
    return paths, depths


def expand_paths(indices: torch.Tensor, tree: Taxonomy, full: Taxonomy) -> tuple[torch.Tensor, torch.Tensor]:
    """Root paths [N, T] of ``tree`` re-encoded on ``full`` [N, T_full], and the depth of ``tree`` each depth reads.

    ``tree`` is ``full.collapse_chains()``: a path ending at node n becomes ``full.path(n)``, with the
    single-child nodes that collapsing removed put back.
    """
    paths, depths = _full_tables(tree, full)
    indices = torch.as_tensor(indices).cpu().long()
    length = (indices != IGNORE_INDEX).sum(1)
    last = (length - 1).clamp(min=0)
    offsets = torch.tensor([0] + tree.level_sizes[:-1]).cumsum(0)
    node = torch.where(length > 0, offsets[last] + indices.gather(1, last[:, None])[:, 0], len(tree))
    return paths[node], depths[node]


def on_full_tree(pred: PrefixPredictions, tree: Taxonomy, full: Taxonomy) -> PrefixPredictions:
    """Predicted and true paths of a model trained on ``tree`` = ``full.collapse_chains()``, scored on ``full``.

    The prefix probability at a put-back node is that of the kept node below it: its only child
    subtree, so the only way through it. Node and per-level accuracy and back-off then count the
    same levels and nodes for every variant.
    """
    if tree == full:
        return pred
    paths, depths = expand_paths(torch.as_tensor(pred.pred), tree, full)
    probs = np.take_along_axis(np.asarray(pred.prefix_probs, dtype=np.float64), depths.clamp(min=0).numpy(), 1)
    target = expand_paths(torch.as_tensor(pred.target), tree, full)[0]
    return PrefixPredictions(paths.numpy(), np.where(depths.numpy() >= 0, probs, np.nan), target.numpy(), pred.score,
                             pred.topk_hit, pred.consistent)
