"""Fashion-MNIST scenes: a multi-label hierarchical benchmark made offline from Fashion-MNIST.

Each scene is a 56x56 canvas of 2x2 cells of 28x28 px holding 1 to ``max_items`` official
Fashion-MNIST images (empty cells black). Its labels are the set of its items' nodes in the 2 / 6
/ 10 tree: ``targets`` with every ancestor switched on (node F1), ``original`` as annotated (path
F1), as for Open Images. A seeded ``partial_fraction`` of the items is annotated only down to
level 1 or 2 (half each), so that paths end above the leaves, as in Open Images.

Partial labels apply to every split, test included: Open Images' test labels are partial too, and
dhnn's metrics compare path F1 with the labels as annotated (``original``) on validation and test
alike, so a model is scored against the annotation it would meet.

Train and validation scenes draw their items from the two sides of Fashion-MNIST's seeded
validation split of the official train images (``val_fraction``, ``split_seed``), so no official
image is in both; test scenes draw from the official test images. A scene stores only the indices
of its items: the canvases are composed per batch, so memory holds each official image once.
"""
from __future__ import annotations

import json

import numpy as np
import torch
from torch.utils.data import Dataset

from ..paths import resolve
from ..taxonomy import Taxonomy
from .base import Splits, data_settings, random_flip_crop, split_indices
# The canvases are darker than single items (empty cells), but Fashion-MNIST's statistics keep a
# bundle's preprocessing that of Fashion-MNIST, and BatchNorm absorbs the offset.
from .fashion_mnist import CLASSES, MEAN, RAW_MD5, STD, load, verify
from .fashion_mnist import taxonomy as fashion_mnist_taxonomy

CELL, GRID = 28, 2
SIZE = CELL * GRID  # 56 px canvases
CELLS = GRID * GRID
# One random stream per split, so that changing one split's size leaves the other splits as they were.
_STREAM = {"train": 0, "val": 1, "test": 2}


def layout(n_scenes: int, pool_size: int, max_items: int, partial_fraction: float, max_depth: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Seeded scenes: (items [N, 4] indices into a pool of official images, -1 for an empty cell;
    label depth [N, 4]: ``max_depth`` for a full label, 1 or 2 for a partial one, 0 for an empty cell)."""
    count = rng.integers(1, max_items + 1, size=n_scenes)
    # a cell is filled when its rank in a random order of the four cells is below the item count
    rank = rng.random((n_scenes, CELLS)).argsort(axis=1).argsort(axis=1)
    filled = rank < count[:, None]
    items = np.where(filled, rng.integers(0, pool_size, size=(n_scenes, CELLS)), -1)
    partial = rng.random((n_scenes, CELLS)) < partial_fraction
    depth = np.where(partial, rng.integers(1, 3, size=(n_scenes, CELLS)), max_depth)
    return items, np.where(filled, np.minimum(depth, max_depth), 0)


def compose(images: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """uint8 canvases [B, C, 56, 56] of ``images`` [M, C, 28, 28] at ``items`` [B, 4] (cells row by row; -1 black)."""
    b, c = items.shape[0], images.shape[1]
    cells = images[items.clamp(min=0)] * (items >= 0).to(images.dtype)[:, :, None, None, None]
    # [B, row, col, C, y, x] -> [B, C, row, y, col, x]: cell (row, col) lands at (28 row, 28 col)
    return cells.view(b, GRID, GRID, c, CELL, CELL).permute(0, 3, 1, 4, 2, 5).reshape(b, c, SIZE, SIZE)


def label_sets(classes: torch.Tensor, depth: torch.Tensor, class_names: list[str], tree: Taxonomy
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, original): float multi-hots [N, |V|] over ``tree.nodes`` of items' classes [N, 4]
    annotated down to ``depth`` [N, 4] (0: no item); targets with every ancestor, original as annotated."""
    index = {n: i for i, n in enumerate(tree.nodes)}
    paths = [tree.path(c) for c in class_names]
    # node[c, d]: class c's node at depth d + 1 (its leaf below a leaf shallower than the tree)
    node = torch.tensor([[index[p[min(d, len(p) - 1)]] for d in range(tree.num_levels)] for p in paths])
    closure = torch.zeros(len(index), len(index))
    for n, i in index.items():
        closure[i, [index[a] for a in tree.path(n)]] = 1.0
    n_scenes = classes.shape[0]
    filled = depth > 0
    labels = node[classes.clamp(min=0), (depth - 1).clamp(min=0)]
    original = torch.zeros(n_scenes, len(index))
    rows = torch.arange(n_scenes)[:, None].expand_as(labels)
    original[rows[filled], labels[filled]] = 1.0
    return (original @ closure).clamp(max=1.0), original


class SceneDataset(Dataset):
    """Scenes of official images, composed per batch, with multi-hot node targets.

    Items are ``(image, targets[i], i)``, as for Open Images: the normalised canvas float [1, 56,
    56], the multi-hot over ``taxonomy.nodes`` with every ancestor on, and the index, which finds
    ``original[i]`` (the labels as annotated, for path F1), ``items[i]`` (indices of the official
    images, -1 for an empty cell) and ``depth[i]`` (how deep each item is annotated).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str], items: np.ndarray,
                 depth: np.ndarray, tree: Taxonomy, augment: bool = False):
        self.images = images  # the whole official split, shared by the splits drawn from it
        self.items = torch.as_tensor(items, dtype=torch.long)
        self.depth = torch.as_tensor(depth, dtype=torch.long)
        classes = torch.where(self.items >= 0, labels[self.items.clamp(min=0)], -1)
        self.targets, self.original = label_sets(classes, self.depth, class_names, tree)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def canvases(self, idx: list[int] | torch.Tensor) -> torch.Tensor:
        """The uint8 canvases [B, 1, 56, 56] of scenes ``idx``."""
        return compose(self.images, self.items[torch.as_tensor(idx)])

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch (images float [B, 1, 56, 56], multi-hot targets [B, |V|], indices [B])."""
        idx = torch.as_tensor(idx)
        x = self.canvases(idx).float().div_(255.0)
        if self.augment:
            x = random_flip_crop(x, pad=2)
        return (x - MEAN) / STD, self.targets[idx], idx


def scene_split(cfg: dict, split: str, pool: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                tree: Taxonomy) -> SceneDataset:
    """The ``split`` scenes of ``cfg`` (the data section), their items drawn from the official indices ``pool``."""
    rng = np.random.default_rng([cfg["seed"], _STREAM[split]])
    max_depth = max(tree.depth(c) for c in CLASSES)
    items, depth = layout(cfg[f"{split}_scenes"], len(pool), cfg["max_items"], cfg["partial_fraction"],
                          max_depth, rng)
    official = np.where(items >= 0, pool.numpy()[items.clip(min=0)], -1)
    return SceneDataset(images, labels, CLASSES, official, depth, tree, augment=split == "train" and cfg["augment"])


# -- the data-source interface (see dhnn.data.registry) -------------------------------------------

def classes(cfg: dict) -> list[str]:
    """The ten Fashion-MNIST classes: the leaves a full label names."""
    cfg = data_settings(cfg)
    return list(CLASSES)


def taxonomy(data_cfg: dict, taxonomy_cfg: dict) -> Taxonomy:
    """The tree named by ``taxonomy.source`` (taxonomies/fashion_mnist.csv: 2 / 6 / 10)."""
    data_cfg = data_settings(data_cfg)
    return fashion_mnist_taxonomy({"name": "fashion_mnist", "root": data_cfg["root"]}, taxonomy_cfg)


def check(cfg: dict) -> dict[str, str]:
    """Verify the Fashion-MNIST files (size, header, MD5); return their MD5s and the scenes' settings."""
    cfg = data_settings(cfg)
    verify(resolve(cfg["root"]))
    scenes = {k: v for k, v in cfg.items() if k not in ("name", "root", "augment")}
    return {**RAW_MD5, "scenes": json.dumps(scenes, sort_keys=True)}


def splits(cfg: dict, tree: Taxonomy) -> Splits:
    """Train and validation scenes from the two sides of the seeded validation split, test scenes from test."""
    cfg = data_settings(cfg)
    root = resolve(cfg["root"])
    train_all, test = load(root, train=True), load(root, train=False)
    missing = [c for c in CLASSES if c not in tree]
    if missing:
        raise ValueError(f"{root} (Fashion-MNIST classes): the data set's classes {missing} are not nodes of the taxonomy")
    train_idx, val_idx = split_indices(len(train_all.labels), cfg["val_fraction"], cfg["split_seed"])
    sets = {split: scene_split(cfg, split, pool, data.images, data.labels, tree)
            for split, pool, data in (("train", train_idx, train_all), ("val", val_idx, train_all),
                                      ("test", torch.arange(len(test.labels)), test))}
    return Splits(train=sets["train"], val=sets["val"], test=sets["test"], classes=tree.nodes, in_chans=1,
                  image_size=SIZE)
