"""The task registry: the one place that says what a label is and how predictions are scored.

- ``paths``: one root path per image (Fashion-MNIST, CIFAR-100, image folders). Models emit one
  distribution per level; a beam search constrained to the tree returns the best path; path, node
  and per-level accuracy score it.
- ``node_sets``: any set of nodes per image, each with its ancestors (Open Images). Models emit a
  sigmoid score per node; the paper's node F1 and path F1, at thresholds chosen on validation,
  score it.

A data source names its task (dhnn.data.registry); training, inference and the report ask the task.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .evaluation.backoff import evaluate_backoff
from .evaluation.inference import predict, predict_scores
from .evaluation.metrics import (evaluate_multilabel, evaluate_paths, node_f1, path_f1, path_prediction,
                                 search_threshold)
from .evaluation.prefixes import on_full_tree, predict_prefixes
from .models.s2s import path_stops
from .taxonomy import IGNORE_INDEX, Taxonomy


@dataclass(frozen=True)
class PathTask:
    """One root path per image."""

    name: str = "paths"
    multilabel: bool = False
    metrics: tuple[str, ...] = ("path_accuracy", "node_accuracy")
    required: tuple[str, ...] = ("variant", "seed", "path_accuracy", "node_accuracy", "level_accuracy")

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

    def test(self, model: nn.Module, val_loader: DataLoader, test_loader: DataLoader, tree: Taxonomy,
             device: torch.device, beam_width: int, amp: bool = True, backoff_precision: float = 0.95,
             full_tree: Taxonomy | None = None) -> tuple[dict, pd.DataFrame]:
        """Test metrics with back-off, and per test image: true and predicted path, probability, prefix probabilities.

        Back-off answers with the deepest prefix of the best path whose probability is at least tau;
        tau is the smallest that reaches ``backoff_precision`` on validation, and the test coverage,
        precision and mean depth are measured at it. ``full_tree``: the taxonomy that ``tree`` was
        collapsed from (collapse_chains); paths are put back on it before anything is scored or
        written, so node and per-level accuracy count the same levels for every variant.
        """
        val = predict_prefixes(model, val_loader, device, beam_width, amp)
        test = predict_prefixes(model, test_loader, device, beam_width, amp)
        if full_tree is not None:
            val, test, tree = on_full_tree(val, tree, full_tree), on_full_tree(test, tree, full_tree), full_tree
        pred, target = torch.as_tensor(test.pred), torch.as_tensor(test.target)
        metrics = evaluate_paths(pred, target)
        backoff = evaluate_backoff(val, test, backoff_precision)
        tau = backoff["tau"] if math.isfinite(backoff["tau"]) else None  # None: no tau reaches the precision
        metrics.update(topk_path_accuracy=float(test.topk_hit.mean()), consistency_rate=float(test.consistent.mean()),
                       backoff_tau=tau, backoff_precision=backoff_precision,
                       backoff_coverage=backoff["test_coverage"], backoff_test_precision=backoff["test_precision"],
                       backoff_mean_depth=backoff["test_mean_depth"])
        predictions = pd.DataFrame({"true path": [" / ".join(p) for p in tree.decode(target)],
                                    "predicted path": [" / ".join(p) for p in tree.decode(pred)],
                                    "score": test.score, "topk_hit": test.topk_hit.astype(int),
                                    "consistent": test.consistent.astype(int)})
        for t in range(test.prefix_probs.shape[1]):
            predictions[f"p_level{t + 1}"] = test.prefix_probs[:, t]
        return metrics, predictions


@dataclass(frozen=True)
class NodeSetTask:
    """Any set of nodes per image, each node with its ancestors."""

    name: str = "node_sets"
    multilabel: bool = True
    metrics: tuple[str, ...] = ("path_f1", "node_f1")
    required: tuple[str, ...] = ("variant", "seed", "path_f1", "node_f1")

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

    def test(self, model: nn.Module, val_loader: DataLoader, test_loader: DataLoader, tree: Taxonomy,
             device: torch.device, beam_width: int, amp: bool = True, backoff_precision: float = 0.95,
             full_tree: Taxonomy | None = None) -> tuple[dict, pd.DataFrame]:
        """The paper's evaluation: node and path F1 on test at thresholds chosen on validation; per test image
        the true and predicted node sets and the node scores (node_set_predictions). ``full_tree`` is not
        used: node sets are scored on the tree the model and its data were built on."""
        val_scores, val_targets, val_index = predict_scores(model, val_loader, device, amp)
        test_scores, test_targets, test_index = predict_scores(model, test_loader, device, amp)
        test_original = test_loader.dataset.original[test_index]
        metrics = evaluate_multilabel(val_scores, val_targets, test_scores, test_targets, tree,
                                      val_original=val_loader.dataset.original[val_index],
                                      test_original=test_original)
        return metrics, node_set_predictions(test_scores, test_targets, test_original, tree,
                                             metrics["node_threshold"], metrics["path_threshold"])


# predictions.csv of a node_sets run: these columns, each a set of nodes written as space-separated
# indices into taxonomy.nodes (node names may hold any character), then one score column per node
NODE_SET_COLUMNS = ("true nodes", "true labels", "node prediction", "path prediction")


def _node_lists(mask: torch.Tensor) -> list[str]:
    return [" ".join(map(str, row.nonzero().flatten().tolist())) for row in mask.bool()]


def node_set_predictions(scores: torch.Tensor, targets: torch.Tensor, original: torch.Tensor, tree: Taxonomy,
                         node_threshold: float, path_threshold: float) -> pd.DataFrame:
    """Per test image: the true nodes (with ancestors), the labels as annotated, the nodes predicted at
    the node-F1 threshold and the paths predicted at the path-F1 threshold, then every node's score.

    The report recomputes node and path F1 from these sets (and bootstraps them over images), so they
    are the decisions behind metrics.json exactly, not rounded scores thresholded again.
    """
    sets = {"true nodes": targets, "true labels": original,
            "node prediction": scores.double() >= node_threshold,  # in float64, as node_f1 compares
            "path prediction": path_prediction(scores, tree, path_threshold)}
    table = pd.DataFrame({name: _node_lists(mask) for name, mask in sets.items()})
    return pd.concat([table, pd.DataFrame(scores.numpy(), columns=tree.nodes).round(4)], axis=1)


TASKS = {t.name: t for t in (PathTask(), NodeSetTask())}


def get_task(name: str) -> PathTask | NodeSetTask:
    """The registered task called ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]
