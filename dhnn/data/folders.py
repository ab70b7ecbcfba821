"""Image folders: ImageFolder trees (``root/<class>/*.jpg``) and iNaturalist-2021 class folders.

``data`` keys besides ``name`` and ``root``: ``val_fraction`` / ``test_fraction`` (carved from
train where there is no val/test folder), ``split_seed``, ``limit_train`` / ``limit_val`` /
``limit_test``, ``augment``, ``transform`` (see dhnn.data.images), ``folders`` (renames
train/val/test, a null drops one), ``verify_images`` (decode every image first), and for
inaturalist ``depth`` (1..7). Everything that can be wrong with the files (empty class folder,
class missing from the taxonomy, corrupt image) is reported while the splits are built.
"""
from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, is_image_file

from ..paths import resolve
from ..taxonomy import Taxonomy
from ..taxonomy.files import load_taxonomy_file
from .base import Splits, class_targets, data_settings, folder_fingerprint, split_indices, subsample
from .images import ItemDataset, build_transforms, check_images, transform_settings

INAT_LEVELS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


class FolderDataset(ItemDataset):
    """Image files, decoded on access; ``samples`` are (file, class name), ``targets`` [num_classes, T]."""

    def __init__(self, samples: Sequence[tuple[str, str]], classes: Sequence[str], targets: torch.Tensor,
                 transform: Callable, mode: str = "RGB"):
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({c for _, c in samples if c not in index})
        if unknown:
            raise ValueError(f"samples of classes {unknown[:5]} that are not in the class list")
        super().__init__([index[c] for _, c in samples], targets, transform, mode)
        self.classes = list(classes)
        # one numpy buffer instead of a list of str: forked workers would otherwise copy the
        # list's pages as they touch the objects' reference counts
        self.files = np.array([str(f) for f, _ in samples])

    def _image(self, i: int) -> Image.Image:
        with open(self.files[i], "rb") as f:
            img = Image.open(f)
            img.load()  # decode before the file closes
        return img



# -- folder trees -------------------------------------------------------------------------------

def class_folders(folder: Path) -> list[str]:
    """Sorted names of the class folders (hidden ones skipped) of an ImageFolder-style tree."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such data folder")
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise FileNotFoundError(f"{folder}: no class folders (expected {folder}/<class>/<image files>)")
    return names


def scan_folder(folder: Path) -> list[tuple[str, str]]:
    """(image file, class folder name) for every image under ``folder/<class>/``, sorted."""
    samples = []
    for name in class_folders(folder):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder / name, followlinks=True)
                       for f in fs if is_image_file(f))
        if not files:
            raise FileNotFoundError(f"{folder / name}: empty class folder (no files ending in "
                                    f"{', '.join(IMG_EXTENSIONS)})")
        samples += [(f, name) for f in files]
    return samples


def _train_folder(root: Path, cfg: dict) -> Path:
    """The folder the class list comes from: ``root/train`` when present, else ``root``."""
    train = root / cfg.get("folders", {}).get("train", "train")
    return train if train.is_dir() else root


def inat_paths(folder_names: Sequence[str], depth: int | None = None, where: str = "") -> dict[str, list[str]]:
    """Root path (kingdom ... species, cut to ``depth`` levels) of each iNaturalist-2021 folder name.

    ``00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris`` is the id
    and seven ranks; the species is genus and epithet joined by a space. Taxonomy node names must
    be unique, but names can repeat in different places (the genus Morus is a bird and a plant), so
    a name used by more than one node becomes ``parent/name`` in each of its places.
    """
    if depth is not None and not 1 <= depth <= len(INAT_LEVELS):
        raise ValueError(f"data.depth must be in 1..{len(INAT_LEVELS)} (kingdom..species), got {depth}")
    raw: dict[str, tuple[str, ...]] = {}
    for name in folder_names:
        tokens = name.split("_")
        if len(tokens) < 8 or not tokens[0].isdigit() or not all(tokens):
            raise ValueError(f"{where}/{name}: not an iNaturalist-2021 folder name "
                             f"(id_kingdom_phylum_class_order_family_genus_species)")
        raw[name] = (*tokens[1:7], " ".join(tokens[6:]))[:depth]
    places: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for path in raw.values():
        for d in range(len(path)):
            places[path[d]].add(path[: d + 1])
    unique: dict[tuple[str, ...], str] = {}

    def name_of(key: tuple[str, ...]) -> str:
        if key not in unique:
            plain = len(key) == 1 or len(places[key[-1]]) == 1
            unique[key] = key[-1] if plain else f"{name_of(key[:-1])}/{key[-1]}"
        return unique[key]

    return {folder: [name_of(path[: d + 1]) for d in range(len(path))] for folder, path in raw.items()}


def inat_taxonomy(root: str | Path, depth: int | None = None) -> Taxonomy:
    """The tree the iNaturalist-2021 class folders of ``root`` (or ``root/train``) spell out."""
    folder = _train_folder(Path(root), {})
    return Taxonomy.from_paths(inat_paths(class_folders(folder), depth, str(folder)).values())


def _class_map(cfg: dict, folder: Path) -> dict[str, str]:
    """Class folder name -> class name for the folder kinds."""
    names = class_folders(folder)
    if cfg["name"] == "inaturalist":
        return {f: p[-1] for f, p in inat_paths(names, cfg.get("depth"), str(folder)).items()}
    return {f: f for f in names}


# -- the data-source interface (see dhnn.data.registry) -------------------------------------------

def classes(cfg: dict) -> list[str]:
    """The class names (class index order) that the class folders spell."""
    cfg = data_settings(cfg)
    root = resolve(cfg["root"])
    return list(dict.fromkeys(_class_map(cfg, _train_folder(root, cfg)).values()))


def taxonomy(data_cfg: dict, taxonomy_cfg: dict) -> Taxonomy:
    """The class tree: from the folder names for inaturalist, from ``taxonomy.source`` for image_folder."""
    data_cfg = data_settings(data_cfg)
    root = resolve(data_cfg["root"])
    if data_cfg["name"] == "inaturalist":
        return inat_taxonomy(root, data_cfg.get("depth"))
    if not taxonomy_cfg.get("source"):
        raise ValueError("taxonomy.source: an image_folder data set needs a taxonomy file (label paths or parent,child edges)")
    source = resolve(taxonomy_cfg["source"])
    tree = load_taxonomy_file(source, taxonomy_cfg.get("format", "auto"))
    unknown = [c for c in classes(data_cfg) if c not in tree]
    if unknown:
        raise ValueError(f"{source}: the class folders {unknown} of {_train_folder(root, data_cfg)} are not nodes of this taxonomy")
    return tree


def check(cfg: dict) -> dict[str, str]:
    """The class folders exist and none is empty; return a fingerprint of the files."""
    cfg = data_settings(cfg)
    scan_folder(_train_folder(resolve(cfg["root"]), cfg))
    return folder_fingerprint(resolve(cfg["root"]))


def _split_samples(cfg: dict, root: Path) -> dict[str, list[tuple[str, str]]]:
    """(file, class folder) per split: ``root/train|val|test`` folders where present, the rest carved from train."""
    names = {"train": "train", "val": "val", "test": "test", **cfg.get("folders", {})}
    train_dir = _train_folder(root, cfg)
    base = scan_folder(train_dir)
    given = {s: scan_folder(root / names[s]) for s in ("val", "test")
             if train_dir != root and names[s] and (root / names[s]).is_dir()}
    fractions = {s: cfg[f"{s}_fraction"] for s in ("val", "test") if s not in given}
    if sum(fractions.values()) >= 1:
        raise ValueError(f"data: val_fraction + test_fraction must be below 1, got {fractions}")
    seed, keep, carved = cfg["split_seed"], torch.arange(len(base)), {}
    for s, frac in fractions.items():  # fractions of the whole train folder
        rest, part = split_indices(len(keep), frac * len(base) / len(keep), seed)
        keep, carved[s] = keep[rest], keep[part]
    out = {"train": [base[i] for i in keep.tolist()], **given}
    out.update({s: [base[i] for i in idx.tolist()] for s, idx in carved.items()})
    for s in ("train", "val", "test"):
        if not out[s]:
            raise ValueError(f"{root}: the {s} split has no images; add a {root / (names[s] or s)} folder "
                             f"or raise data.{s}_fraction")
    return out


def splits(cfg: dict, tree: Taxonomy) -> Splits:
    """Train, validation and test sets of an image_folder or inaturalist data set (see the module doc)."""
    cfg = data_settings(cfg)
    root = resolve(cfg["root"])
    train_dir = _train_folder(root, cfg)
    to_class = _class_map(cfg, train_dir)
    names = list(dict.fromkeys(to_class.values()))
    targets = class_targets(names, tree, source=f"{train_dir} (class folders)")
    t = transform_settings(cfg.get("transform"))
    seed, limits = cfg["split_seed"], {"train": cfg.get("limit_train"), "test": cfg.get("limit_test"),
                                              "val": cfg.get("limit_val") or cfg.get("limit_test")}
    sets = {}
    for split, samples in _split_samples(cfg, root).items():
        strangers = sorted({folder for _, folder in samples if folder not in to_class})
        if strangers:
            raise ValueError(f"{root}: the {split} split has class folders {strangers[:5]} that {train_dir} lacks")
        picked = subsample(len(samples), limits[split], seed).tolist()
        sets[split] = [(samples[i][0], to_class[samples[i][1]]) for i in picked]
    if cfg["verify_images"]:
        check_images([f for split in ("train", "val", "test") for f, _ in sets[split]])
    mode = "L" if t["grayscale"] else "RGB"
    augment = cfg["augment"]

    def make(split: str, train: bool) -> FolderDataset:
        return FolderDataset(sets[split], names, targets, build_transforms(cfg.get("transform"), train), mode)

    return Splits(make("train", augment), make("val", False), make("test", False),
                  classes=names, in_chans=t["in_chans"], image_size=t["crop"])
