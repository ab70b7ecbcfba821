"""Folder-based data sets: ImageFolder trees, iNaturalist-2021 folders and CIFAR-100.

Folder images are decoded lazily, one per ``__getitem__``, so the decoding runs in the
DataLoader's worker processes; items are ``(image [C, H, W], path targets [T], class index)``,
which default collation turns into the same batches as ``HierarchicalTensorDataset`` gives.
Everything that can be wrong with the files (empty class folder, class missing from the
taxonomy, corrupt image, cyclic taxonomy) is reported while the splits are built, before training.

``data`` keys (params.yaml) besides ``name`` and ``root``:
  * all kinds: ``val_fraction`` (0.1), ``split_seed`` (0), ``limit_train`` / ``limit_val`` /
    ``limit_test``, ``augment`` (true: random crop, plus flip if ``transform.flip``, on train),
    ``transform`` (resize, crop, flip, mean, std, grayscale; see build_transforms).
  * image_folder / inaturalist: ``root/<class>/<images>``, or ``root/train|val|test/<class>/...``
    (``folders`` renames these, a null drops one); a split without a folder is carved from the
    train images by ``val_fraction`` / ``test_fraction`` (0.1, fractions of the train images).
    ``verify_images`` (true) opens every image with PIL first. inaturalist: ``depth`` (1..7).
  * cifar100: ``download`` (false). Without ``transform`` the 32x32 images stay in memory as
    uint8 and ``augment`` means random flips and 2-pixel shifts; with it, PIL transforms per item.
"""
from __future__ import annotations

import csv
import os
import pickle
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets import CIFAR100
from torchvision.datasets.folder import IMG_EXTENSIONS, is_image_file

from .config import resolve
from .data import FOLDER_KINDS, HierarchicalTensorDataset, ImageSet, Splits, class_targets, split_indices, subsample
from .taxonomy import Taxonomy

# The paper subtracts the ImageNet channel means 123.68, 116.779, 103.939 from 0-255 pixels; on
# ToTensor's 0-1 scale those are these fractions. Dividing by the ImageNet std as well is what
# torchvision/timm pretrained weights expect; set std: [0.00392156862745098] * 3 (1/255) to get
# the paper's mean-subtraction-only scaling exactly.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CIFAR-100 training-set channel statistics on the 0-1 scale.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CIFAR_FOLDER = "cifar-100-python"
TRANSFORM_KEYS = {"resize", "crop", "flip", "mean", "std", "grayscale"}
INAT_LEVELS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


# -- transforms ---------------------------------------------------------------------------------

def build_transforms(cfg: dict | None, train: bool) -> T.Compose:
    """Resize (shorter side, or [h, w]), random (train) or center crop, optional flip, normalise.

    Defaults are the paper's: resize 256, crop 224, ImageNet normalisation, no flip.
    """
    cfg = _transform_cfg(cfg)
    ops: list[Callable] = []
    if cfg["resize"]:
        ops.append(T.Resize(cfg["resize"]))
    crop = cfg["crop"]
    ops.append(T.RandomCrop(crop, pad_if_needed=True) if train else T.CenterCrop(crop))
    if train and cfg["flip"]:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])]
    return T.Compose(ops)


def _transform_cfg(cfg: dict | None, mean: Sequence[float] = IMAGENET_MEAN,
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

class _ItemDataset(Dataset):
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


class FolderDataset(_ItemDataset):
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


class ArrayImageDataset(_ItemDataset):
    """In-memory uint8 images [N, H, W, C] put through a PIL transform (CIFAR-100 at other sizes)."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], targets: torch.Tensor,
                 transform: Callable, mode: str = "RGB"):
        super().__init__(labels, targets, transform, mode)
        self.images = images

    def _image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])


def check_images(files: Sequence[str | Path], workers: int = 16) -> None:
    """Raise a ValueError naming the first file (in ``files`` order) PIL cannot identify or verify."""
    def problem(path: str | Path) -> str | None:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as e:  # PIL raises many types (UnidentifiedImageError, SyntaxError, OSError)
            return f"{type(e).__name__}: {e}"
        return None

    # threads, because the work is mostly file reads; blocks keep the number of pending futures small
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(files), 4096):
            block = files[start:start + 4096]
            for path, err in zip(block, pool.map(problem, block)):
                if err is not None:
                    raise ValueError(f"{path}: not a readable image ({err}); remove or replace it, "
                                     f"or set data.verify_images: false to skip this check")


# -- taxonomy files -----------------------------------------------------------------------------

def taxonomy_from_edges(path: str | Path) -> Taxonomy:
    """Read a CSV with a ``parent,child`` header and one edge per row; nodes without a parent are level 1."""
    parent: dict[str, str] = {}
    order: dict[str, None] = {}  # nodes in order of first appearance, which fixes the level order
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [c.strip().lower() for c in header] != ["parent", "child"]:
            raise ValueError(f"{path}: expected the header row parent,child, got {header}")
        for row in reader:
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            where = f"{path}: line {reader.line_num}"
            if len(cells) != 2 or not all(cells):
                raise ValueError(f"{where}: expected two non-empty cells parent,child, got {row}")
            p, c = cells
            if c in parent and parent[c] != p:
                raise ValueError(f"{where}: {c!r} has two parents, {parent[c]!r} and {p!r}")
            parent[c] = p
            order.update({p: None, c: None})
    if not parent:
        raise ValueError(f"{path}: no edges after the header row")
    paths = []
    for node in order:
        chain = [node]
        while chain[-1] in parent:
            up = parent[chain[-1]]
            if up in chain:
                cycle = chain[chain.index(up):] + [up]
                raise ValueError(f"{path}: the edges form a cycle (parent -> child): {' -> '.join(reversed(cycle))}")
            chain.append(up)
        paths.append(chain[::-1])
    return Taxonomy.from_paths(paths)


def load_taxonomy_file(path: str | Path, fmt: str = "auto") -> Taxonomy:
    """Read a taxonomy file: ``paths`` CSV, ``edges`` CSV (parent,child), or ``json``; ``auto`` detects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such taxonomy file")
    if fmt == "auto":
        if path.suffix.lower() == ".json":
            fmt = "json"
        else:
            with open(path, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f), [])
            fmt = "edges" if [c.strip().lower() for c in header] == ["parent", "child"] else "paths"
    readers = {"paths": Taxonomy.from_csv, "edges": taxonomy_from_edges, "json": Taxonomy.load}
    if fmt not in readers:
        raise ValueError(f"{path}: unknown taxonomy format {fmt!r}; expected auto, {', '.join(readers)}")
    return readers[fmt](path)


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


# -- CIFAR-100 ----------------------------------------------------------------------------------

def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing CIFAR-100 file; set data.download: true to fetch the data set")
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # the official files are Python 2 pickles


def _cifar_root(cfg: dict) -> Path:
    root = resolve(cfg["root"])
    if cfg.get("download", False):
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
    seed = cfg.get("split_seed", 0)
    train_idx, val_idx = split_indices(len(train_all.labels), cfg.get("val_fraction", 0.1), seed)
    train_idx = train_idx[subsample(len(train_idx), cfg.get("limit_train"), seed)]
    val_idx = val_idx[subsample(len(val_idx), cfg.get("limit_val", cfg.get("limit_test")), seed)]
    test_idx = subsample(len(test.labels), cfg.get("limit_test"), seed)
    augment = cfg.get("augment", True)
    if "transform" not in cfg:  # native 32x32 in memory: a batch is one indexing step
        mean, std = torch.tensor(CIFAR100_MEAN).view(3, 1, 1), torch.tensor(CIFAR100_STD).view(3, 1, 1)

        def make(data: ImageSet, idx: torch.Tensor, aug: bool) -> HierarchicalTensorDataset:
            return HierarchicalTensorDataset(data.subset(idx), targets, mean, std, augment=aug)  # type: ignore[arg-type]

        return Splits(make(train_all, train_idx, augment), make(train_all, val_idx, False), make(test, test_idx, False),
                      classes=train_all.classes, in_chans=3, image_size=32)
    t = _transform_cfg(cfg["transform"], CIFAR100_MEAN, CIFAR100_STD)
    mode = "L" if t["grayscale"] else "RGB"

    def make_items(hwc: np.ndarray, labels: torch.Tensor, idx: torch.Tensor, train: bool) -> ArrayImageDataset:
        return ArrayImageDataset(hwc[idx.numpy()], labels[idx], targets, build_transforms(cfg["transform"], train), mode)

    return Splits(make_items(train_hwc, train_all.labels, train_idx, augment),
                  make_items(train_hwc, train_all.labels, val_idx, False),
                  make_items(test_hwc, test.labels, test_idx, False),
                  classes=train_all.classes, in_chans=t["in_chans"], image_size=t["crop"])


# -- entry points -------------------------------------------------------------------------------

def _check_kind(cfg: dict) -> str:
    if cfg.get("name") not in FOLDER_KINDS:
        raise ValueError(f"unknown folder data set {cfg.get('name')!r}; expected one of {FOLDER_KINDS}")
    return cfg["name"]


def folder_classes(cfg: dict) -> list[str]:
    """The class names of a folder data set (class index order), from folder names or CIFAR's meta file."""
    if _check_kind(cfg) == "cifar100":
        return list(_unpickle(_cifar_root(cfg) / CIFAR_FOLDER / "meta")["fine_label_names"])
    root = resolve(cfg["root"])
    return list(dict.fromkeys(_class_map(cfg, _train_folder(root, cfg)).values()))


def dataset_taxonomy(data_cfg: dict, taxonomy_cfg: dict) -> Taxonomy:
    """The class tree: built from the data for cifar100 / inaturalist, read from taxonomy.source for image_folder."""
    kind = _check_kind(data_cfg)
    if kind == "cifar100":
        return cifar100_taxonomy(_cifar_root(data_cfg))
    root = resolve(data_cfg["root"])
    if kind == "inaturalist":
        return inat_taxonomy(root, data_cfg.get("depth"))
    if not taxonomy_cfg.get("source"):
        raise ValueError("taxonomy.source: an image_folder data set needs a taxonomy file (label paths or parent,child edges)")
    source = resolve(taxonomy_cfg["source"])
    tree = load_taxonomy_file(source, taxonomy_cfg.get("format", "auto"))
    unknown = [c for c in folder_classes(data_cfg) if c not in tree]
    if unknown:
        raise ValueError(f"{source}: the class folders {unknown} of {_train_folder(root, data_cfg)} are not nodes of this taxonomy")
    return tree


def _split_samples(cfg: dict, root: Path) -> dict[str, list[tuple[str, str]]]:
    """(file, class folder) per split: ``root/train|val|test`` folders where present, the rest carved from train."""
    names = {"train": "train", "val": "val", "test": "test", **cfg.get("folders", {})}
    train_dir = _train_folder(root, cfg)
    base = scan_folder(train_dir)
    given = {s: scan_folder(root / names[s]) for s in ("val", "test")
             if train_dir != root and names[s] and (root / names[s]).is_dir()}
    fractions = {s: cfg.get(f"{s}_fraction", 0.1) for s in ("val", "test") if s not in given}
    if sum(fractions.values()) >= 1:
        raise ValueError(f"data: val_fraction + test_fraction must be below 1, got {fractions}")
    seed, keep, carved = cfg.get("split_seed", 0), torch.arange(len(base)), {}
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


def build_folder_splits(cfg: dict, taxonomy: Taxonomy) -> Splits:
    """Train, validation and test sets of an image_folder, inaturalist or cifar100 data set (see module doc)."""
    if _check_kind(cfg) == "cifar100":
        return _cifar100_splits(cfg, taxonomy)
    root = resolve(cfg["root"])
    train_dir = _train_folder(root, cfg)
    to_class = _class_map(cfg, train_dir)
    classes = list(dict.fromkeys(to_class.values()))
    targets = class_targets(classes, taxonomy, source=f"{train_dir} (class folders)")
    t = _transform_cfg(cfg.get("transform"))
    seed, limits = cfg.get("split_seed", 0), {"train": cfg.get("limit_train"), "test": cfg.get("limit_test"),
                                              "val": cfg.get("limit_val", cfg.get("limit_test"))}
    sets = {}
    for split, samples in _split_samples(cfg, root).items():
        strangers = sorted({folder for _, folder in samples if folder not in to_class})
        if strangers:
            raise ValueError(f"{root}: the {split} split has class folders {strangers[:5]} that {train_dir} lacks")
        picked = subsample(len(samples), limits[split], seed).tolist()
        sets[split] = [(samples[i][0], to_class[samples[i][1]]) for i in picked]
    if cfg.get("verify_images", True):
        check_images([f for split in ("train", "val", "test") for f, _ in sets[split]])
    mode = "L" if t["grayscale"] else "RGB"
    augment = cfg.get("augment", True)

    def make(split: str, train: bool) -> FolderDataset:
        return FolderDataset(sets[split], classes, targets, build_transforms(cfg.get("transform"), train), mode)

    return Splits(make("train", augment), make("val", False), make("test", False),
                  classes=classes, in_chans=t["in_chans"], image_size=t["crop"])
