"""Data fetching, targets, splits and batches."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dhnn import Taxonomy
from dhnn.data import (RAW_FILES, HierarchicalTensorDataset, ImageSet, build_splits, class_targets,
                       fetch_fashion_mnist, make_loader, random_flip_crop, split_indices, subsample)

TREE = Taxonomy.from_csv("taxonomies/fashion_mnist.csv")
DATA = Path("data")
needs_data = pytest.mark.skipif(not (DATA / "FashionMNIST" / "raw").is_dir(), reason="run scripts/setup.sh first")


@given(n=st.integers(2, 500), frac=st.floats(0.0, 0.9), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=50, deadline=None)
def test_split_is_a_seeded_partition(n: int, frac: float, seed: int) -> None:
    train, val = split_indices(n, frac, seed)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(n))
    assert len(val) == round(n * frac)
    again = split_indices(n, frac, seed)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])


def test_subsample() -> None:
    assert torch.equal(subsample(10, None, 0), torch.arange(10))
    picked = subsample(100, 7, 3)
    assert len(picked) == 7 and len(set(picked.tolist())) == 7 and torch.equal(picked, subsample(100, 7, 3))


def test_class_targets_and_unknown_class() -> None:
    targets = class_targets(["Sneaker", "Bag"], TREE)
    assert TREE.decode(targets) == [["goods", "shoes", "Sneaker"], ["goods", "accessories", "Bag"]]
    with pytest.raises(ValueError, match=r"my.csv: .*'Hat'"):
        class_targets(["Sneaker", "Hat"], TREE, source="my.csv")


def test_dataset_batches_and_loader_order_is_seeded() -> None:
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(20) % 10
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    ds = HierarchicalTensorDataset(ImageSet(images, labels, classes), class_targets(classes, TREE), 0.5, 0.5)
    x, paths, y = next(iter(make_loader(ds, 8, shuffle=True, seed=1)))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and paths.shape == (8, 3)
    assert torch.equal(paths, class_targets(classes, TREE)[y])
    _, _, y2 = next(iter(make_loader(ds, 8, shuffle=True, seed=1)))
    assert torch.equal(y, y2)


def test_random_flip_crop_keeps_shape_and_pixels() -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 1, 28, 28)
    out = random_flip_crop(x, pad=2)
    assert out.shape == x.shape
    # a shifted image keeps its pixels, so no value appears that the padded input lacks
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_fetch_rejects_a_corrupt_source_and_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "deb"
    source.mkdir()
    for name in RAW_FILES:
        with gzip.open(source / f"{name}.gz", "wb") as f:
            f.write(b"not fashion-mnist")
    with pytest.raises(ValueError, match="does not match the official"):
        fetch_fashion_mnist(tmp_path / "data", source)
    assert not (tmp_path / "data" / "FashionMNIST" / "raw").exists()
    assert list(tmp_path.iterdir()) == [source] or sorted(p.name for p in tmp_path.iterdir()) == ["data", "deb"]


@needs_data
def test_build_splits_on_fashion_mnist() -> None:
    cfg = {"name": "fashion_mnist", "root": "data", "val_fraction": 0.1, "split_seed": 0,
           "limit_train": 100, "limit_test": 50}
    splits = build_splits(cfg, TREE)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 50, 50)
    assert splits.classes[0] == "T-shirt/top" and splits.in_chans == 1 and splits.image_size == 28
    full = build_splits({**cfg, "limit_train": None, "limit_test": None}, TREE)
    assert (len(full.train), len(full.val), len(full.test)) == (54000, 6000, 10000)


def test_missing_data_names_the_folder(tmp_path: Path) -> None:
    cfg = {"name": "fashion_mnist", "root": str(tmp_path), "val_fraction": 0.1, "split_seed": 0}
    with pytest.raises(FileNotFoundError, match="FashionMNIST/raw: missing"):
        build_splits(cfg, TREE)


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        build_splits({"name": "imagenet", "root": "data"}, TREE)
