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
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .evaluation.backoff import evaluate_backoff
from .evaluation.inference import predict, predict_scores
from .evaluation.metrics import evaluate_multilabel, evaluate_paths, node_f1, path_f1, search_threshold
from .evaluation.prefixes import predict_prefixes
from .taxonomy import Taxonomy


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

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, beam_width: int,
                 amp: bool = True) -> dict:
        """Path, node and per-level accuracy of the beam's best paths."""
        pred, _, target = predict(model, loader, device, beam_width, amp)
        return evaluate_paths(pred, target)

    def test(self, model: nn.Module, val_loader: DataLoader, test_loader: DataLoader, tree: Taxonomy,
             device: torch.device, beam_width: int, amp: bool = True, backoff_precision: float = 0.95
             ) -> tuple[dict, pd.DataFrame]:
        """Test metrics with back-off, and per test image: true and predicted path, probability, prefix probabilities.

        Back-off answers with the deepest prefix of the best path whose probability is at least tau;
        tau is the smallest that reaches ``backoff_precision`` on validation, and the test coverage,
        precision and mean depth are measured at it.
        """
        val = predict_prefixes(model, val_loader, device, beam_width, amp)
        test = predict_prefixes(model, test_loader, device, beam_width, amp)
        pred, target = torch.as_tensor(test.pred), torch.as_tensor(test.target)
        metrics = evaluate_paths(pred, target)
        backoff = evaluate_backoff(val, test, backoff_precision)
        tau = backoff["tau"] if math.isfinite(backoff["tau"]) else None  # None: no tau reaches the precision
        metrics.update(backoff_tau=tau, backoff_precision=backoff_precision,
                       backoff_coverage=backoff["test_coverage"], backoff_test_precision=backoff["test_precision"],
                       backoff_mean_depth=backoff["test_mean_depth"])
        predictions = pd.DataFrame({"true path": [" / ".join(p) for p in tree.decode(target)],
                                    "predicted path": [" / ".join(p) for p in tree.decode(pred)],
                                    "score": test.score})
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

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, beam_width: int,
                 amp: bool = True) -> dict:
        """Node and path F1, each at its best threshold on ``loader`` (validation)."""
        scores, targets, index = predict_scores(model, loader, device, amp)
        original = loader.dataset.original[index]  # path F1 against the labels as annotated, as on test
        node = search_threshold(scores, targets, node_f1)[1]
        path = search_threshold(scores, original, lambda s, t, th: path_f1(s, t, model.taxonomy, th))[1]
        return {"node_f1": node, "path_f1": path}

    def test(self, model: nn.Module, val_loader: DataLoader, test_loader: DataLoader, tree: Taxonomy,
             device: torch.device, beam_width: int, amp: bool = True, backoff_precision: float = 0.95
             ) -> tuple[dict, pd.DataFrame]:
        """The paper's evaluation: node and path F1 on test at thresholds chosen on validation; node scores."""
        val_scores, val_targets, val_index = predict_scores(model, val_loader, device, amp)
        test_scores, test_targets, test_index = predict_scores(model, test_loader, device, amp)
        metrics = evaluate_multilabel(val_scores, val_targets, test_scores, test_targets, tree,
                                      val_original=val_loader.dataset.original[val_index],
                                      test_original=test_loader.dataset.original[test_index])
        return metrics, pd.DataFrame(test_scores.numpy(), columns=tree.nodes).round(4)


TASKS = {t.name: t for t in (PathTask(), NodeSetTask())}


def get_task(name: str) -> PathTask | NodeSetTask:
    """The registered task called ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]
