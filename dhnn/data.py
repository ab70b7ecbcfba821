"""Data: fetching Fashion-MNIST, hierarchical targets, seeded splits and batch loaders.

Fashion-MNIST is small enough to live in memory as uint8 tensors, so a batch is one indexing
operation instead of 128 calls to ``__getitem__``; the loader still is a plain ``DataLoader`` so
that lazily decoded image folders can slot in behind the same interface.
"""
from __future__ import annotations

import gzip
import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import FashionMNIST

from .config import resolve
from .taxonomy import Taxonomy

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# MD5 of the decompressed official files; Debian's package and the official mirror agree on them.
RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
RAW_FILES = tuple(RAW_MD5)
# Data sets read by dhnn.datasets (imported lazily: it pulls in PIL transforms and folder scanning).
FOLDER_KINDS = ("image_folder", "inaturalist", "cifar100")
# Per-channel statistics of the Fashion-MNIST training images, scaled to [0, 1].
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


def fetch_fashion_mnist(root: str | Path, source: str | Path | None = DEBIAN_FASHION_MNIST) -> Path:
    """Put the four decompressed Fashion-MNIST files in ``root/FashionMNIST/raw``; return that folder.

    The files are stored decompressed because Debian's package and the official mirror ship
    different gzip streams of the same bytes: only the decompressed files hash the same, which
    keeps ``data.dvc`` valid whichever source set-up used.
    """
    raw = Path(root) / "FashionMNIST" / "raw"
    if all((raw / name).is_file() for name in RAW_FILES):
        return raw
    with tempfile.TemporaryDirectory(dir=Path(root).parent if Path(root).parent.exists() else None) as tmp:
        staging = Path(tmp) / "raw"
        staging.mkdir()
        if source is not None and all((Path(source) / f"{n}.gz").is_file() for n in RAW_FILES):
            for name in RAW_FILES:
                with gzip.open(Path(source) / f"{name}.gz", "rb") as src, open(staging / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        else:  # torchvision downloads, checks the archives' md5 and decompresses them
            FashionMNIST(tmp, train=True, download=True)
            for name in RAW_FILES:
                shutil.move(Path(tmp) / "FashionMNIST" / "raw" / name, staging / name)
        for name in RAW_FILES:
            if file_md5(staging / name) != RAW_MD5[name]:
                raise ValueError(f"{source or 'download'}: {name} does not match the official Fashion-MNIST file (md5)")
        raw.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(raw)  # atomic: a half-written raw folder is never left behind
    return raw


@dataclass
class ImageSet:
    """Images as uint8 [N, C, H, W], class indices [N] and the class names they index."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def subset(self, index: torch.Tensor) -> "ImageSet":
        """The samples at ``index``."""
        return ImageSet(self.images[index], self.labels[index], self.classes)


def load_fashion_mnist(root: str | Path, train: bool) -> ImageSet:
    """Read the train or test split with torchvision's reader (no download)."""
    raw = Path(root) / "FashionMNIST" / "raw"
    missing = [n for n in RAW_FILES if not (raw / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{raw}: missing {', '.join(missing)}; run `bash scripts/setup.sh` to fetch Fashion-MNIST")
    ds = FashionMNIST(str(root), train=train, download=False)
    return ImageSet(ds.data.unsqueeze(1).contiguous(), ds.targets.clone(), list(ds.classes))


def dataset_classes(cfg: dict) -> list[str]:
    """The class names of the configured data set, without reading its images."""
    if cfg.get("name") == "open_images":  # every node of the working tree is a label
        from .multilabel import open_images_tree
        return open_images_tree(cfg).taxonomy.nodes
    if cfg.get("name") in FOLDER_KINDS:
        from .datasets import folder_classes
        return folder_classes(cfg)
    if cfg.get("name", "fashion_mnist") != "fashion_mnist":
        raise ValueError(f"unknown data set {cfg['name']!r}; expected 'fashion_mnist', 'open_images' or one of {FOLDER_KINDS}")
    return list(FashionMNIST.classes)


def is_multilabel(cfg: dict) -> bool:
    """Whether the configured data set labels an image with a set of nodes (Open Images)."""
    return cfg.get("name") == "open_images"


def dataset_taxonomy(data_cfg: dict, taxonomy_cfg: dict) -> Taxonomy:
    """The class tree of the configured data set: read from ``taxonomy.source``, or built from the data."""
    if data_cfg.get("name") in FOLDER_KINDS:
        from .datasets import dataset_taxonomy as folder_taxonomy
        return folder_taxonomy(data_cfg, taxonomy_cfg)
    if data_cfg.get("name") == "open_images":
        from .multilabel import open_images_tree
        return open_images_tree(data_cfg).taxonomy
    if not taxonomy_cfg.get("source"):
        raise ValueError("taxonomy.source: name the taxonomy file (a CSV of label paths, or JSON)")
    return Taxonomy.load(resolve(taxonomy_cfg["source"]))


def check_classes(classes: list[str], taxonomy: Taxonomy, source: str = "taxonomy") -> None:
    """Raise a clear error naming ``source`` if a data-set class is not a node of the taxonomy."""
    unknown = [c for c in classes if c not in taxonomy]
    if unknown:
        raise ValueError(f"{source}: the data set's classes {unknown} are not nodes of the taxonomy")


def class_targets(classes: list[str], taxonomy: Taxonomy, source: str = "taxonomy") -> torch.Tensor:
    """Per-level target indices [num_classes, T] for each class name, which must be a taxonomy node."""
    check_classes(classes, taxonomy, source)
    return torch.stack([taxonomy.encode_path(taxonomy.path(c)) for c in classes])


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)`` into (train, validation) index tensors."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def subsample(n: int, limit: int | None, seed: int) -> torch.Tensor:
    """Indices of a seeded random subset of at most ``limit`` of ``n`` samples (all when None)."""
    if limit is None or limit >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


class HierarchicalTensorDataset(Dataset):
    """In-memory images with per-level path targets; batches are gathered in one indexing step."""

    def __init__(self, data: ImageSet, targets: torch.Tensor, mean: float, std: float, augment: bool = False,
                 size: int | None = None):
        self.images, self.labels = data.images, data.labels
        self.paths = targets[data.labels]  # [N, T] per-level indices
        self.mean, self.std, self.augment, self.size = mean, std, augment, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch (images float [B, C, H, W], paths [B, T], class labels [B])."""
        idx = torch.as_tensor(idx)
        x = self.images[idx].float().div_(255.0)
        if self.augment:
            x = random_flip_crop(x, pad=2)
        if self.size is not None and self.size != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        return x, self.paths[idx], self.labels[idx]


def random_flip_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample random horizontal flip and random translation by up to ``pad`` pixels."""
    b, _, h, w = x.shape
    flip = torch.rand(b) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,))
    dx = torch.randint(0, 2 * pad + 1, (b,))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(-1, x.shape[1], -1, w + 2 * pad)
    xp = xp.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(-1, x.shape[1], h, -1)
    return xp.gather(3, cols)


def _as_batch(batch):
    return batch  # __getitems__ already returns a collated batch


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0) -> DataLoader:
    """A DataLoader whose shuffling order depends only on ``seed``."""
    # a dataset with __getitems__ returns collated batches itself; per-item datasets need collating
    collate = _as_batch if hasattr(dataset, "__getitems__") else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), collate_fn=collate, drop_last=False)


@dataclass
class Splits:
    """Train, validation and test sets of one data set, with what a model needs to know about them."""

    train: HierarchicalTensorDataset
    val: HierarchicalTensorDataset
    test: HierarchicalTensorDataset
    classes: list[str]
    in_chans: int
    image_size: int
    multilabel: bool = False  # targets are multi-hot node sets (Open Images), not one path per image


def build_splits(cfg: dict, taxonomy: Taxonomy) -> Splits:
    """The seeded train/validation split and the official test split of the configured data set.

    ``cfg`` is the ``data`` section of params.yaml: name, root, val_fraction, split_seed, and the
    optional limit_train / limit_test (seeded subsets, for quick runs) and augment.
    """
    if cfg.get("name") in FOLDER_KINDS:
        from .datasets import build_folder_splits
        return build_folder_splits(cfg, taxonomy)
    if cfg.get("name") == "open_images":
        from .multilabel import open_images_splits
        return open_images_splits(cfg, taxonomy)
    dataset_classes(cfg)  # validates the name
    root = resolve(cfg["root"])
    train_all, test = load_fashion_mnist(root, train=True), load_fashion_mnist(root, train=False)
    targets = class_targets(train_all.classes, taxonomy, source=f"{root} (Fashion-MNIST classes)")
    train_idx, val_idx = split_indices(len(train_all.labels), cfg["val_fraction"], cfg["split_seed"])
    seed = cfg["split_seed"]
    train_idx = train_idx[subsample(len(train_idx), cfg.get("limit_train"), seed)]
    val_idx = val_idx[subsample(len(val_idx), cfg.get("limit_val", cfg.get("limit_test")), seed)]
    test = test.subset(subsample(len(test.labels), cfg.get("limit_test"), seed))
    stats = (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    size = cfg.get("image_size", 28)  # larger sizes upsample, for ImageNet-sized backbones
    return Splits(
        train=HierarchicalTensorDataset(train_all.subset(train_idx), targets, *stats, cfg.get("augment", False), size),
        val=HierarchicalTensorDataset(train_all.subset(val_idx), targets, *stats, size=size),
        test=HierarchicalTensorDataset(test, targets, *stats, size=size),
        classes=train_all.classes, in_chans=1, image_size=size,
    )


def file_md5(path: str | Path) -> str:
    """MD5 of a file (DVC's content hash)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    """``python -m dhnn.data ROOT``: fetch Fashion-MNIST into ROOT."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", help="data folder tracked by data.dvc, e.g. data")
    parser.add_argument("--source", default=str(DEBIAN_FASHION_MNIST), help="folder of the .gz files (Debian's package)")
    args = parser.parse_args(argv)
    raw = fetch_fashion_mnist(args.root, args.source)
    for name in RAW_FILES:
        print(f"{file_md5(raw / name)}  {raw / name}")


if __name__ == "__main__":
    main()
