"""The ``dhnn`` command. ``dhnn predict --model BUNDLE [--k 3] [--backoff TAU] [--json] IMAGE_OR_FOLDER...``

prints the k best paths of each image with their probabilities and, with ``--backoff``, the
deepest prefix of the best path whose probability is at least TAU. Exit codes: 0 done (files in
folders that can't be read are skipped, each named on stderr), 2 bad input (a missing or
unreadable image named on the command line, a folder without images, an unusable bundle).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ..evaluation.backoff import backoff
from .bundle import Bundle, load_bundle
from .images import ImageError, find_images, prepare, read_image
from ..evaluation.prefixes import top_paths_with_prefixes

BATCH = 64  # images per forward pass: bounds memory for large folders


def _probability(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text}")
    return value


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``dhnn`` argument parser, one subcommand per task."""
    parser = argparse.ArgumentParser(prog="dhnn", description="Deep Hierarchical Neural Networks: use a trained model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("predict", help="the k best label paths of images", description=(
        "Print the k best label paths of each image with their probabilities. Images: PNG or JPEG files of any "
        "size and mode, or folders (every .png/.jpg/.jpeg inside, sorted)."))
    p.add_argument("--model", required=True, help="a bundle written by `python -m dhnn.serving.bundle`")
    p.add_argument("--k", type=_positive, default=3, help="how many paths per image (default 3)")
    p.add_argument("--backoff", type=_probability, metavar="TAU",
                   help="also give the deepest prefix of the best path whose probability is at least TAU")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--invert", action="store_true",
                   help="invert the images first: dark objects on a light background, for a model trained on "
                        "light-on-dark images such as Fashion-MNIST")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.set_defaults(run=predict_command)
    return parser


def _prepared(found: Sequence[tuple[Path, bool]], bundle: Bundle, invert: bool
              ) -> tuple[list[Path], list[torch.Tensor]]:
    """The usable images of ``found`` and their model inputs; bad files from folders are skipped, named on stderr."""
    files, tensors = [], []
    for path, from_folder in found:
        try:
            img = read_image(path, bundle.preprocessing["mode"])
        except ImageError as err:
            if not from_folder:  # a file asked for by name is an error, not something to skip
                raise
            print(f"warning: {err}; skipped", file=sys.stderr)
            continue
        files.append(path)
        tensors.append(prepare(img, bundle.preprocessing, invert))
    return files, tensors


def predict_images(bundle: Bundle, files: Sequence[Path], tensors: Sequence[torch.Tensor], k: int,
                   tau: float | None = None) -> list[dict]:
    """One record per image: its k best paths (best first) with probabilities, and the back-off at ``tau``.

    A bundle with temperatures gives calibrated probabilities: each path's is its deepest prefix's.
    """
    tree, records, temps = bundle.taxonomy, [], bundle.temperatures
    for start in range(0, len(tensors), BATCH):
        batch = torch.stack(list(tensors[start:start + BATCH]))
        indices, scores, prefixes = top_paths_with_prefixes(bundle.model, batch, k, temps)
        if temps is not None:
            last = ((~prefixes.isnan()).sum(-1, keepdim=True) - 1).clamp(min=0)
            scores = prefixes.gather(-1, last).squeeze(-1).nan_to_num(nan=0.0)
        for i, path in enumerate(files[start:start + BATCH]):
            names = tree.decode(indices[i])
            # empty slots (fewer paths than k in the tree) have no nodes
            paths = [{"path": p, "probability": float(s)} for p, s in zip(names, scores[i].tolist()) if p]
            record = {"image": str(path), "paths": paths, "backoff": None}
            if tau is not None and paths:
                probs = prefixes[i, 0, : len(names[0])].tolist()
                prefix, p = backoff(probs, tau, names[0])
                record["backoff"] = {"tau": tau, "path": prefix, "depth": len(prefix), "probability": p,
                                     "prefix_probabilities": probs}
            records.append(record)
    return records


def format_text(records: Sequence[dict]) -> str:
    """Plain text: the image, then one numbered line per path, then the back-off line."""
    lines = []
    for r in records:
        lines.append(f"{r['image']}:")
        for rank, p in enumerate(r["paths"], 1):
            lines.append(f"  {rank}. {' / '.join(p['path'])}  {p['probability']:.3f}")
        b = r["backoff"]
        if b is not None:
            answer = (f"{' / '.join(b['path'])}  {b['probability']:.3f}" if b["path"]
                      else "no decision (level 1 is below tau)")
            lines.append(f"  back-off at {b['tau']:g}: {answer}")
    return "\n".join(lines)


def predict_command(args: argparse.Namespace) -> int:
    """``dhnn predict``."""
    bundle = load_bundle(args.model)
    if bundle.multilabel:
        raise ValueError(f"{args.model}: a multi-label model (it scores node sets); `dhnn predict` needs a "
                         f"path model")
    found = find_images(args.images)
    records = []
    with torch.inference_mode():
        # a batch at a time, so that a large folder never sits in memory as prepared tensors
        for start in range(0, len(found), BATCH):
            files, tensors = _prepared(found[start:start + BATCH], bundle, args.invert)
            if files:
                records += predict_images(bundle, files, tensors, args.k, args.backoff)
    if not records:
        raise ImageError(f"{', '.join(map(str, args.images))}: no readable images")
    print(json.dumps(records, indent=2, ensure_ascii=False) if args.json else format_text(records))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``dhnn`` command; returns the exit code (2: bad input, with the reason on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as err:  # ImageError and BundleError are ValueErrors and name their file
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
