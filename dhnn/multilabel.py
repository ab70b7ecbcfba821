"""Multi-label hierarchical data (Open Images): the configured working tree and its splits.

An image may carry several labels, each switching on its whole root path, and a path may end
above the leaves. The taxonomy stage and the training stage both build the working tree from the
same ``data`` settings, so the labels map onto exactly the tree that taxonomy.json records.
"""
from __future__ import annotations

from pathlib import Path

from .config import resolve
from .data import Splits, split_indices, subsample
from .openimages import (OpenImagesDataset, OpenImagesTree, count_images, prune_by_count, read_image_labels,
                         read_open_images_hierarchy, remap_labels)
from .taxonomy import Taxonomy

SPLITS = ("train", "val", "test")


def _file(cfg: dict, key: str) -> Path:
    """A file named in the data config, relative to ``root``."""
    return resolve(cfg["root"]) / cfg[key]


def _hierarchy(cfg: dict) -> OpenImagesTree:
    """The official hierarchy restricted to ``subtree``/``max_depth``, before pruning."""
    names = _file(cfg, "class_descriptions") if cfg.get("class_descriptions") else None
    return read_open_images_hierarchy(_file(cfg, "hierarchy"), names, multi_parent=cfg.get("multi_parent", "first"),
                                      subtree=cfg.get("subtree"), max_depth=cfg.get("max_depth"))


def open_images_tree(cfg: dict) -> OpenImagesTree:
    """The working tree: the official hierarchy, restricted to ``subtree``/``max_depth``, pruned by ``min_images``.

    Counting images needs the train labels, so ``min_images`` reads ``labels.train``.
    """
    tree = _hierarchy(cfg)
    if cfg.get("min_images"):
        labels = read_image_labels(resolve(cfg["root"]) / cfg["labels"]["train"], tree)
        tree = prune_by_count(tree, count_images(labels), cfg["min_images"])
    return tree


def open_images_splits(cfg: dict, taxonomy: Taxonomy) -> Splits:
    """Train/validation/test multi-label datasets of lazily decoded JPEGs for the working tree.

    ``cfg``: root, hierarchy, class_descriptions, labels {train, val, test} (image-level label
    CSVs), images {train, val, test} (folders of <ImageID>.jpg), the tree options of
    :func:`open_images_tree`, transform, limit_train / limit_test, split_seed, skip_missing,
    verify_images. Without a ``val`` entry a seeded ``val_fraction`` of train is held out.
    """
    from .datasets import build_transforms, _transform_cfg

    full = _hierarchy(cfg)
    tree = open_images_tree(cfg)
    if tree.taxonomy != taxonomy:
        raise ValueError(f"{_file(cfg, 'hierarchy')}: the working tree these data settings give differs from the "
                         "taxonomy passed in; rerun the taxonomy stage")
    root, seed = resolve(cfg["root"]), cfg.get("split_seed", 0)
    labels = {s: remap_labels(read_image_labels(root / f, full), full, tree) for s, f in cfg["labels"].items()}
    folders = dict(cfg["images"])
    if "val" not in labels:  # hold out part of train, as for the other data sets
        ids = list(labels["train"])
        train_idx, val_idx = split_indices(len(ids), cfg.get("val_fraction", 0.1), seed)
        labels["val"] = {ids[i]: labels["train"][ids[i]] for i in val_idx.tolist()}
        labels["train"] = {ids[i]: labels["train"][ids[i]] for i in train_idx.tolist()}
        folders["val"] = folders["train"]
    limits = {"train": cfg.get("limit_train"), "val": cfg.get("limit_val", cfg.get("limit_test")),
              "test": cfg.get("limit_test")}
    datasets = {}
    for split in SPLITS:
        ids = list(labels[split])
        keep = subsample(len(ids), limits[split], seed).tolist()
        chosen = {ids[i]: labels[split][ids[i]] for i in keep}
        ds = OpenImagesDataset(root / folders[split], chosen, taxonomy,
                               build_transforms(cfg.get("transform"), train=split == "train" and cfg.get("augment", True)),
                               skip_missing=cfg.get("skip_missing", False))
        if cfg.get("verify_images", True):
            ds.check_images()  # fail on a bad file now, not hours into training
        datasets[split] = ds
    t = _transform_cfg(cfg.get("transform"))
    return Splits(train=datasets["train"], val=datasets["val"], test=datasets["test"], classes=taxonomy.nodes,
                  in_chans=t["in_chans"], image_size=t["crop"], multilabel=True)
