"""The task registry: the one place that says what a label is and how predictions are scored.

- ``paths``: one root path per image (Fashion-MNIST, CIFAR-100, image folders). Models emit one
  distribution per level; a beam search constrained to the tree returns the best path; path, node
  and per-level accuracy score it.
- ``node_sets``: any set of nodes per image, each with its ancestors (Open Images). Models emit a
  sigmoid score per node; the paper's node F1 and path F1, at thresholds chosen on validation,
  score it.

A data source names its task (dhnn.data.registry). Training asks the task for the labels' ends and
the validation score of each epoch; the test scores of the infer stage are
dhnn.evaluation.scoring's, and the files they fill are dhnn.evaluation.records', which the report
reads without importing a model.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .evaluation.inference import predict, predict_scores
from .evaluation.metrics import evaluate_paths, node_f1, path_f1, search_threshold
from .evaluation.records import RECORDS
from .models.s2s import path_stops
from .taxonomy import IGNORE_INDEX, Taxonomy


@dataclass(frozen=True)
class PathTask:
    """One root path per image."""

    name: str = "paths"
    multilabel: bool = RECORDS["paths"].multilabel
    metrics: tuple[str, ...] = RECORDS["paths"].metrics
    required: tuple[str, ...] = RECORDS["paths"].required

    @property
    def select(self) -> str:
        """The validation metric that picks the epoch to keep."""
        return self.metrics[0]

    def label_ends(self, datasets: Sequence[Dataset], tree: Taxonomy) -> set[str]:
        """The nodes that some image's path ends at, over ``datasets`` (their ``paths`` [N, T] on ``tree``)."""
        ends: set[str] = set()
        for ds in datasets:
            paths = torch.as_tensor(ds.paths)
            length = (paths != IGNORE_INDEX).sum(1)
            last = paths.gather(1, (length - 1).clamp(min=0)[:, None])[:, 0]
            ends |= {tree.levels[d - 1][i] for d, i in torch.stack([length, last], 1).unique(dim=0).tolist() if d}
        return ends

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, beam_width: int,
                 amp: bool = True) -> dict:
        """Path, node and per-level accuracy of the beam's best paths."""
        pred, _, target = predict(model, loader, device, beam_width, amp)
        return evaluate_paths(pred, target)


@dataclass(frozen=True)
class NodeSetTask:
    """Any set of nodes per image, each node with its ancestors."""

    name: str = "node_sets"
    multilabel: bool = RECORDS["node_sets"].multilabel
    metrics: tuple[str, ...] = RECORDS["node_sets"].metrics
    required: tuple[str, ...] = RECORDS["node_sets"].required

    @property
    def select(self) -> str:
        """The validation metric that picks the epoch to keep."""
        return self.metrics[0]

    def label_ends(self, datasets: Sequence[Dataset], tree: Taxonomy) -> set[str]:
        """The nodes where a path of some image's node set stops, over ``datasets`` (their multi-hot ``targets``)."""
        stops = [path_stops(torch.as_tensor(ds.targets), tree).any(0) for ds in datasets]
        return {tree.nodes[i] for s in stops for i in s.nonzero().flatten().tolist()}

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, beam_width: int,
                 amp: bool = True) -> dict:
        """Node and path F1, each at its best threshold on ``loader`` (validation)."""
        scores, targets, index = predict_scores(model, loader, device, amp)
        original = loader.dataset.original[index]  # path F1 against the labels as annotated, as on test
        node = search_threshold(scores, targets, node_f1)[1]
        path = search_threshold(scores, original, lambda s, t, th: path_f1(s, t, model.taxonomy, th))[1]
        return {"node_f1": node, "path_f1": path}


TASKS = {t.name: t for t in (PathTask(), NodeSetTask())}


def get_task(name: str) -> PathTask | NodeSetTask:
    """The registered task called ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]
