"""Test-time scoring of a trained model, as the infer stage runs it: the metrics of metrics.json and
the rows of predictions.csv, for either kind of label (dhnn.evaluation.records).

Training's per-epoch validation lives with the tasks (dhnn.tasks) and needs none of this, so
editing back-off or prefix probabilities leaves trained models current.
"""
from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..taxonomy import Taxonomy
from .backoff import evaluate_backoff
from .calibration import fit_node_temperatures, fit_temperatures, scale_node_scores
from .hierarchical import expected_calibration_error
from .inference import predict_scores
from .metrics import evaluate_multilabel, evaluate_paths, path_prediction
from .prefixes import on_full_tree, predict_prefixes
from .records import NODE_SET_COLUMNS


def score_model(model: nn.Module, val_loader: DataLoader, test_loader: DataLoader, tree: Taxonomy,
                device: torch.device, beam_width: int, multilabel: bool, amp: bool = True,
                backoff_precision: float = 0.95, full_tree: Taxonomy | None = None,
                calibrate: bool = True) -> tuple[dict, pd.DataFrame]:
    """The test metrics and one row per test image, for a path model or (``multilabel``) a node-set one."""
    if multilabel:
        return score_node_sets(model, val_loader, test_loader, tree, device, amp, calibrate)
    return score_paths(model, val_loader, test_loader, tree, device, beam_width, amp, backoff_precision, full_tree,
                       calibrate)


def score_paths(model: nn.Module, val_loader: DataLoader, test_loader: DataLoader, tree: Taxonomy,
                device: torch.device, beam_width: int, amp: bool = True, backoff_precision: float = 0.95,
                full_tree: Taxonomy | None = None, calibrate: bool = True) -> tuple[dict, pd.DataFrame]:
    """Test metrics with back-off, and per test image: true and predicted path, probability, prefix probabilities.

    With ``calibrate``, temperatures fitted on validation (dhnn.evaluation.calibration) scale the
    prefix probabilities, so that back-off, the p_level columns and ``ece`` use calibrated ones;
    ``ece_uncalibrated`` and the ``uncalibrated`` column keep the model's own. Back-off answers with
    the deepest prefix of the best path whose probability is at least tau; tau is the smallest that
    reaches ``backoff_precision`` on validation, and the test coverage, precision and mean depth are
    measured at it. ``full_tree``: the taxonomy that ``tree`` was collapsed from (collapse_chains);
    paths are put back on it before anything is scored or written, so node and per-level accuracy
    count the same levels for every variant.
    """
    temps = fit_temperatures(model, val_loader, device, beam_width, amp) if calibrate else None
    scale = None if temps is None else torch.tensor(temps)
    val = predict_prefixes(model, val_loader, device, beam_width, amp, scale)
    test = predict_prefixes(model, test_loader, device, beam_width, amp, scale)
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
    right = (pred == target).all(1).numpy()
    uncalibrated = test.path_prob if test.uncalibrated is None else test.uncalibrated
    metrics.update(temperatures=temps, ece=expected_calibration_error(test.path_prob, right),
                   ece_uncalibrated=expected_calibration_error(uncalibrated, right))
    predictions = pd.DataFrame({"true path": [" / ".join(p) for p in tree.decode(target)],
                                "predicted path": [" / ".join(p) for p in tree.decode(pred)],
                                "score": test.score, "uncalibrated": uncalibrated,
                                "topk_hit": test.topk_hit.astype(int), "consistent": test.consistent.astype(int)})
    for t in range(test.prefix_probs.shape[1]):
        predictions[f"p_level{t + 1}"] = test.prefix_probs[:, t]
    return metrics, predictions


def score_node_sets(model: nn.Module, val_loader: DataLoader, test_loader: DataLoader, tree: Taxonomy,
                    device: torch.device, amp: bool = True, calibrate: bool = True) -> tuple[dict, pd.DataFrame]:
    """The paper's evaluation: node and path F1 on test at thresholds chosen on validation; per test image
    the true and predicted node sets and the node scores (node_set_predictions). Node sets are scored on
    the tree the model and its data were built on.

    With ``calibrate``, a temperature per level is fitted to the node sigmoids on validation, and
    ``node_ece`` (``node_ece_uncalibrated`` before) is the calibration error of every (image, node)
    score against the ancestor-closed node set. The decisions and F1 use the model's own scores.
    """
    val_scores, val_targets, val_index = predict_scores(model, val_loader, device, amp)
    test_scores, test_targets, test_index = predict_scores(model, test_loader, device, amp)
    test_original = test_loader.dataset.original[test_index]
    metrics = evaluate_multilabel(val_scores, val_targets, test_scores, test_targets, tree,
                                  val_original=val_loader.dataset.original[val_index],
                                  test_original=test_original)
    truth = test_targets.flatten().numpy() > 0.5
    metrics["node_ece_uncalibrated"] = expected_calibration_error(test_scores.double().flatten().numpy(), truth)
    if calibrate:
        level = torch.tensor([tree.depth(n) - 1 for n in tree.nodes])
        temps = fit_node_temperatures(val_scores, val_targets, level)
        calibrated = scale_node_scores(test_scores, temps, level)
        metrics.update(node_temperatures=temps,
                       node_ece=expected_calibration_error(calibrated.flatten().numpy(), truth))
    return metrics, node_set_predictions(test_scores, test_targets, test_original, tree,
                                         metrics["node_threshold"], metrics["path_threshold"])


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
