"""Train one variant of a node-set (multi-label) params file on a few scenes and print where its F1 is lost.

    python benchmarks/s2s_diagnosis.py S2S-Pool --train 512 --val 500 --epochs 40 --eval-train
    python benchmarks/s2s_diagnosis.py S2S-Pool '{"s2s": {"hidden_size": 128}}' --train 5000 --epochs 6

The issue-15 diagnosis of multi-label CNN-S2S (docs/s2s-diagnosis.md). Per epoch: the training
loss, validation node and path F1 (each at its best threshold on validation) and, with
``--eval-train``, node F1 on the training scenes at their own best threshold (the overfit check).
After the last epoch: node F1 per level on validation at the global threshold and at each level's
own, and for CNN-S2S how well its END token marks where paths stop. The JSON object overrides
keys of the variant's entry; its "train" key overrides the train section. Defaults to the scenes
profile (configs/fashion-scenes.yaml); nothing is written outside a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dhnn.data.base import make_loader  # noqa: E402
from dhnn.evaluation.inference import predict_scores  # noqa: E402
from dhnn.evaluation.metrics import node_f1, path_f1, search_threshold, weighted_f1  # noqa: E402
from dhnn.models.s2s import CNNS2S, path_stops  # noqa: E402
from dhnn.params import validate  # noqa: E402
from dhnn.pipeline import layout, taxonomy_stage, train_stage  # noqa: E402
from dhnn.training.loop import make_optimizer, train_one_epoch  # noqa: E402


def level_f1(scores: torch.Tensor, targets: torch.Tensor, levels: torch.Tensor, thresholds: list[float]) -> list[float]:
    """Node F1 of each level's nodes alone, level t predicted at ``thresholds[t]``."""
    return [weighted_f1(targets[:, levels == t], scores[:, levels == t] >= th) for t, th in enumerate(thresholds)]


def per_level_thresholds(scores: torch.Tensor, targets: torch.Tensor, levels: torch.Tensor) -> list[float]:
    """Each level's own best threshold for its nodes' F1."""
    return [search_threshold(scores[:, levels == t], targets[:, levels == t], node_f1)[0]
            for t in range(int(levels.max()) + 1)]


@torch.no_grad()
def end_f1(model: CNNS2S, loader, device: torch.device) -> list[float]:
    """F1 of the END token at each decoder step 1..T against where the scenes' paths stop (threshold 0.5)."""
    model.eval()
    tp = fp = fn = None
    for images, targets, _ in loader:
        logits = model(images.to(device, memory_format=torch.channels_last)).logits.float()
        want = model.set_targets(targets.to(device))[:, 1:, model.end] > 0.5
        got = logits[:, 1:, model.end].sigmoid() >= 0.5
        counts = [(got & want).sum(0), (got & ~want).sum(0), (~got & want).sum(0)]
        tp, fp, fn = counts if tp is None else (tp + counts[0], fp + counts[1], fn + counts[2])
    return (2 * tp / (2 * tp + fp + fn).clamp(min=1)).tolist()


def main() -> None:
    """Train the changed variant on a reduced scene set and print its diagnosis."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variant")
    parser.add_argument("overrides", nargs="?", default="{}")
    parser.add_argument("--params", default=str(ROOT / "configs" / "fashion-scenes.yaml"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=2000, help="training scenes")
    parser.add_argument("--val", type=int, default=1000, help="validation scenes")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--eval-train", action="store_true", help="node F1 on the training scenes each epoch")
    args = parser.parse_args()
    raw = yaml.safe_load(Path(args.params).read_text())
    overrides = json.loads(args.overrides)
    raw["train"].update(overrides.pop("train", {}))
    raw["train"]["epochs"] = args.epochs
    raw["data"].update(train_scenes=args.train, val_scenes=args.val, test_scenes=10)
    variant = raw["variants"][args.variant]
    # a nested entry (s2s, rnn) changes only the keys given, so '{"s2s": {"feed": "teacher"}}' keeps the hidden size
    raw["variants"] = {args.variant: {**variant, **{k: {**variant[k], **v} if isinstance(v, dict) and isinstance(
        variant.get(k), dict) else v for k, v in overrides.items()}}}
    raw["grid"] = {"variants": [args.variant], "seeds": [args.seed]}
    params = validate(raw, args.params)
    with tempfile.TemporaryDirectory(prefix="dhnn-s2s-") as tmp:
        taxonomy_stage.save_taxonomy(taxonomy_stage.build_taxonomy(params), tmp)
        run = train_stage.prepare_training(params, args.variant, args.seed, layout.taxonomy_path(tmp))
    model, t, device = run.model, params.train, torch.device("cpu")
    train_loader = make_loader(run.splits.train, t.batch_size, shuffle=True, seed=args.seed)
    train_eval = make_loader(run.splits.train, 1000, shuffle=False, seed=args.seed)
    val_loader = make_loader(run.splits.val, 1000, shuffle=False, seed=args.seed)
    model.to(device, memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, t.lr, t.weight_decay, args.epochs, len(train_loader), t.optimizer, t.schedule)
    levels = torch.tensor([run.tree.depth(n) - 1 for n in run.tree.nodes])
    print(f"{args.variant} {json.dumps(json.loads(args.overrides))} train {args.train} val {args.val} "
          f"epochs {args.epochs} lr {t.lr} seed {args.seed}: {run.parameters:,} parameters", flush=True)
    for epoch in range(args.epochs):
        stats = train_one_epoch(model, train_loader, opt, sched, device, t.level_weights, epoch, amp=False)
        scores, targets, index = predict_scores(model, val_loader, device, amp=False)
        original = run.splits.val.original[index]
        node = search_threshold(scores, targets, node_f1)
        path = search_threshold(scores, original, lambda s, y, th: path_f1(s, y, run.tree, th))
        line = (f"epoch {epoch + 1}: loss {stats['loss']:.4f}  val node F1 {100 * node[1]:.2f} (th {node[0]:.2f})"
                f"  path F1 {100 * path[1]:.2f} (th {path[0]:.2f})")
        if args.eval_train:
            tr_scores, tr_targets, _ = predict_scores(model, train_eval, device, amp=False)
            line += f"  train node F1 {100 * search_threshold(tr_scores, tr_targets, node_f1)[1]:.2f}"
        print(line, flush=True)
    glob = level_f1(scores, targets, levels, [node[0]] * (int(levels.max()) + 1))
    own_th = per_level_thresholds(scores, targets, levels)
    own = level_f1(scores, targets, levels, own_th)
    print("val node F1 per level, global threshold:", " ".join(f"{100 * v:.2f}" for v in glob))
    print("val node F1 per level, own thresholds:  ", " ".join(f"{100 * v:.2f}" for v in own),
          "at", own_th)
    # the per-level thresholds as one decision rule, scored as node F1 over all nodes
    th_row = torch.tensor(own_th, dtype=torch.float64)[levels]
    print(f"val node F1, per-level thresholds (chosen on val): {100 * weighted_f1(targets, scores >= th_row):.2f}")
    if isinstance(model, CNNS2S):
        print("val END F1 by step 1..T (threshold 0.5):", " ".join(f"{100 * v:.2f}" for v in end_f1(model, val_loader, device)))
    stops = path_stops(targets, run.tree).float().mean(0)
    print("val paths stopping at each level, per 100 scenes:",
          " ".join(f"{100 * stops[levels == lv].sum():.1f}" for lv in range(int(levels.max()) + 1)))


if __name__ == "__main__":
    main()
