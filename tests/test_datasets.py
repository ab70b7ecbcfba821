"""Folder data sets: ImageFolder + taxonomy file, iNaturalist-2021 folders, CIFAR-100 pickles."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from PIL import Image

from dhnn.taxonomy import Taxonomy
from dhnn.data import build_splits, cifar100, dataset_taxonomy, folders, get_source, make_loader
from dhnn.data.base import class_targets
from dhnn.data.folders import inat_paths, inat_taxonomy
from dhnn.data.images import build_transforms, check_images, image_problem, transform_settings
from dhnn.taxonomy.files import load_taxonomy_file, taxonomy_from_edges

SMALL = {"resize": 20, "crop": 16}
PATHS = [["goods", "shoes", "Sneaker"], ["goods", "accessories", "Bag"], ["clothes", "dresses", "Dress"]]
INAT = ["00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris",
        "00001_Animalia_Chordata_Aves_Suliformes_Sulidae_Morus_bassanus",
        "00002_Plantae_Tracheophyta_Magnoliopsida_Rosales_Moraceae_Morus_alba",
        "00003_Plantae_Tracheophyta_Magnoliopsida_Rosales_Moraceae_Morus_rubra"]


def write_images(folder: Path, n: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 256, (18 + i, 22, 3), dtype=np.uint8)  # sizes vary, like real photos
        Image.fromarray(pixels).save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root/<class>/*.png|jpg with 4 images per class, and the tree as a paths and an edges CSV."""
    for k, name in enumerate(["Sneaker", "Bag", "Dress"]):
        write_images(tmp_path / "images" / name, 4, seed=k)
    write_csv(tmp_path / "paths.csv", "level_1,level_2,level_3\n" + "".join(",".join(p) + "\n" for p in PATHS))
    edges = {(a, b) for p in PATHS for a, b in zip(p, p[1:])}
    write_csv(tmp_path / "edges.csv", "parent,child\n" + "".join(f"{a},{b}\n" for a, b in sorted(edges)))
    return tmp_path


def check_loader(splits, classes: list[str], tree: Taxonomy, chans: int, size: int, workers: int) -> None:
    x, paths, y = next(iter(make_loader(splits.train, 5, shuffle=True, seed=0, num_workers=workers)))
    assert x.shape == (5, chans, size, size) and x.dtype == torch.float32
    assert paths.shape == (5, tree.num_levels) and y.shape == (5,) and y.dtype == torch.long
    assert torch.equal(paths, class_targets(classes, tree)[y])


# -- taxonomy files -------------------------------------------------------------------------------

def test_edges_and_paths_files_give_the_same_tree(folder: Path) -> None:
    from_edges = taxonomy_from_edges(folder / "edges.csv")
    assert from_edges.path("Sneaker") == ["goods", "shoes", "Sneaker"]
    assert sorted(map(tuple, from_edges.to_dict()["paths"])) == sorted(map(tuple, PATHS))
    assert load_taxonomy_file(folder / "edges.csv") == from_edges  # detected from the header
    assert load_taxonomy_file(folder / "paths.csv") == Taxonomy.from_csv(folder / "paths.csv")
    with pytest.raises(ValueError, match="parent,child"):
        load_taxonomy_file(folder / "paths.csv", "edges")


def test_edges_errors_name_the_file(tmp_path: Path) -> None:
    cyclic = write_csv(tmp_path / "cyclic.csv", "parent,child\nroot,a\na,b\nb,c\nc,a2\nc,b2\nb2,b\n")
    with pytest.raises(ValueError, match=r"line 7: 'b' has two parents"):
        taxonomy_from_edges(cyclic)
    cyclic = write_csv(tmp_path / "cyclic.csv", "parent,child\nx,y\na,b\nb,c\nc,a\n")
    with pytest.raises(ValueError, match=r"cyclic.csv: the edges form a cycle .*: a -> b -> c -> a"):
        taxonomy_from_edges(cyclic)
    two = write_csv(tmp_path / "two.csv", "parent,child\nA,x\n\nB,x\n")
    with pytest.raises(ValueError, match=r"two.csv: line 4: 'x' has two parents, 'A' and 'B'"):
        taxonomy_from_edges(two)


# -- ImageFolder ----------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_image_folder_splits_and_loaders(folder: Path, workers: int) -> None:
    cfg = {"name": "image_folder", "root": str(folder / "images"), "val_fraction": 0.25, "test_fraction": 0.25,
           "split_seed": 0, "transform": SMALL}
    tree = dataset_taxonomy(cfg, {"source": str(folder / "edges.csv")})
    assert tree == folders.taxonomy(cfg, {"source": str(folder / "edges.csv")})
    assert folders.classes(cfg) == get_source("image_folder").classes(cfg) == ["Bag", "Dress", "Sneaker"]
    get_source("image_folder").check(cfg)
    splits = build_splits(cfg, tree)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 3, 3)
    files = [set(s.files.tolist()) for s in (splits.train, splits.val, splits.test)]
    assert len(set.union(*files)) == 12  # a partition of the 12 images
    assert (splits.in_chans, splits.image_size) == (3, 16)
    x, paths, y = splits.test[0]
    assert x.shape == (3, 16, 16) and torch.equal(paths, tree.encode_path(tree.path(splits.classes[y])))
    assert "CenterCrop" in repr(splits.train.transform)  # augment defaults to off
    check_loader(splits, splits.classes, tree, 3, 16, workers)


def test_train_val_test_folders_and_grayscale(folder: Path) -> None:
    root = folder / "split"
    for split, n in [("train", 3), ("val", 1), ("test", 2)]:
        for name in ["Sneaker", "Dress"]:
            write_images(root / split / name, n)
    cfg = {"name": "image_folder", "root": str(root), "limit_train": 5, "augment": True,
           "transform": {**SMALL, "grayscale": True, "flip": True}}
    tree = Taxonomy.from_csv(folder / "paths.csv")
    splits = folders.splits(cfg, tree)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (5, 2, 4)
    assert "RandomCrop" in repr(splits.train.transform) and "Flip" in repr(splits.train.transform)
    assert "Flip" not in repr(splits.val.transform)
    limited = folders.splits({**cfg, "limit_test": 1}, tree)  # limit_val falls back to limit_test
    assert (len(limited.val), len(limited.test)) == (1, 1)
    assert len(folders.splits({**cfg, "limit_test": 1, "limit_val": 2}, tree).val) == 2
    assert all("/val/" in f for f in splits.val.files)
    check_loader(splits, splits.classes, tree, 1, 16, 0)


def test_transform_defaults_are_the_papers() -> None:
    text = repr(build_transforms({}, train=True))
    assert "Resize(size=256" in text and "RandomCrop(size=(224, 224)" in text and "Flip" not in text
    assert "mean=[0.485, 0.456, 0.406]" in text
    assert "CenterCrop(size=(224, 224))" in repr(build_transforms(None, train=False))
    with pytest.raises(ValueError, match="unknown keys \\['crop_size'\\]"):
        build_transforms({"crop_size": 3}, train=True)


def test_transform_settings_fill_in_and_check() -> None:
    t = transform_settings(None)
    assert (t["resize"], t["crop"], t["flip"], t["in_chans"]) == (256, 224, False, 3)
    gray = transform_settings({"grayscale": True, "crop": 16, "resize": 20})
    assert gray["in_chans"] == 1 and gray["mean"] == [pytest.approx(sum((0.485, 0.456, 0.406)) / 3)]
    assert transform_settings({}, mean=(0.5, 0.5, 0.5))["mean"] == [0.5, 0.5, 0.5]  # a data set's own statistics
    with pytest.raises(ValueError, match="resize 100 is smaller than crop 224"):
        transform_settings({"resize": 100})
    with pytest.raises(ValueError, match="mean and std need 1 values for grayscale"):
        transform_settings({"grayscale": True, "mean": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="crop must be a positive int"):
        transform_settings({"crop": 0})


def test_folder_errors_name_the_folder_or_file(folder: Path) -> None:
    cfg = {"name": "image_folder", "root": str(folder / "images"), "transform": SMALL}
    tree = Taxonomy.from_csv(folder / "paths.csv")
    bigger = Taxonomy.from_paths(PATHS + [["goods", "accessories", "Hat"]])
    (folder / "images" / "Hat").mkdir()
    with pytest.raises(FileNotFoundError, match=r"images/Hat: empty class folder"):
        folders.splits(cfg, bigger)
    write_images(folder / "images" / "Hat", 2)
    with pytest.raises(ValueError, match=r"paths.csv: the class folders \['Hat'\] of .*images are not nodes"):
        dataset_taxonomy(cfg, {"source": str(folder / "paths.csv")})
    with pytest.raises(ValueError, match=r"images \(class folders\): .*\['Hat'\] are not nodes"):
        folders.splits(cfg, tree)
    (folder / "images" / "Hat" / "img0.jpg").write_bytes(b"\xff\xd8 certainly not a JPEG")
    with pytest.raises(ValueError, match=r"Hat/img0.jpg: not a readable image"):
        folders.splits(cfg, bigger)
    folders.splits({**cfg, "verify_images": False}, bigger)  # the check is optional
    with pytest.raises(ValueError, match="img0.jpg: not a readable image"):
        check_images(sorted((folder / "images" / "Hat").iterdir()))
    check_images(sorted((folder / "images" / "Bag").iterdir()))  # good images pass
    (folder / "none").mkdir()
    with pytest.raises(FileNotFoundError, match=r"none: no class folders"):
        folders.splits({**cfg, "root": str(folder / "none")}, tree)


def test_check_images_decodes_every_pixel(tmp_path: Path) -> None:
    """A JPEG cut in half passes PIL's verify() (header only) but not a full decode."""
    pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    good, cut = tmp_path / "good.jpg", tmp_path / "cut.jpg"
    Image.fromarray(pixels).save(good)
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with Image.open(cut) as img:
        img.verify()  # the old check let this file through
    assert image_problem(good) is None
    assert "truncated" in image_problem(cut)
    with pytest.raises(ValueError, match=r"cut.jpg: not a readable image \(OSError: image file is truncated"):
        check_images([good, cut])
    check_images([good])


# -- iNaturalist 2021 -----------------------------------------------------------------------------

def test_inaturalist_folders(tmp_path: Path) -> None:
    for i, name in enumerate(INAT):
        write_images(tmp_path / "inat" / "train" / name, 4, seed=i)
        write_images(tmp_path / "inat" / "val" / name, 1, seed=i)
    cfg = {"name": "inaturalist", "root": str(tmp_path / "inat"), "folders": {"val": None, "test": "val"},
           "val_fraction": 0.25, "transform": SMALL}
    tree = dataset_taxonomy(cfg, {})
    assert tree == inat_taxonomy(tmp_path / "inat") == folders.taxonomy(cfg, {})
    assert tree.num_levels == 7 and tree.level_sizes == [2, 3, 3, 3, 3, 3, 4]
    assert tree.path("Lumbricus terrestris") == ["Animalia", "Annelida", "Clitellata", "Haplotaxida",
                                                 "Lumbricidae", "Lumbricus", "Lumbricus terrestris"]
    # the genus Morus is a bird and a plant: each place gets its parent's name in front
    assert tree.parent("Morus alba") == "Moraceae/Morus" and tree.parent("Morus bassanus") == "Sulidae/Morus"
    splits = folders.splits(cfg, tree)
    assert splits.classes == folders.classes(cfg) and len(splits.classes) == 4
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 4)
    check_loader(splits, splits.classes, tree, 3, 16, 2)

    cut = {**cfg, "depth": 2}  # phyla as classes: the two Tracheophyta folders merge
    tree2 = dataset_taxonomy(cut, {})
    assert tree2.levels == [["Animalia", "Plantae"], ["Annelida", "Chordata", "Tracheophyta"]]
    splits2 = folders.splits(cut, tree2)
    assert splits2.classes == ["Annelida", "Chordata", "Tracheophyta"]
    assert sorted(splits2.test.labels.tolist()) == [0, 1, 2, 2]
    assert inat_paths(INAT[1:2], depth=3)[INAT[1]] == ["Animalia", "Chordata", "Aves"]
    with pytest.raises(ValueError, match=r"data.depth must be in 1..7"):
        inat_paths(INAT, depth=8)
    (tmp_path / "inat" / "train" / "Lumbricus").mkdir()
    with pytest.raises(ValueError, match="train/Lumbricus: not an iNaturalist-2021 folder name"):
        inat_taxonomy(tmp_path / "inat")


# -- CIFAR-100 ------------------------------------------------------------------------------------

COARSE = ["fish", "flowers"]
FINE = ["aquarium_fish", "flatfish", "orchid", "poppy"]


@pytest.fixture
def cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny cifar-100-python folder in the official format, read by torchvision's own CIFAR100.

    The official files are Python 2 pickles whose keys load as str under encoding="latin1", so the
    fixture pickles str keys (protocol 2). torchvision checks the files' md5 against the real
    ones; only that check is patched out, so the rest of its reading path runs as on real data.
    """
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in [("train", 20), ("test", 8)]:
        fine = [i % 4 for i in range(n)]
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": fine,
                 "coarse_labels": [f // 2 for f in fine], "filenames": [f"{i}.png" for i in range(n)],
                 "batch_label": f"{split} batch"}
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"fine_label_names": FINE, "coarse_label_names": COARSE}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    return tmp_path


def test_cifar100_in_memory_and_resized(cifar: Path) -> None:
    cfg = {"name": "cifar100", "root": str(cifar), "val_fraction": 0.25, "split_seed": 0, "augment": True}
    tree = dataset_taxonomy(cfg, {})
    assert tree.levels == [COARSE, FINE] and tree.parent("orchid") == "flowers"
    assert tree == cifar100.cifar100_taxonomy(cifar) == cifar100.taxonomy(cfg, {})
    assert cifar100.classes(cfg) == get_source("cifar100").classes(cfg) == FINE
    cifar100.check(cfg)
    splits = cifar100.splits(cfg, tree)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 8)
    assert (splits.in_chans, splits.image_size) == (3, 32)
    assert splits.train.augment is True and splits.val.augment is False
    check_loader(splits, FINE, tree, 3, 32, 0)
    unset = {k: v for k, v in cfg.items() if k != "augment"}
    assert cifar100.splits(unset, tree).train.augment is False  # augment defaults to off

    resized = build_splits({**cfg, "transform": {"resize": 40, "crop": 36, "flip": True}}, tree)
    assert resized.image_size == 36 and len(resized.test) == 8
    check_loader(resized, FINE, tree, 3, 36, 2)


def test_cifar100_missing_files_say_where(tmp_path: Path) -> None:
    cfg = {"name": "cifar100", "root": str(tmp_path)}
    with pytest.raises(FileNotFoundError, match="cifar-100-python/meta: missing CIFAR-100 file"):
        dataset_taxonomy(cfg, {})
    with pytest.raises(FileNotFoundError, match="cifar-100-python/meta: missing CIFAR-100 file"):
        get_source("cifar100").check(cfg)
    with pytest.raises(FileNotFoundError, match="cifar-100-python: CIFAR-100 files missing or corrupt"):
        cifar100.splits(cfg, Taxonomy.from_paths([COARSE]))
