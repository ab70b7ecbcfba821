"""Temperature scaling of path probabilities, fitted on the validation set.

A CNN-RNN's path probability is the product of its per-level probabilities and a CNN-S2S's the
product of its step probabilities; trained with label smoothing, each factor is under-confident,
and the product of three more so. Calibration divides each level's (step's; for flat, the one
softmax's) logits by a temperature T_t, fitted by LBFGS over log T_t to minimise the negative
log-likelihood of whether each predicted prefix is right: the binary cross-entropy of every prefix
probability against its correctness, over the validation images.

That target, rather than each level's own multi-class NLL, calibrates what is used: the path
probability, and the prefix probabilities that back-off compares with tau. Calibrating each level
on its own leaves the product under-confident, because the levels' errors go together (a right
leaf almost always has right ancestors). The paths never change: the beam runs on the model's own
logits, and only the probabilities it reports are scaled.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .backoff import correct_prefixes
from .inference import autocast
from .prefixes import calibrated_prefix_probs, num_temperatures, path_logits


def fit_temperatures(model: nn.Module, loader: DataLoader, device: torch.device, beam_width: int,
                     amp: bool = True, max_iter: int = 100) -> list[float]:
    """The temperatures (one for flat, one per level or step) that calibrate ``model``'s prefix probabilities on ``loader``."""
    model.eval()
    raws, correct = [], []
    with torch.no_grad():
        for images, paths, _ in loader:
            with autocast(device, amp):
                outputs = model(images.to(device, memory_format=torch.channels_last))
            best = model.top_paths(outputs, beam_width)[0][:, :1]  # the best path, as the run predicts it
            raws.append(path_logits(model, outputs, best))
            correct.append(torch.as_tensor(correct_prefixes(best[:, 0].cpu(), paths)))
    right = torch.cat(correct).float()
    log_t = torch.zeros(num_temperatures(model), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        temps = log_t.exp()
        p = torch.cat([calibrated_prefix_probs(model, r, temps.to(r.logits.device))[:, 0].cpu() for r in raws])
        seen = ~p.isnan()  # depths the predicted path reaches
        loss = F.binary_cross_entropy(p[seen].clamp(1e-7, 1 - 1e-7), right[seen])
        loss.backward()
        return loss

    optimizer.step(nll)
    return [float(t) for t in log_t.detach().exp()]


def fit_node_temperatures(scores: torch.Tensor, targets: torch.Tensor, level_of_node: torch.Tensor,
                          max_iter: int = 100) -> list[float]:
    """Multi-label: one temperature per level for the node sigmoids, fitted by their binary cross-entropy
    against the ancestor-closed targets on validation (``scores`` [N, |V|] probabilities)."""
    logits = torch.logit(scores.double().clamp(1e-7, 1 - 1e-7))
    levels = int(level_of_node.max()) + 1
    log_t = torch.zeros(levels, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(logits / log_t.exp()[level_of_node], targets.double())
        loss.backward()
        return loss

    optimizer.step(nll)
    return [float(t) for t in log_t.detach().exp()]


def scale_node_scores(scores: torch.Tensor, temperatures: list[float], level_of_node: torch.Tensor) -> torch.Tensor:
    """Node probabilities [N, |V|] with each node's logit divided by its level's temperature."""
    logits = torch.logit(scores.double().clamp(1e-7, 1 - 1e-7))
    return (logits / torch.tensor(temperatures, dtype=torch.float64)[level_of_node]).sigmoid()
