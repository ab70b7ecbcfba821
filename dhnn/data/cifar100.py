"""CIFAR-100: the official ``cifar-100-python`` pickles, 20 superclasses over 100 classes.

Without ``transform`` the 32x32 images stay in memory as uint8 and ``augment`` means random flips
and 2-pixel shifts; with it, PIL transforms run per item. ``download: true`` fetches the files
through torchvision when online.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR100

from ..paths import resolve
from ..taxonomy import Taxonomy
from .base import (HierarchicalTensorDataset, ImageSet, Splits, class_targets,
                   data_settings, folder_fingerprint, split_indices, subsample)
from .images import ArrayImageDataset, build_transforms, transform_settings

# CIFAR-100 training-set channel statistics on the 0-1 scale.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CIFAR_FOLDER = "cifar-100-python"


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing CIFAR-100 file; set data.download: true to fetch the data set")
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # the official files are Python 2 pickles


def _cifar_root(cfg: dict) -> Path:
    root = resolve(cfg["root"])
    if cfg["download"]:
        CIFAR100(str(root), train=True, download=True)  # a no-op when the files are there and intact
    return root


def cifar100_taxonomy(root: str | Path) -> Taxonomy:
    """Coarse superclass -> fine class, read from the official pickles' coarse and fine labels."""
    folder = Path(root) / CIFAR_FOLDER
    meta, train = _unpickle(folder / "meta"), _unpickle(folder / "train")
    coarse_of: dict[int, int] = {}
    for c, f in zip(train["coarse_labels"], train["fine_labels"]):
        if coarse_of.setdefault(f, c) != c:
            raise ValueError(f"{folder / 'train'}: fine label {f} appears under coarse labels {coarse_of[f]} and {c}")
    coarse, fine = meta["coarse_label_names"], meta["fine_label_names"]
    return Taxonomy.from_paths([[coarse[c], fine[f]] for f, c in sorted(coarse_of.items(), key=lambda fc: fc[::-1])])


def load_cifar100(root: str | Path, train: bool, download: bool = False) -> tuple[ImageSet, np.ndarray]:
    """Images [N, 3, 32, 32] uint8 and fine labels via torchvision (md5-checked), plus the HWC array."""
    try:
        ds = CIFAR100(str(root), train=train, download=download)
    except RuntimeError as e:
        raise FileNotFoundError(f"{Path(root) / CIFAR_FOLDER}: CIFAR-100 files missing or corrupt (torchvision: {e}); "
                                f"set data.download: true to fetch them") from None
    hwc = np.ascontiguousarray(ds.data)
    images = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.as_tensor(ds.targets, dtype=torch.long), list(ds.classes)), hwc


def _cifar100_splits(cfg: dict, taxonomy: Taxonomy) -> Splits:
    root = _cifar_root(cfg)
    (train_all, train_hwc), (test, test_hwc) = load_cifar100(root, True), load_cifar100(root, False)
    targets = class_targets(train_all.classes, taxonomy, source=f"{root / CIFAR_FOLDER} (CIFAR-100 fine classes)")
    seed = cfg["split_seed"]
    train_idx, val_idx = split_indices(len(train_all.labels), cfg["val_fraction"], seed)
    train_idx = train_idx[subsample(len(train_idx), cfg.get("limit_train"), seed)]
    val_idx = val_idx[subsample(len(val_idx), cfg.get("limit_val") or cfg.get("limit_test"), seed)]
    test_idx = subsample(len(test.labels), cfg.get("limit_test"), seed)
    augment = cfg["augment"]
    if cfg["transform"] is None:  # native 32x32 in memory: a batch is one indexing step
        mean, std = torch.tensor(CIFAR100_MEAN).view(3, 1, 1), torch.tensor(CIFAR100_STD).view(3, 1, 1)

        def make(data: ImageSet, idx: torch.Tensor, aug: bool) -> HierarchicalTensorDataset:
            return HierarchicalTensorDataset(data.subset(idx), targets, mean, std, augment=aug)  # type: ignore[arg-type]

        return Splits(make(train_all, train_idx, augment), make(train_all, val_idx, False), make(test, test_idx, False),
                      classes=train_all.classes, in_chans=3, image_size=32)
    t = transform_settings(cfg["transform"], CIFAR100_MEAN, CIFAR100_STD)
    mode = "L" if t["grayscale"] else "RGB"

    def make_items(hwc: np.ndarray, labels: torch.Tensor, idx: torch.Tensor, train: bool) -> ArrayImageDataset:
        return ArrayImageDataset(hwc[idx.numpy()], labels[idx], targets, build_transforms(cfg["transform"], train), mode)

    return Splits(make_items(train_hwc, train_all.labels, train_idx, augment),
                  make_items(train_hwc, train_all.labels, val_idx, False),
                  make_items(test_hwc, test.labels, test_idx, False),
                  classes=train_all.classes, in_chans=t["in_chans"], image_size=t["crop"])





# -- the data-source interface (see dhnn.data.registry) -------------------------------------------

def classes(cfg: dict) -> list[str]:
    """The 100 fine class names, from the official meta file."""
    cfg = data_settings(cfg)
    return list(_unpickle(_cifar_root(cfg) / CIFAR_FOLDER / "meta")["fine_label_names"])


def taxonomy(data_cfg: dict, taxonomy_cfg: dict) -> Taxonomy:
    """Superclass -> class, read from the official pickles."""
    data_cfg = data_settings(data_cfg)
    return cifar100_taxonomy(_cifar_root(data_cfg))


def check(cfg: dict) -> dict[str, str]:
    """The official files are there; return a fingerprint of them."""
    cfg = data_settings(cfg)
    classes(cfg)
    return folder_fingerprint(resolve(cfg["root"]) / CIFAR_FOLDER)


def splits(cfg: dict, tree: Taxonomy) -> Splits:
    """The seeded train/validation split of the official train images, and the official test images."""
    cfg = data_settings(cfg)
    return _cifar100_splits(cfg, tree)
