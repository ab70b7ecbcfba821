"""The paper's Open Images tree, 2 / 4 / 24 nodes per level, cut from the official hierarchy by one stated rule.

The paper names neither its 30 nodes nor how it chose them. The rule here (``RULE``): from the root
of the hierarchy (Subcategory edges, each label under its first parent), keep the 2 highest-scoring
children that can carry the rest of the shape, under each of them its 2 highest-scoring such
children, and under each of those its 6 highest-scoring children (2, 4 and 24 nodes). A node
"can carry the shape" when it has enough children that can carry the level below.

Two scores, ties broken by the hierarchy file's order:

- ``hierarchy`` (offline, what the committed ``taxonomies/open_images_paper.csv`` used): the number of
  labels below the node in the hierarchy, a proxy for how many kinds of object an image of it may show;
- ``images`` (``--recut``, needs the train label CSV): the human-verified positive train images
  labelled with the node or any label below it.

    python -m dhnn.data.open_images_cut [--params configs/paper-openimages.yaml] [--root DIR] [--out FILE]
    python -m dhnn.data.open_images_tree --recut     # the same with the ``images`` score, after a fetch
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..params import load_params
from ..taxonomy import Taxonomy
from .open_images_tree import OpenImagesTree, read_image_labels, read_open_images_hierarchy

SHAPE = (2, 2, 6)  # children kept per node, level by level: 2, 2 x 2 = 4, 4 x 6 = 24 nodes
RULE = ("from the hierarchy's root, keep the 2 highest-scoring children that can carry the rest of the shape, "
        "under each the 2 highest-scoring such children, under each of those its 6 highest-scoring children "
        "(2 / 4 / 24 nodes); ties by the hierarchy file's order")
SCORES = {"hierarchy": "the number of labels below the node in the hierarchy (no label counts offline)",
          "images": "human-verified positive train images labelled with the node or any label below it"}


def descendant_counts(tax: Taxonomy) -> dict[str, int]:
    """Nodes below each node (the ``hierarchy`` score)."""
    out: dict[str, int] = {}
    for level in reversed(tax.levels):
        for n in level:
            out[n] = sum(1 + out[c] for c in tax.children(n))
    return out


def image_counts(tree: OpenImagesTree, train_labels_csv: str | os.PathLike[str]) -> dict[str, int]:
    """Positive train images on each node or below it (the ``images`` score)."""
    tax = tree.taxonomy
    out = dict.fromkeys(tax.nodes, 0)
    for nodes in read_image_labels(train_labels_csv, tree).values():
        for n in {a for node in nodes for a in tax.path(node)}:
            out[n] += 1
    return out


def cut_tree(tax: Taxonomy, score: Mapping[str, float], shape: Sequence[int] = SHAPE) -> Taxonomy:
    """The sub-tree of ``tax`` that ``RULE`` keeps: ``shape[k]`` children per node at depth k."""
    order = {n: i for i, n in enumerate(tax.nodes)}

    def carries(node: str | None, k: int) -> bool:
        return k == len(shape) or sum(carries(c, k + 1) for c in tax.children(node)) >= shape[k]

    def pick(node: str | None, k: int) -> list[list[str]]:
        if k == len(shape):
            return [[]]
        ranked = sorted((c for c in tax.children(node) if carries(c, k + 1)), key=lambda c: (-score[c], order[c]))
        return [[c, *rest] for c in ranked[: shape[k]] for rest in pick(c, k + 1)]

    if not carries(None, 0):
        raise ValueError(f"the hierarchy has no sub-tree of shape {' / '.join(map(str, shape))} children per node")
    return Taxonomy.from_paths(pick(None, 0))


def tree_csv(cut: Taxonomy, score_name: str, hierarchy: str) -> str:
    """The cut as a label-path CSV whose ``#`` header states the rule and the score."""
    out = io.StringIO()
    out.write(f"# The paper's Open Images tree ({' / '.join(str(n) for n in cut.level_sizes)} nodes per level), "
              f"cut from {hierarchy} by dhnn.data.open_images_cut.\n"
              f"# Rule: {RULE}.\n# Score: {score_name}: {SCORES[score_name]}.\n"
              "# Names are the display names of class-descriptions-boxable.csv. Labels below a kept node map to it;\n"
              "# labels under a dropped node map to its nearest kept ancestor; labels outside the tree are dropped.\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([f"level_{i + 1}" for i in range(cut.num_levels)])
    writer.writerows(cut.path(leaf) for leaf in cut.leaves)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Write the cut tree file from the data settings of a params file."""
    parser = argparse.ArgumentParser(prog="python -m dhnn.data.open_images_cut", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="configs/paper-openimages.yaml", help="its data section names the files")
    parser.add_argument("--root", help="the folder with the metadata files (default: data.root)")
    parser.add_argument("--out", help="the tree file to write (default: data.tree)")
    parser.add_argument("--recut", action="store_true", help="score by train images (needs data.labels.train)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    data = load_params(args.params).section("data")
    if data["name"] != "open_images":
        raise SystemExit(f"error: {args.params}: data.name is {data['name']!r}, not open_images")
    root = Path(args.root or data["root"])
    names = root / data["class_descriptions"] if data.get("class_descriptions") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multi-parent labels: the first parent, as the pipeline reads them
        tree = read_open_images_hierarchy(root / data["hierarchy"], names, multi_parent=data["multi_parent"],
                                          subtree=data.get("subtree"))
    if args.recut:
        labels = root / data["labels"]["train"]
        if not labels.is_file():
            raise SystemExit(f"error: {labels}: no train label CSV; run the fetch stage first (dvc repro fetch)")
        score_name, score = "images", image_counts(tree, labels)
    else:
        score_name, score = "hierarchy", descendant_counts(tree.taxonomy)
    cut = cut_tree(tree.taxonomy, score)
    out = Path(args.out or data.get("tree") or "taxonomies/open_images_paper.csv")
    out.write_text(tree_csv(cut, score_name, data["hierarchy"]), encoding="utf-8")
    print(f"{out}: {' / '.join(map(str, cut.level_sizes))} nodes by the {score_name} score: "
          + "; ".join(f"{n} ({', '.join(cut.children(n))})" for n in cut.levels[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
