"""Open Images: the official class hierarchy as a Taxonomy, and the image-level labels on it.

Getting the data (needs a network; nothing here downloads). From the official download page
(https://storage.googleapis.com/openimages/web/download_v6.html, or the V4/V5 pages):

- ``bbox_labels_600_hierarchy.json``: the class hierarchy (V4 and later);
- ``class-descriptions-boxable.csv``: ``LabelName,DisplayName`` rows, no header;
- ``{train,validation,test}-annotations-human-imagelabels-boxable.csv``: human-verified image-level
  labels, header ``ImageID,Source,LabelName,Confidence`` (Confidence 1 = present, 0 = verified absent);
- the images, as ``<ImageID>.jpg`` in one folder per split, e.g. with the official ``downloader.py``
  (``python downloader.py ids.txt --download_folder=images/train``, one ``train/<ImageID>`` per line).

The hierarchy is a DAG, not a tree: ``Subcategory`` lists are is-a edges, ``Part`` lists are
part-of edges (a wheel is part of a car, not a kind of car), and a few labels sit under two parents.
``read_open_images_hierarchy`` keeps only Subcategory edges and resolves multi-parent labels by an
explicit policy, reporting every one it resolved.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..taxonomy import Taxonomy

MULTI_PARENT_POLICIES = ("first", "error")
LABEL_COLUMNS = ("ImageID", "LabelName", "Confidence")


@dataclass
class OpenImagesTree:
    """A Taxonomy built from the Open Images hierarchy, plus the label-id bookkeeping around it.

    ``label_to_node`` covers every label of the selected hierarchy: labels cut by ``max_depth`` or
    pruned by ``prune_by_count`` map to their nearest kept ancestor, so an image labelled with them
    still gets a (shorter) path. ``multi_parent`` lists, for each label with several parents, all of
    them in file order; the tree keeps the first (see ``chosen_parent``).
    """

    taxonomy: Taxonomy
    label_to_node: dict[str, str]
    node_to_label: dict[str, str]
    multi_parent: dict[str, list[str]]
    root_label: str
    part_edges: list[tuple[str, str]]

    @property
    def chosen_parent(self) -> dict[str, str]:
        """For each multi-parent label, the parent label the tree kept."""
        return {label: parents[0] for label, parents in self.multi_parent.items()}


# -- hierarchy ------------------------------------------------------------------------------------


def read_class_descriptions(csv_path: str | os.PathLike[str]) -> dict[str, str]:
    """LabelName -> DisplayName from a class-descriptions CSV, with or without a header row."""
    names: dict[str, str] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        first = True
        for row in reader:
            where = f"{csv_path}: line {reader.line_num}"
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            if first and cells[:2] == ["LabelName", "DisplayName"]:
                first = False
                continue  # the official file has no header, but hand-made ones often do
            first = False
            if len(cells) != 2 or not all(cells):
                raise ValueError(f"{where}: expected two non-empty cells LabelName,DisplayName, got {row}")
            label, name = cells
            if names.get(label, name) != name:
                raise ValueError(f"{where}: {label} is named {name!r} here but {names[label]!r} earlier")
            names[label] = name
    if not names:
        raise ValueError(f"{csv_path}: no LabelName,DisplayName rows")
    return names


def _entries(node: Mapping[str, Any], key: str, path: object, trail: str) -> list[Mapping[str, Any]]:
    items = node.get(key, [])
    ok = isinstance(items, list) and all(
        isinstance(x, dict) and isinstance(x.get("LabelName"), str) and x["LabelName"] for x in items)
    if not ok:
        raise ValueError(f"{path}: {key!r} under {trail} must be a list of objects with a 'LabelName'")
    return items


def _walk(data: Mapping[str, Any], path: object) -> tuple[list[tuple[str, str, tuple[str, ...]]],
                                                         list[tuple[str, str]]]:
    """Every Subcategory occurrence as (label, parent, enclosing labels), in file order; Part edges."""
    occurrences: list[tuple[str, str, tuple[str, ...]]] = []
    parts: list[tuple[str, str]] = []

    def visit(node: Mapping[str, Any], chain: tuple[str, ...]) -> None:
        label = node["LabelName"]
        chain = chain + (label,)
        trail = " > ".join(chain)
        # Part entries are not kinds of their parent and are not descended into.
        parts.extend((label, p["LabelName"]) for p in _entries(node, "Part", path, trail))
        for child in _entries(node, "Subcategory", path, trail):
            if child["LabelName"] in chain:
                raise ValueError(f"{path}: {child['LabelName']} is its own ancestor "
                                 f"({trail} > {child['LabelName']})")
            occurrences.append((child["LabelName"], label, chain))
            visit(child, chain)

    visit(data, ())
    return occurrences, parts


def _resolve_subtree(subtree: str, labels: set[str], names: Mapping[str, str], path: object) -> str:
    if subtree in labels:
        return subtree
    matches = sorted(label for label in labels if names.get(label) == subtree)
    if len(matches) > 1:
        raise ValueError(f"{path}: subtree {subtree!r} is the display name of several labels "
                         f"{matches}; pass the label id instead")
    if not matches:
        raise ValueError(f"{path}: subtree {subtree!r} is neither a label id nor a display name "
                         f"of the hierarchy")
    return matches[0]


def read_open_images_hierarchy(
    hierarchy_json: str | os.PathLike[str],
    class_descriptions_csv: str | os.PathLike[str] | None = None,
    *,
    multi_parent: str = "first",
    root_label: str | None = None,
    subtree: str | None = None,
    max_depth: int | None = None,
) -> OpenImagesTree:
    """Build the tree of an Open Images hierarchy JSON (Subcategory edges only; see OpenImagesTree).

    multi_parent: "first" keeps each label's first parent in file order (and warns with a count),
    "error" raises listing the multi-parent labels. root_label: the LabelName the top object must
    carry (e.g. "/m/0bl9f"), a guard against a wrong file. subtree: a label id or display name whose
    descendants form the tree, itself becoming the implicit root. max_depth: deeper labels map to
    their ancestor at that depth. Node names are display names, or "DisplayName (/m/id)" where two
    kept labels share one; without a descriptions CSV they are the label ids.
    """
    if multi_parent not in MULTI_PARENT_POLICIES:
        raise ValueError(f"multi_parent must be one of {MULTI_PARENT_POLICIES}, got {multi_parent!r}")
    if max_depth is not None and (not isinstance(max_depth, int) or max_depth < 1):
        raise ValueError(f"max_depth must be a positive integer or None, got {max_depth!r}")
    try:
        with open(hierarchy_json, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{hierarchy_json}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("LabelName"), str):
        raise ValueError(f"{hierarchy_json}: the top-level object needs a 'LabelName' (the root, "
                         f"/m/0bl9f 'Entity' in the official file)")
    top = data["LabelName"]
    if root_label is not None and top != root_label:
        raise ValueError(f"{hierarchy_json}: the root is {top}, expected {root_label}")
    names = read_class_descriptions(class_descriptions_csv) if class_descriptions_csv else {}
    occurrences, part_edges = _walk(data, hierarchy_json)
    root = top if subtree is None else _resolve_subtree(
        subtree, {top, *(o[0] for o in occurrences)}, names, hierarchy_json)

    # Parents in file order, counting only occurrences below the root. The first parent of a label
    # always occurs earlier in the file than the label itself, so "first" can never form a cycle.
    parents: dict[str, list[str]] = {}
    for label, parent, chain in occurrences:
        if root in chain and parent not in parents.setdefault(label, []):
            parents[label].append(parent)
    if not parents:
        raise ValueError(f"{hierarchy_json}: {root} has no Subcategory entries")
    several = {label: ps for label, ps in parents.items() if len(ps) > 1}
    if several and multi_parent == "error":
        shown = "; ".join(f"{_named(l, names)} under {', '.join(_named(p, names) for p in ps)}"
                          for l, ps in list(several.items())[:20])
        raise ValueError(f"{hierarchy_json}: {len(several)} labels have more than one parent "
                         f"(multi_parent='error'): {shown}")
    if several:
        shown = ", ".join(_named(l, names) for l in list(several)[:5])
        warnings.warn(f"{hierarchy_json}: {len(several)} labels have more than one parent ({shown}"
                      f"{', ...' if len(several) > 5 else ''}); kept the first parent in file order "
                      f"(multi_parent='first'; see OpenImagesTree.multi_parent)", stacklevel=2)

    depth: dict[str, int] = {}
    anchor: dict[str, str] = {}  # label -> its kept node label (itself, or its ancestor at max_depth)
    for label, ps in parents.items():  # insertion order puts every parent before its children
        p = ps[0]
        depth[label] = 1 if p == root else depth[p] + 1
        anchor[label] = label if max_depth is None or depth[label] <= max_depth else anchor[p]
    kept = [label for label in parents if anchor[label] == label]

    missing = [label for label in kept if names and label not in names]
    if missing:
        raise ValueError(f"{class_descriptions_csv}: no display name for {len(missing)} labels of the "
                         f"hierarchy (first: {', '.join(missing[:5])})")
    shown_names = Counter(names.get(label, label) for label in kept)
    node_of = {label: names.get(label, label) if shown_names[names.get(label, label)] == 1
               else f"{names[label]} ({label})" for label in kept}

    levels: list[list[str]] = [[] for _ in range(max(depth[label] for label in kept))]
    parent_of: dict[str, str | None] = {}
    for label in kept:
        levels[depth[label] - 1].append(node_of[label])
        p = parents[label][0]
        parent_of[node_of[label]] = None if p == root else node_of[p]
    return OpenImagesTree(
        taxonomy=Taxonomy(levels, parent_of),
        label_to_node={label: node_of[anchor[label]] for label in parents},
        node_to_label={node: label for label, node in node_of.items()},
        multi_parent=several, root_label=root, part_edges=part_edges)


def _named(label: str, names: Mapping[str, str]) -> str:
    return f"{names[label]} ({label})" if label in names else label


def taxonomy_from_open_images(
    hierarchy_json: str | os.PathLike[str],
    class_descriptions_csv: str | os.PathLike[str] | None = None,
    **kw: Any,
) -> Taxonomy:
    """Just the Taxonomy of read_open_images_hierarchy (same options)."""
    return read_open_images_hierarchy(hierarchy_json, class_descriptions_csv, **kw).taxonomy


def prune_by_count(tree: OpenImagesTree, counts: Mapping[str, int], min_images: int) -> OpenImagesTree:
    """Drop nodes with fewer than ``min_images`` images; their labels fold into the kept ancestor.

    ``counts`` are images per node as labelled (``count_images``). Working up from the leaves, a
    pruned node's count is added to its parent's, because its images would end their path there
    (an image with two folded labels then counts twice: counts are a proxy, not a census). A node
    stays if its count reaches ``min_images`` or any child stays.
    """
    tax = tree.taxonomy
    unknown = [n for n in counts if n not in tax]
    if unknown:
        raise ValueError(f"counts name nodes that are not in the taxonomy: {unknown[:5]}")
    if not isinstance(min_images, int) or min_images < 0:
        raise ValueError(f"min_images must be a non-negative integer, got {min_images!r}")
    count = {n: int(counts.get(n, 0)) for n in tax.nodes}
    keep: dict[str, bool] = {}
    for level in reversed(tax.levels):
        for n in level:
            keep[n] = count[n] >= min_images or any(keep[c] for c in tax.children(n))
            parent = tax.parent(n)
            if not keep[n] and parent is not None:
                count[parent] += count[n]
    if not any(keep.values()):
        raise ValueError(f"min_images={min_images} prunes every node (largest count: {max(count.values())})")
    return _restrict(tree, keep)


def read_tree_file(path: str | os.PathLike[str]) -> Taxonomy:
    """A label-path CSV (header ``level_1,level_2,...``) whose leading ``#`` lines are comments."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such tree file") from None
    body = [line for line in lines if not line.startswith("#")]
    if not body:
        raise ValueError(f"{path}: no header row after the comments")
    rows = [[c.strip() for c in row] for row in csv.reader(body[1:])]
    paths = [[c for c in row if c] for row in rows if any(row)]
    if not paths:
        raise ValueError(f"{path}: no label paths after the header row")
    try:
        return Taxonomy.from_paths(paths)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def keep_nodes(tree: OpenImagesTree, wanted: Taxonomy, source: str = "tree file") -> OpenImagesTree:
    """Only the nodes of ``wanted`` (each under its hierarchy parent); other labels fold into their kept ancestor."""
    tax = tree.taxonomy
    for node in wanted.nodes:
        if node not in tax:
            raise ValueError(f"{source}: {node!r} is not a class of the hierarchy at the configured subtree/max_depth")
        if wanted.path(node) != tax.path(node):
            raise ValueError(f"{source}: {node!r} sits under {' > '.join(wanted.path(node)[:-1]) or 'the root'}, "
                             f"but the hierarchy has it under {' > '.join(tax.path(node)[:-1]) or 'the root'}")
    return _restrict(tree, {n: n in wanted for n in tax.nodes})


def _restrict(tree: OpenImagesTree, keep: Mapping[str, bool]) -> OpenImagesTree:
    """``tree`` with only the kept nodes (a kept node's parent is kept); labels map to their nearest kept ancestor."""
    tax = tree.taxonomy
    levels = [[n for n in level if keep[n]] for level in tax.levels]
    levels = [level for level in levels if level]  # a kept node's parent is kept: no gaps

    def kept_ancestor(node: str | None) -> str | None:
        while node is not None and not keep[node]:
            node = tax.parent(node)
        return node

    label_to_node = {label: kept_ancestor(node) for label, node in tree.label_to_node.items()}
    return OpenImagesTree(
        taxonomy=Taxonomy(levels, {n: tax.parent(n) for level in levels for n in level}),
        label_to_node={label: node for label, node in label_to_node.items() if node is not None},
        node_to_label={n: label for n, label in tree.node_to_label.items() if keep[n]},
        multi_parent=tree.multi_parent, root_label=tree.root_label, part_edges=tree.part_edges)


# -- labels ---------------------------------------------------------------------------------------


def read_image_labels(csv_path: str | os.PathLike[str], tree: OpenImagesTree, *,
                      min_confidence: float = 1) -> dict[str, list[str]]:
    """ImageID -> its nodes, from an image-level labels CSV (ImageID,Source,LabelName,Confidence).

    Rows with Confidence >= min_confidence are positives (0 marks a verified absence). Labels outside
    the tree are dropped, labels cut by max_depth or pruning map to their kept ancestor, and images
    left without any node are left out. Nodes keep their first-seen order, without repeats.
    """
    out: dict[str, list[str]] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in LABEL_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{csv_path}: line 1: missing column(s) {missing}; expected the header "
                             f"ImageID,Source,LabelName,Confidence, got {header}")
        i_image, i_label, i_conf = (header.index(c) for c in LABEL_COLUMNS)
        for row in reader:
            if not row:
                continue
            where = f"{csv_path}: line {reader.line_num}"
            if len(row) != len(header):
                raise ValueError(f"{where}: {len(row)} cells, but the header has {len(header)}")
            image, label = row[i_image].strip(), row[i_label].strip()
            if not image or not label:
                raise ValueError(f"{where}: empty ImageID or LabelName")
            try:
                confidence = float(row[i_conf])
            except ValueError:
                raise ValueError(f"{where}: Confidence {row[i_conf]!r} is not a number") from None
            node = tree.label_to_node.get(label)
            if confidence < min_confidence or node is None:
                continue
            nodes = out.setdefault(image, [])
            if node not in nodes:
                nodes.append(node)
    return out


def count_images(image_labels: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Images per node, counting only the nodes each image is labelled with (not their ancestors)."""
    return dict(Counter(n for nodes in image_labels.values() for n in set(nodes)))


def remap_labels(image_labels: Mapping[str, Sequence[str]], old: OpenImagesTree,
                 new: OpenImagesTree) -> dict[str, list[str]]:
    """Move labels read with ``old`` onto ``new`` (e.g. its pruned version); images left empty go."""
    out: dict[str, list[str]] = {}
    for image, nodes in image_labels.items():
        mapped = [new.label_to_node.get(old.node_to_label[n]) for n in nodes]
        mapped = list(dict.fromkeys(n for n in mapped if n is not None))
        if mapped:
            out[image] = mapped
    return out


def multi_hot(node_lists: Sequence[Sequence[str]], taxonomy: Taxonomy, *,
              ancestors: bool = True) -> torch.Tensor:
    """Float [N, |V|] over ``taxonomy.nodes``: each listed node and (by default) all its ancestors.

    An image may list several nodes (several paths), and a path may end above the leaves. With
    ``ancestors=False`` only the listed nodes are on: the "original labels" path F1 compares with.
    """
    index = {n: i for i, n in enumerate(taxonomy.nodes)}
    columns: dict[str, list[int]] = {}
    rows: list[int] = []
    cols: list[int] = []
    for r, nodes in enumerate(node_lists):
        if isinstance(nodes, str):
            raise ValueError(f"image {r}: expected a list of node names, got the string {nodes!r}")
        for n in nodes:
            if n not in columns:
                if n not in index:
                    raise ValueError(f"image {r}: {n!r} is not a node of the taxonomy")
                columns[n] = [index[a] for a in taxonomy.path(n)] if ancestors else [index[n]]
            rows.extend([r] * len(columns[n]))
            cols.extend(columns[n])
    out = torch.zeros(len(node_lists), len(index))
    out[rows, cols] = 1.0
    return out


if __name__ == "__main__":  # `python -m dhnn.data.open_images_tree --recut`: see dhnn.data.open_images_cut
    import runpy

    runpy.run_module(f"{__package__}.open_images_cut", run_name="__main__")  # by a relative name: see registry.py
