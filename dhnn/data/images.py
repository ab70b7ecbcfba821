"""Images decoded one at a time: the paper's transforms, per-item datasets, and a full decode check.

Folder images are decoded lazily, one per ``__getitem__``, so the decoding runs in the
DataLoader's worker processes; items are ``(image [C, H, W], path targets [T], class index)``,
which default collation turns into the same batches as ``HierarchicalTensorDataset`` gives.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

# The paper subtracts the ImageNet channel means 123.68, 116.779, 103.939 from 0-255 pixels; on
# ToTensor's 0-1 scale those are these fractions. Dividing by the ImageNet std as well is what
# torchvision/timm pretrained weights expect; set std: [0.00392156862745098] * 3 (1/255) to get
# the paper's mean-subtraction-only scaling exactly.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRANSFORM_KEYS = {"resize", "crop", "flip", "mean", "std", "grayscale"}


# -- transforms ---------------------------------------------------------------------------------

def build_transforms(cfg: dict | None, train: bool) -> Callable:
    """Resize (shorter side, or [h, w]), random (train) or center crop, optional flip, normalise.

    Defaults are the paper's: resize 256, crop 224, ImageNet normalisation, no flip.
    """
    from torchvision import transforms as T  # torchvision costs seconds to import: only image folders need it

    cfg = transform_settings(cfg)
    ops: list[Callable] = []
    if cfg["resize"]:
        ops.append(T.Resize(cfg["resize"]))
    crop = cfg["crop"]
    ops.append(T.RandomCrop(crop, pad_if_needed=True) if train else T.CenterCrop(crop))
    if train and cfg["flip"]:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])]
    return T.Compose(ops)


def transform_settings(cfg: dict | None, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> dict:
    """The transform settings with defaults filled in, checked before any image is read."""
    cfg = dict(cfg or {})
    unknown = set(cfg) - TRANSFORM_KEYS
    if unknown:
        raise ValueError(f"data.transform: unknown keys {sorted(unknown)}; expected some of {sorted(TRANSFORM_KEYS)}")
    gray = bool(cfg.get("grayscale", False))
    chans = 1 if gray else 3
    # a grayscale image is about the mean of its channels, so average the RGB defaults
    out = {"resize": cfg.get("resize", 256), "crop": cfg.get("crop", 224), "flip": bool(cfg.get("flip", False)),
           "grayscale": gray, "in_chans": chans,
           "mean": list(cfg.get("mean") or ([sum(mean) / 3] if gray else mean)),
           "std": list(cfg.get("std") or ([sum(std) / 3] if gray else std))}
    if not isinstance(out["crop"], int) or out["crop"] <= 0:
        raise ValueError(f"data.transform.crop must be a positive int, got {out['crop']!r}")
    if len(out["mean"]) != chans or len(out["std"]) != chans:
        raise ValueError(f"data.transform: mean and std need {chans} values for {'grayscale' if gray else 'RGB'} "
                         f"images, got {out['mean']} and {out['std']}")
    resize = out["resize"]
    if isinstance(resize, int) and 0 < resize < out["crop"]:
        raise ValueError(f"data.transform: resize {resize} is smaller than crop {out['crop']}")
    return out



# -- data sets ----------------------------------------------------------------------------------

class ItemDataset(Dataset):
    """Per-item images with path targets; subclasses say how to get image ``i`` as a PIL image."""

    def __init__(self, labels: Sequence[int], targets: torch.Tensor, transform: Callable, mode: str = "RGB"):
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.paths = targets[self.labels]  # [N, T], like HierarchicalTensorDataset.paths
        self.transform, self.mode = transform, mode

    def __len__(self) -> int:
        return len(self.labels)

    def _image(self, i: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image float [C, H, W], path targets [T], class index)."""
        return self.transform(self._image(i).convert(self.mode)), self.paths[i], self.labels[i]


class ArrayImageDataset(ItemDataset):
    """In-memory uint8 images [N, H, W, C] put through a PIL transform (CIFAR-100 at other sizes)."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], targets: torch.Tensor,
                 transform: Callable, mode: str = "RGB"):
        super().__init__(labels, targets, transform, mode)
        self.images = images

    def _image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])


def image_problem(path: str | Path) -> str | None:
    """Why PIL cannot fully decode the image at ``path``, or None when it can."""
    try:
        with Image.open(path) as img:
            img.load()  # decode every pixel: verify() alone passes a file cut in half
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, SyntaxError, OSError)
        return f"{type(e).__name__}: {e}"
    return None


def check_images(files: Sequence[str | Path], workers: int = 8) -> None:
    """Raise a ValueError naming the first file (in ``files`` order) that PIL cannot fully decode."""
    # threads: PIL releases the GIL while decoding; blocks keep the number of pending futures small
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(files), 4096):
            block = files[start:start + 4096]
            for path, err in zip(block, pool.map(image_problem, block)):
                if err is not None:
                    raise ValueError(f"{path}: not a readable image ({err}); remove or replace it, "
                                     f"or set data.verify_images: false to skip this check")
