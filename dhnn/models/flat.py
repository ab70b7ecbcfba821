"""The flat baseline: the backbone's last feature map, pooled, one softmax over the leaves."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..decoding import leaf_to_paths
from ..taxonomy import IGNORE_INDEX, Taxonomy
from .backbone import Backbone, PreLogits


class FlatClassifier(nn.Module):
    """The flat baseline: the backbone's last feature map, global average pooled, one softmax over the leaves."""

    def __init__(self, taxonomy: Taxonomy, backbone: Backbone | PreLogits, dropout: float = 0.0,
                 multilabel: bool = False):
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

    def loss(self, logits: torch.Tensor, paths: torch.Tensor, level_weights: Sequence[float] = (),
             label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy over the leaves, optionally label-smoothed (multi-label: sigmoid cross-entropy over the nodes)."""
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits.float(), paths.float())
        return F.cross_entropy(logits.float(), self.leaf_targets(paths), label_smoothing=label_smoothing)

    @torch.no_grad()
    def top_paths(self, logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k most probable leaves, mapped to their paths: (indices [B, k, T], probabilities [B, k])."""
        if self.multilabel:
            raise ValueError("a multi-label model predicts node scores (node_scores), not single paths")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        probs = logits.float().softmax(-1)
        batch, found = probs.shape[0], min(k, probs.shape[1])
        p, leaf = probs.topk(found, dim=1)
        paths = leaf_to_paths(leaf.reshape(-1), self.taxonomy).view(batch, found, -1)
        if found < k:  # fewer leaves than asked for: empty slots, as the beam search pads them
            paths = torch.cat([paths, paths.new_full((batch, k - found, paths.shape[2]), IGNORE_INDEX)], 1)
            p = torch.cat([p, p.new_zeros(batch, k - found)], 1)
        return paths, p

    @torch.no_grad()
    def argmax_consistent(self, logits: torch.Tensor) -> torch.Tensor:
        """Whether the per-level argmax nodes form a real path [B]: always, as a leaf names its whole path."""
        return torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)

    @torch.no_grad()
    def predict(self, logits: torch.Tensor, beam_width: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The most probable leaf, mapped to its path: (indices [B, T], scores [B])."""
        p, leaf = logits.float().softmax(-1).max(-1)
        return leaf_to_paths(leaf, self.taxonomy), p
