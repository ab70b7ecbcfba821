"""Image files for prediction: found in folders, decoded, and prepared as the training images were.

A bundle's ``preprocessing`` says how (see dhnn.serving.bundle):

- ``{"kind": "tensor", "mode", "image_size", "mean", "std"}``: data sets kept in memory as uint8
  tensors (Fashion-MNIST, CIFAR-100 at 32 px): pixels / 255, a bilinear resize to the training
  size, then (x - mean) / std per channel, as dhnn.data.base.HierarchicalTensorDataset does.
- ``{"kind": "transform", "mode", "resize", "crop", "mean", "std"}``: data sets read through PIL
  transforms: the evaluation transform of dhnn.data.images (resize, center crop, normalise).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..data.images import build_transforms

SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageError(ValueError):
    """An image argument that can't be used: missing, unreadable, or a folder without images."""


def find_images(args: Sequence[str | Path]) -> list[tuple[Path, bool]]:
    """Each file argument, and every PNG or JPEG under each folder argument (sorted), as (path, from_folder).

    Files named on the command line must be readable; files found in folders may be skipped. A
    missing path or a folder without any image raises ImageError naming it.
    """
    found: list[tuple[Path, bool]] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            # hidden files are skipped: macOS leaves "._name.jpg" resource forks that are not images
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise ImageError(f"{path}: no .png, .jpg or .jpeg images in this folder")
            found += [(f, True) for f in files]
        elif path.is_file():
            found.append((path, False))
        else:
            raise ImageError(f"{path}: no such file or folder")
    return found


def _to_8bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit grayscale scaled to 8 bits (PIL's own conversion to L would clip at 255, not scale)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0  # floats in [0, 1], or already 0-255
        return Image.fromarray(np.clip(a * scale + 0.5, 0, 255).astype(np.uint8), "L")
    return img


def read_image(path: str | Path, mode: str) -> Image.Image:
    """Decode an image of any size and mode fully, upright, as ``mode`` (L or RGB); ImageError naming it otherwise."""
    try:
        with Image.open(path) as img:
            img.load()  # decode every pixel now: a truncated file fails here, not later
            img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
            img = _to_8bit(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")  # the colours under the alpha channel, which is dropped
            return img.convert(mode)
    except Exception as err:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError ...)
        raise ImageError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None


def prepare(img: Image.Image, preprocessing: dict, invert: bool = False) -> torch.Tensor:
    """A decoded image as the model's input [C, H, W], prepared as the training images were."""
    if invert:  # dark-on-light photos, for models trained light-on-dark (Fashion-MNIST)
        img = ImageOps.invert(img)
    kind = preprocessing["kind"]
    if kind == "tensor":
        x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).float().div_(255.0)
        x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
        size = preprocessing["image_size"]
        if tuple(x.shape[1:]) != (size, size):
            # training upsampled 28 px with this interpolation; antialias only matters when shrinking
            shrink = x.shape[1] > size or x.shape[2] > size
            x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False,
                              antialias=shrink)[0]
        mean = torch.tensor(preprocessing["mean"]).view(-1, 1, 1)
        std = torch.tensor(preprocessing["std"]).view(-1, 1, 1)
        return (x - mean) / std
    if kind == "transform":
        settings = {key: preprocessing[key] for key in ("resize", "crop", "mean", "std")}
        settings["grayscale"] = preprocessing["mode"] == "L"
        return build_transforms(settings, train=False)(img)
    raise ValueError(f"unknown preprocessing kind {kind!r}; expected 'tensor' or 'transform'")
