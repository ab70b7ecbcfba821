"""What every data source shares: in-memory image sets, seeded splits, path targets and loaders.

Small data sets live in memory as uint8 tensors, so a batch is one indexing operation instead of
128 calls to ``__getitem__``; the loader is still a plain ``DataLoader`` so that lazily decoded
image folders slot in behind the same interface.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..params import DataParams, settings
from ..taxonomy import Taxonomy


@dataclass
class ImageSet:
    """Images as uint8 [N, C, H, W], class indices [N] and the class names they index."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def subset(self, index: torch.Tensor) -> "ImageSet":
        """The samples at ``index``."""
        return ImageSet(self.images[index], self.labels[index], self.classes)


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


def file_md5(path: str | Path) -> str:
    """MD5 of a file (DVC's content hash)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()




def data_settings(cfg: dict) -> dict:
    """The ``data`` section checked against the schema, with its defaults (dhnn.params) filled in."""
    return settings(DataParams, cfg, "data")


def folder_fingerprint(root: str | Path) -> dict[str, str]:
    """A cheap fingerprint of every file under ``root``: relative path -> "size:mtime" (no reading).

    What the pipeline depends on for data sets too large to hash on every run: replacing, adding or
    touching a file changes it.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such data folder")
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        st = path.stat()
        out[str(path.relative_to(root))] = f"{st.st_size}:{st.st_mtime_ns}"
    return out
