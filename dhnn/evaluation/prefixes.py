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

from dataclasses import dataclass

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


@dataclass
class PathLogits:
    """What the prefix probabilities of paths are made of, before temperatures: a model's logits
    (flat [B, leaves], CNN-RNN [B, T, |V|]) or, for a CNN-S2S, its step logits [B*K, T, |V|+1]
    replayed along the paths ``indices`` [B, K, T]."""

    logits: torch.Tensor
    indices: torch.Tensor


def num_temperatures(model: nn.Module) -> int:
    """How many temperatures calibrate a path model: one for flat, one per level (CNN-RNN) or step (CNN-S2S)."""
    return 1 if isinstance(model, FlatClassifier) else model.taxonomy.num_levels


@torch.no_grad()
def path_logits(model: nn.Module, outputs: torch.Tensor | S2SOutputs, indices: torch.Tensor) -> PathLogits:
    """The logits behind the prefix probabilities of ``indices`` [B, K, T] (a CNN-S2S replays its decoder)."""
    if getattr(model, "multilabel", False):
        raise ValueError("a multi-label model scores node sets, not paths; prefix probabilities need a path model")
    if isinstance(model, (FlatClassifier, DHNN)):
        return PathLogits(outputs.float(), indices)
    if not isinstance(model, CNNS2S):
        raise ValueError(f"no prefix probabilities for a model of type {type(model).__name__}")
    batch, k, levels = indices.shape
    dtype = model.out.weight.dtype  # decode in the weights' precision, as decode_beams does
    h, c = (s.to(dtype).repeat_interleave(k, dim=1) for s in outputs.state)  # the K paths of a sample side by side
    flat = indices.reshape(batch * k, levels)
    # node ids in the decoder's vocabulary; END after the path's end (only its feedback is used)
    tokens = torch.where(flat != IGNORE_INDEX, flat + model.level_offsets, model.end)
    x = model.start.to(dtype).expand(batch * k, -1)
    inputs = None if outputs.inputs is None else outputs.inputs.to(dtype).repeat_interleave(k, dim=0)
    steps = []
    for t in range(levels):
        logits, (h, c) = model.step(x, (h, c), inputs, t)
        steps.append(logits.float())
        x = model.next_input(logits, tokens[:, t])  # the decoder's own feed, never a calibrated one
    return PathLogits(torch.stack(steps, 1), indices)


def _along(step_probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Cumulative products [B, K, T] of per-depth probabilities, NaN where the path has ended."""
    cum = torch.where(valid, step_probs, 1.0).cumprod(-1)
    return torch.where(valid, cum, torch.nan)


def calibrated_prefix_probs(model: nn.Module, raw: PathLogits, temperatures: torch.Tensor | None = None
                            ) -> torch.Tensor:
    """Prefix probabilities [B, K, T] with each level's (step's) logits divided by its temperature.

    Differentiable in ``temperatures`` (dhnn.evaluation.calibration fits them); None: all 1.
    """
    indices, valid = raw.indices, raw.indices != IGNORE_INDEX
    temps = raw.logits.new_ones(num_temperatures(model)) if temperatures is None else temperatures.float()
    if isinstance(model, FlatClassifier):  # exact marginals: leaf probabilities summed onto each level
        probs = (raw.logits / temps[0]).softmax(-1)  # [B, leaves]
        leaf_paths = model.taxonomy.leaf_paths().to(probs.device)  # [leaves, T]
        out = []
        for t, size in enumerate(model.taxonomy.level_sizes):
            under = leaf_paths[:, t] != IGNORE_INDEX  # leaves that reach level t
            marginal = probs.new_zeros(probs.shape[0], size).index_add(1, leaf_paths[under, t], probs[:, under])
            out.append(marginal.gather(1, indices[:, :, t].clamp(min=0)))
        return torch.where(valid, torch.stack(out, -1), torch.nan)
    if isinstance(model, DHNN):  # products of the per-level probabilities along each path
        level = model.level_log_probs(raw.logits / temps.view(1, -1, 1))
        steps = torch.stack([lp.exp().gather(1, indices[:, :, t].clamp(min=0)) for t, lp in enumerate(level)], -1)
        return _along(steps, valid)
    batch, k, levels = indices.shape  # CNN-S2S: products of the step probabilities, END excluded
    flat = indices.reshape(batch * k, levels)
    tokens = torch.where(flat != IGNORE_INDEX, flat + model.level_offsets, model.end)
    probs = (raw.logits / temps.view(1, -1, 1)).softmax(-1).gather(2, tokens[:, :, None]).squeeze(2)
    return _along(probs, flat != IGNORE_INDEX).view(batch, k, levels)


@torch.no_grad()
def prefix_probs(model: nn.Module, outputs: torch.Tensor | S2SOutputs, indices: torch.Tensor,
                 temperatures: torch.Tensor | None = None) -> torch.Tensor:
    """Probability [B, K, T] of the prefix of each depth of the paths ``indices`` [B, K, T] (NaN after the end)."""
    return calibrated_prefix_probs(model, path_logits(model, outputs, indices), temperatures)


@torch.no_grad()
def top_paths_with_prefixes(model: nn.Module, images: torch.Tensor, k: int,
                            temperatures: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's k best paths [B, k, T], their probabilities [B, k] and their (calibrated) prefix probabilities [B, k, T]."""
    outputs = model(images)
    indices, scores = model.top_paths(outputs, k)
    return indices, scores.float(), prefix_probs(model, outputs, indices, temperatures)


@torch.no_grad()
def predict_prefixes(model: nn.Module, loader: DataLoader, device: torch.device, beam_width: int,
                     amp: bool = True, temperatures: torch.Tensor | None = None) -> PrefixPredictions:
    """A loader's best paths (beam of ``beam_width``), their prefix probabilities and the true paths.

    The best path is the one ``model.predict`` gives (dhnn.evaluation.inference.predict), so back-off
    tables describe the same predictions as the run's metrics. Per image also: whether the true
    path is among the beam's ``beam_width`` paths (top-k), and whether the per-level most probable
    nodes form a real path without the beam (``model.argmax_consistent``). ``temperatures``
    (dhnn.evaluation.calibration) calibrate the prefix probabilities; the paths and their beam
    scores are the model's own.
    """
    model.eval()
    preds, probs, targets, scores, hits, consistent, raw_path = [], [], [], [], [], [], []
    for images, paths, _ in loader:
        with autocast(device, amp):
            outputs = model(images.to(device, memory_format=torch.channels_last))
        indices, score = model.top_paths(outputs, beam_width)
        best = indices[:, :1]
        preds.append(best[:, 0].cpu())
        scores.append(score[:, 0].float().cpu())
        raw = path_logits(model, outputs, best)
        probs.append(calibrated_prefix_probs(model, raw, temperatures)[:, 0].float().cpu())
        if temperatures is not None:  # the path's probability before scaling, for the reliability diagram
            uncal = calibrated_prefix_probs(model, raw)[:, 0].float().cpu()
            last = ((~uncal.isnan()).sum(1) - 1).clamp(min=0)  # the deepest prefix: the whole path
            raw_path.append(uncal.gather(1, last[:, None])[:, 0])
        targets.append(paths)
        hits.append((indices.cpu() == paths[:, None]).all(-1).any(-1))
        consistent.append(model.argmax_consistent(outputs).cpu())
    return PrefixPredictions(torch.cat(preds).numpy(), torch.cat(probs).numpy().astype(np.float64),
                             torch.cat(targets).numpy(), torch.cat(scores).numpy().astype(np.float64),
                             torch.cat(hits).numpy(), torch.cat(consistent).numpy(),
                             torch.cat(raw_path).numpy().astype(np.float64) if raw_path else None)


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
                             pred.topk_hit, pred.consistent, pred.uncalibrated)
