"""Data fetching, targets, splits and batches."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dhnn.data import SOURCES, build_splits, dataset_taxonomy, get_source, make_loader
from dhnn.data.base import HierarchicalTensorDataset, ImageSet, class_targets, random_flip_crop, split_indices, subsample
from dhnn.data.fashion_mnist import (CLASSES, RAW_FILES, RAW_MD5, RAW_SHAPES, fetch, load, main, raw_folder,
                                     read_idx, verify)
from dhnn.taxonomy import Taxonomy

TREE = Taxonomy.from_csv("taxonomies/fashion_mnist.csv")
DATA = Path("data")
needs_data = pytest.mark.skipif(not (DATA / "FashionMNIST" / "raw").is_dir(), reason="run scripts/setup.sh first")
SETUP = r"bash scripts/setup\.sh"


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
    classes = list(CLASSES)
    ds = HierarchicalTensorDataset(ImageSet(images, labels, classes), class_targets(classes, TREE), 0.5, 0.5)
    assert ds.augment is False  # augmentation is opt-in
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


# -- the source registry --------------------------------------------------------------------------

def test_registry_tasks_and_unknown_dataset() -> None:
    assert set(SOURCES) == {"fashion_mnist", "image_folder", "inaturalist", "cifar100", "open_images", "fashion_scenes"}
    # node_sets (several labels per image) replaces the old is_multilabel
    assert [n for n, s in SOURCES.items() if s.task == "node_sets"] == ["open_images", "fashion_scenes"]
    assert get_source("fashion_mnist").task == "paths"
    assert get_source("fashion_mnist").classes({"name": "fashion_mnist"}) == CLASSES
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        get_source("imagenet")
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        build_splits({"name": "imagenet", "root": "data"}, TREE)


def test_fashion_mnist_taxonomy_is_checked_against_its_classes(tmp_path: Path) -> None:
    data = {"name": "fashion_mnist", "root": "data"}
    assert dataset_taxonomy(data, {"source": "taxonomies/fashion_mnist.csv"}) == TREE
    with pytest.raises(ValueError, match="taxonomy.source: name the taxonomy file"):
        dataset_taxonomy(data, {})
    small = tmp_path / "small.csv"
    small.write_text("level_1,level_2\ngoods,Bag\nclothes,Dress\n")
    with pytest.raises(ValueError, match=r"small.csv: the data set's classes \['T-shirt/top'.* are not nodes"):
        dataset_taxonomy(data, {"source": str(small)})


# -- the Fashion-MNIST files ----------------------------------------------------------------------

def test_fetch_rejects_a_corrupt_source_and_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "deb"
    source.mkdir()
    for name in RAW_FILES:
        with gzip.open(source / f"{name}.gz", "wb") as f:
            f.write(b"not fashion-mnist")
    with pytest.raises(ValueError, match=r"deb/train-images-idx3-ubyte.gz: .*not an idx file"):
        fetch(tmp_path / "data", source)
    assert not (tmp_path / "data" / "FashionMNIST" / "raw").exists()
    assert list(tmp_path.iterdir()) == [source] or sorted(p.name for p in tmp_path.iterdir()) == ["data", "deb"]
    assert not list((tmp_path / "data").iterdir())  # no staging folder left behind either


def test_read_idx_checks_header_size_and_md5(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "good-idx3-ubyte"
    good.write_bytes((0x0803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in data.shape) + data.tobytes())
    assert np.array_equal(read_idx(good, (2, 3, 4)), data)
    with pytest.raises(ValueError, match=r"good-idx3-ubyte: header says shape \(2, 3, 4\), expected \(2, 4, 3\)"):
        read_idx(good, (2, 4, 3))
    with pytest.raises(ValueError, match=r"good-idx3-ubyte: not an idx file of 1 dimensions"):
        read_idx(good, (24,))
    with pytest.raises(ValueError, match=r"good-idx3-ubyte: md5 [0-9a-f]{32} differs from the official file's 0+"):
        read_idx(good, (2, 3, 4), "0" * 32)
    with pytest.raises(FileNotFoundError, match=rf"nothing-idx3-ubyte: missing; run `{SETUP}`"):
        read_idx(tmp_path / "nothing-idx3-ubyte", (2, 3, 4))


def test_missing_data_folder_says_to_run_setup(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"  # no data/ folder at all
    cfg = {"name": "fashion_mnist", "root": str(root), "val_fraction": 0.1, "split_seed": 0}
    with pytest.raises(FileNotFoundError, match=rf"data/FashionMNIST/raw: no Fashion-MNIST files there; run `{SETUP}`"):
        get_source("fashion_mnist").check(cfg)
    with pytest.raises(FileNotFoundError,
                       match=rf"data/FashionMNIST/raw/train-images-idx3-ubyte: missing; run `{SETUP}`"):
        build_splits(cfg, TREE)
    assert main([str(root), "--verify"]) == 1
    assert "bash scripts/setup.sh" in capsys.readouterr().err
    assert not root.exists()  # checking creates nothing


@pytest.fixture
def raw_copy(tmp_path: Path) -> Path:
    """A copy of the real data folder under tmp (the originals are never touched); returns its root."""
    if not raw_folder(DATA).is_dir():
        pytest.skip("run scripts/setup.sh first")
    root = tmp_path / "data"
    shutil.copytree(raw_folder(DATA), raw_folder(root))
    return root


def test_truncated_idx_file_is_named(raw_copy: Path) -> None:
    images = raw_folder(raw_copy) / "train-images-idx3-ubyte"
    with open(images, "r+b") as f:
        f.truncate(images.stat().st_size // 2)
    match = r"train-images-idx3-ubyte: 23,520,008 bytes, expected 47,040,016 .*truncated"
    with pytest.raises(ValueError, match=match):
        verify(raw_copy)
    with pytest.raises(ValueError, match=match):
        load(raw_copy, train=True)
    with pytest.raises(ValueError, match=match):
        build_splits({"name": "fashion_mnist", "root": str(raw_copy), "val_fraction": 0.1, "split_seed": 0}, TREE)
    assert load(raw_copy, train=False).images.shape == (10000, 1, 28, 28)  # the test files are fine


def test_wrong_md5_of_the_right_size_is_named(raw_copy: Path) -> None:
    labels = raw_folder(raw_copy) / "t10k-labels-idx1-ubyte"
    content = bytearray(labels.read_bytes())
    content[-1] = (content[-1] + 1) % 10  # still a valid label, same size
    labels.write_bytes(bytes(content))
    assert labels.stat().st_size == 8 + RAW_SHAPES["t10k-labels-idx1-ubyte"][0]
    match = rf"t10k-labels-idx1-ubyte: md5 [0-9a-f]{{32}} differs from the official file's {RAW_MD5['t10k-labels-idx1-ubyte']}"
    with pytest.raises(ValueError, match=match):
        load(raw_copy, train=False)
    with pytest.raises(ValueError, match=match):
        get_source("fashion_mnist").check({"name": "fashion_mnist", "root": str(raw_copy)})


@needs_data
def test_load_reads_the_official_files() -> None:
    train, test = load(DATA, train=True), load(DATA, train=False)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.labels.shape == (10000,) and test.labels.dtype == torch.int64
    assert train.classes == CLASSES and torch.bincount(train.labels).tolist() == [6000] * 10
    assert verify(DATA) == raw_folder(DATA)


@needs_data
def test_build_splits_on_fashion_mnist() -> None:
    cfg = {"name": "fashion_mnist", "root": "data", "val_fraction": 0.1, "split_seed": 0,
           "limit_train": 100, "limit_test": 50}
    splits = build_splits(cfg, TREE)
    # limit_val falls back to limit_test
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 50, 50)
    assert splits.classes[0] == "T-shirt/top" and splits.in_chans == 1 and splits.image_size == 28
    assert splits.train.augment is False  # augment defaults to off
    assert not hasattr(splits, "multilabel")
    assert len(build_splits({**cfg, "limit_val": 20}, TREE).val) == 20
    assert build_splits({**cfg, "augment": True}, TREE).train.augment is True
    full = build_splits({**cfg, "limit_train": None, "limit_test": None}, TREE)
    assert (len(full.train), len(full.val), len(full.test)) == (54000, 6000, 10000)
