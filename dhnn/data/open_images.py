"""Multi-label hierarchical data (Open Images): the configured working tree and its splits.

An image may carry several labels, each switching on its whole root path, and a path may end
above the leaves. The taxonomy stage and the training stage both build the working tree from the
same ``data`` settings, so the labels map onto exactly the tree that taxonomy.json records.
"""
from __future__ import annotations

from pathlib import Path

import csv
import hashlib
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from ..paths import resolve
from ..taxonomy import Taxonomy
from .base import Splits, data_settings, folder_fingerprint, split_indices, subsample
from .images import build_transforms, transform_settings
from .open_images_tree import (OpenImagesTree, count_images, keep_nodes, multi_hot, prune_by_count, read_image_labels,
                               read_open_images_hierarchy, read_tree_file, remap_labels)

SPLITS = ("train", "val", "test")
MISSING = "missing.csv"  # under root: split,ImageID,url,reason of each image the fetch could not have


def _image_path(images_dir: Path, image_id: str) -> Path:
    return images_dir / f"{image_id}.jpg"


def check_images(images_dir: str | os.PathLike[str], image_ids: Iterable[str]) -> None:
    """Fully decode every ``<ImageID>.jpg``; raise naming the first missing or unreadable file."""
    for image_id in image_ids:
        path = _image_path(Path(images_dir), image_id)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image file not found")
        try:
            with Image.open(path) as image:
                image.load()  # verify() alone misses truncated JPEGs
        except OSError as e:
            raise OSError(f"{path}: cannot read image ({e})") from None


class OpenImagesDataset(Dataset):
    """Lazily decoded ``<images_dir>/<ImageID>.jpg`` with multi-hot node targets.

    Items are ``(image, targets[i], i)``: the transformed RGB image (uint8 [3, H, W] without a
    transform), the multi-hot over ``taxonomy.nodes`` with every ancestor on, and the index, which
    also finds ``image_ids[i]`` and ``original[i]`` (the labels as annotated, for path F1).
    Labelled images without a file raise a FileNotFoundError (how many, and the first few), or with
    ``skip_missing`` (the data config's ``skip_missing``) are dropped with a warning.
    """

    def __init__(self, images_dir: str | os.PathLike[str], image_labels: Mapping[str, Sequence[str]],
                 taxonomy: Taxonomy, transform: Callable[[Image.Image], Any] | None = None, *,
                 skip_missing: bool = False) -> None:
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"{images_dir}: not a folder (expected <ImageID>.jpg files)")
        if not image_labels:
            raise ValueError(f"{images_dir}: no labelled images given")
        present = {entry.name for entry in os.scandir(self.images_dir)}  # one listing, not N stats
        ids = list(image_labels)
        missing = [i for i in ids if f"{i}.jpg" not in present]
        if missing:
            message = (f"{images_dir}: {len(missing)} of {len(ids)} labelled images have no "
                       f"<ImageID>.jpg file (first: {', '.join(missing[:5])})")
            if not skip_missing:
                raise FileNotFoundError(message + "; set skip_missing to drop them")
            warnings.warn(message + "; dropped them (skip_missing)", stacklevel=2)
            gone = set(missing)
            ids = [i for i in ids if i not in gone]
            if not ids:
                raise FileNotFoundError(f"{images_dir}: none of the labelled images is there")
        self.image_ids: list[str] = ids
        self.targets = multi_hot([image_labels[i] for i in ids], taxonomy)
        self.original = multi_hot([image_labels[i] for i in ids], taxonomy, ancestors=False)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor, int]:
        path = _image_path(self.images_dir, self.image_ids[i])
        try:
            with Image.open(path) as f:
                image = f.convert("RGB")
        except OSError as e:
            raise OSError(f"{path}: cannot read image ({e})") from None
        x = self.transform(image) if self.transform is not None else pil_to_tensor(image)
        return x, self.targets[i], i

    def check_images(self) -> None:
        """Decode every image once, failing on the first bad file (run before a long training)."""
        check_images(self.images_dir, self.image_ids)


def _file(cfg: dict, key: str) -> Path:
    """A file named in the data config, relative to ``root``."""
    return resolve(cfg["root"]) / cfg[key]


def _hierarchy(cfg: dict) -> OpenImagesTree:
    """The official hierarchy restricted to ``subtree``/``max_depth``, before pruning."""
    names = _file(cfg, "class_descriptions") if cfg.get("class_descriptions") else None
    return read_open_images_hierarchy(_file(cfg, "hierarchy"), names, multi_parent=cfg["multi_parent"],
                                      subtree=cfg.get("subtree"), max_depth=cfg.get("max_depth"))


def open_images_tree(cfg: dict) -> OpenImagesTree:
    """The working tree: the official hierarchy, restricted to ``subtree``/``max_depth``, then to the nodes
    of the ``tree`` file, then pruned by ``min_images``.

    Counting images needs the train labels, so ``min_images`` reads ``labels.train``.
    """
    cfg = data_settings(cfg)
    tree = _hierarchy(cfg)
    if cfg.get("tree"):
        tree = keep_nodes(tree, read_tree_file(resolve(cfg["tree"])), cfg["tree"])
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
    cfg = data_settings(cfg)
    full = _hierarchy(cfg)
    tree = open_images_tree(cfg)
    if tree.taxonomy != taxonomy:
        raise ValueError(f"{_file(cfg, 'hierarchy')}: the working tree these data settings give differs from the "
                         "taxonomy passed in; rerun the taxonomy stage")
    root, seed = resolve(cfg["root"]), cfg["split_seed"]
    labels = {s: remap_labels(read_image_labels(root / f, full), full, tree) for s, f in cfg["labels"].items()}
    if cfg.get("fetch"):  # exactly the images the fetch stage fetched: its selection, less what the bucket lacked
        missing = read_missing(root)
        for s, split_labels in labels.items():
            keep = set(fetched_selection(split_labels, cfg["fetch"]["max_images_per_split"])) - missing.get(s, set())
            labels[s] = {i: nodes for i, nodes in split_labels.items() if i in keep}
    folders = dict(cfg["images"])
    if "val" not in labels:  # hold out part of train, as for the other data sets
        ids = list(labels["train"])
        train_idx, val_idx = split_indices(len(ids), cfg["val_fraction"], seed)
        labels["val"] = {ids[i]: labels["train"][ids[i]] for i in val_idx.tolist()}
        labels["train"] = {ids[i]: labels["train"][ids[i]] for i in train_idx.tolist()}
        folders["val"] = folders["train"]
    limits = {"train": cfg.get("limit_train"), "val": cfg.get("limit_val") or cfg.get("limit_test"),
              "test": cfg.get("limit_test")}
    datasets = {}
    for split in SPLITS:
        ids = list(labels[split])
        keep = subsample(len(ids), limits[split], seed).tolist()
        chosen = {ids[i]: labels[split][ids[i]] for i in keep}
        ds = OpenImagesDataset(root / folders[split], chosen, taxonomy,
                               build_transforms(cfg.get("transform"), train=split == "train" and cfg["augment"]),
                               skip_missing=cfg["skip_missing"])
        if cfg["verify_images"]:
            ds.check_images()  # fail on a bad file now, not hours into training
        datasets[split] = ds
    t = transform_settings(cfg.get("transform"))
    return Splits(train=datasets["train"], val=datasets["val"], test=datasets["test"], classes=taxonomy.nodes,
                  in_chans=t["in_chans"], image_size=t["crop"])


def fetched_selection(image_ids: Iterable[str], max_images: int | None) -> list[str]:
    """The images a fetch takes from a split: all, or the first ``max_images`` in a fixed hashed order.

    The order depends on the ids alone, so a larger ``max_images`` only adds images (a rerun fetches
    just those), and a sample of a split is spread over it rather than its first ids.
    """
    ordered = sorted(image_ids, key=lambda i: hashlib.sha1(i.encode()).hexdigest())
    return ordered if max_images is None else ordered[:max_images]


def read_missing(root: str | os.PathLike[str]) -> dict[str, set[str]]:
    """split -> the ImageIDs listed in ``root/missing.csv`` (none when there is no such file)."""
    out: dict[str, set[str]] = {}
    path = Path(root) / MISSING
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                out.setdefault(row["split"], set()).add(row["ImageID"])
    return out


# -- the data-source interface (see dhnn.data.registry) -------------------------------------------

def classes(cfg: dict) -> list[str]:
    """Every node of the working tree is a label."""
    cfg = data_settings(cfg)
    return open_images_tree(cfg).taxonomy.nodes


def taxonomy(data_cfg: dict, taxonomy_cfg: dict) -> Taxonomy:
    """The working tree cut from the official hierarchy (see :func:`open_images_tree`)."""
    data_cfg = data_settings(data_cfg)
    return open_images_tree(data_cfg).taxonomy


def check(cfg: dict) -> dict[str, str]:
    """The hierarchy and label files are readable; return a fingerprint of the data folder."""
    cfg = data_settings(cfg)
    open_images_tree(cfg)
    return folder_fingerprint(resolve(cfg["root"]))


def splits(cfg: dict, tree: Taxonomy) -> Splits:
    """Multi-label train, validation and test sets (see :func:`open_images_splits`)."""
    cfg = data_settings(cfg)
    return open_images_splits(cfg, tree)
