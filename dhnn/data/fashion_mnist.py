"""Fashion-MNIST: the official idx files, checked against their MD5s before use, and its splits.

The files are stored decompressed because Debian's package and the official mirror ship different
gzip streams of the same bytes: only the decompressed files hash the same, which keeps ``data.dvc``
valid whichever source set-up used.
"""
from __future__ import annotations

import gzip
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..paths import resolve
from ..taxonomy import Taxonomy
from .base import (HierarchicalTensorDataset, ImageSet, Splits, class_targets,
                   data_settings, file_md5, split_indices, subsample)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# MD5 and shape of the decompressed official files; Debian's package and the official mirror agree on them.
RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
RAW_SHAPES = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}
RAW_FILES = tuple(RAW_MD5)
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Per-channel statistics of the Fashion-MNIST training images, scaled to [0, 1].
MEAN, STD = 0.2860, 0.3530
SETUP_HINT = "run `bash scripts/setup.sh` to fetch Fashion-MNIST"


def raw_folder(root: str | Path) -> Path:
    """The folder holding the four decompressed idx files under a data root."""
    return Path(root) / "FashionMNIST" / "raw"


def read_idx(path: Path, shape: tuple[int, ...], md5: str | None = None) -> np.ndarray:
    """An idx file as a uint8 array of ``shape``; a missing, truncated or altered file raises naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {SETUP_HINT}")
    data = path.read_bytes()
    header = 4 + 4 * len(shape)
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic != 0x0800 + len(shape):
        raise ValueError(f"{path}: not an idx file of {len(shape)} dimensions (magic {magic!r}); {SETUP_HINT}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(len(shape)))
    if dims != shape:
        raise ValueError(f"{path}: header says shape {dims}, expected {shape}")
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data):,} bytes, expected {expected:,} for shape {shape} "
                         f"(truncated or padded); delete data/ and {SETUP_HINT}")
    if md5 is not None:
        got = file_md5(path)
        if got != md5:
            raise ValueError(f"{path}: md5 {got} differs from the official file's {md5}; delete data/ and {SETUP_HINT}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def verify(root: str | Path) -> Path:
    """Check the four files under ``root`` (size, shape and MD5) before any work; return their folder."""
    raw = raw_folder(root)
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw}: no Fashion-MNIST files there; {SETUP_HINT}")
    for name in RAW_FILES:
        read_idx(raw / name, RAW_SHAPES[name], RAW_MD5[name])
    return raw


def fetch(root: str | Path, source: str | Path | None = DEBIAN_FASHION_MNIST) -> Path:
    """Put the four decompressed, MD5-checked files in ``root/FashionMNIST/raw``; return that folder.

    ``source`` is a folder of the official ``.gz`` files (Debian's package); without it, the files
    come from the official mirror. Nothing is written to ``root`` unless all four files check out.
    """
    raw = raw_folder(root)
    if all((raw / name).is_file() for name in RAW_FILES):
        return verify(root)
    Path(root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        staging = Path(tmp) / "raw"
        staging.mkdir()
        for name in RAW_FILES:
            gz = Path(source) / f"{name}.gz" if source is not None else None
            if gz is None or not gz.is_file():
                from torchvision.datasets.utils import download_url  # only when there is no local copy

                download_url(f"{MIRROR}{name}.gz", tmp)
                gz = Path(tmp) / f"{name}.gz"
            with gzip.open(gz, "rb") as src, open(staging / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
            try:
                read_idx(staging / name, RAW_SHAPES[name], RAW_MD5[name])
            except ValueError as err:  # name the .gz it came from, not the staging file about to vanish
                problem = str(err).removeprefix(f"{staging / name}: ").split("; ")[0]
                raise ValueError(f"{gz}: decompressed, {problem}; not the official Fashion-MNIST file") from None
        raw.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(raw)  # atomic: a half-written raw folder is never left behind
    return raw


def load(root: str | Path, train: bool) -> ImageSet:
    """The train or test split as uint8 images [N, 1, 28, 28], after checking its files."""
    raw = raw_folder(root)
    prefix = "train" if train else "t10k"
    images = read_idx(raw / f"{prefix}-images-idx3-ubyte", RAW_SHAPES[f"{prefix}-images-idx3-ubyte"],
                      RAW_MD5[f"{prefix}-images-idx3-ubyte"])
    labels = read_idx(raw / f"{prefix}-labels-idx1-ubyte", RAW_SHAPES[f"{prefix}-labels-idx1-ubyte"],
                      RAW_MD5[f"{prefix}-labels-idx1-ubyte"])
    return ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                    list(CLASSES))


def classes(cfg: dict) -> list[str]:
    """The ten class names, in label order."""
    cfg = data_settings(cfg)
    return list(CLASSES)


def taxonomy(data_cfg: dict, taxonomy_cfg: dict) -> Taxonomy:
    """The tree named by ``taxonomy.source`` (label paths, edges or JSON)."""
    data_cfg = data_settings(data_cfg)
    from ..taxonomy.files import load_taxonomy_file

    if not taxonomy_cfg.get("source"):
        raise ValueError("taxonomy.source: name the taxonomy file (a CSV of label paths, or JSON)")
    return load_taxonomy_file(resolve(taxonomy_cfg["source"]), taxonomy_cfg.get("format", "auto"))


def check(cfg: dict) -> dict[str, str]:
    """Verify the files (size, header, MD5) before long work starts; return file -> MD5."""
    cfg = data_settings(cfg)
    verify(resolve(cfg["root"]))
    return dict(RAW_MD5)


def splits(cfg: dict, tree: Taxonomy) -> Splits:
    """The seeded train/validation split of the official train images, and the official test images.

    ``cfg`` is the ``data`` section: root, val_fraction, split_seed, the optional seeded subsets
    limit_train / limit_val / limit_test, augment and image_size.
    """
    cfg = data_settings(cfg)
    root = resolve(cfg["root"])
    train_all, test = load(root, train=True), load(root, train=False)
    targets = class_targets(train_all.classes, tree, source=f"{root} (Fashion-MNIST classes)")
    seed = cfg["split_seed"]
    train_idx, val_idx = split_indices(len(train_all.labels), cfg["val_fraction"], seed)
    train_idx = train_idx[subsample(len(train_idx), cfg.get("limit_train"), seed)]
    val_idx = val_idx[subsample(len(val_idx), cfg.get("limit_val") or cfg.get("limit_test"), seed)]
    test = test.subset(subsample(len(test.labels), cfg.get("limit_test"), seed))
    size = cfg.get("image_size") or 28  # larger sizes upsample, for ImageNet-sized backbones
    return Splits(
        train=HierarchicalTensorDataset(train_all.subset(train_idx), targets, MEAN, STD, cfg["augment"], size),
        val=HierarchicalTensorDataset(train_all.subset(val_idx), targets, MEAN, STD, size=size),
        test=HierarchicalTensorDataset(test, targets, MEAN, STD, size=size),
        classes=train_all.classes, in_chans=1, image_size=size,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m dhnn.data.fashion_mnist ROOT``: fetch Fashion-MNIST into ROOT, checked."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", help="data folder tracked by data.dvc, e.g. data")
    parser.add_argument("--source", default=str(DEBIAN_FASHION_MNIST), help="folder of the .gz files (Debian's package)")
    parser.add_argument("--verify", action="store_true", help="only check the files already in ROOT")
    args = parser.parse_args(argv)
    try:
        raw = verify(args.root) if args.verify else fetch(args.root, args.source)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name in RAW_FILES:
        print(f"{RAW_MD5[name]}  {raw / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
