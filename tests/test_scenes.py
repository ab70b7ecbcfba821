"""Fashion-MNIST scenes: seeded 2x2 canvases of official images with multi-label, partly partial, labels."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dhnn.data import get_source
from dhnn.data.base import split_indices
from dhnn.data.fashion_mnist import CLASSES, RAW_MD5, load
from dhnn.data.fashion_scenes import compose, label_sets, layout
from dhnn.params import ParamsError, validate
from dhnn.taxonomy import Taxonomy

TREE = Taxonomy.from_csv("taxonomies/fashion_mnist.csv")
DATA = Path("data")
needs_data = pytest.mark.skipif(not (DATA / "FashionMNIST" / "raw").is_dir(), reason="run scripts/setup.sh first")
SMALL = {"name": "fashion_scenes", "root": "data", "train_scenes": 3000, "val_scenes": 500, "test_scenes": 500}


def _splits(**cfg):
    return get_source("fashion_scenes").splits({**SMALL, **cfg}, TREE)


def _closure(original: torch.Tensor) -> torch.Tensor:
    """Every node of ``original`` with its ancestors, computed from the tree one row at a time."""
    out = torch.zeros_like(original)
    for row, labels in enumerate(original.bool()):
        for node in np.array(TREE.nodes)[labels.numpy()]:
            out[row, [TREE.nodes.index(a) for a in TREE.path(node)]] = 1.0
    return out


def test_registered_as_node_sets() -> None:
    assert get_source("fashion_scenes").task == "node_sets"
    assert get_source("fashion_scenes").classes({"name": "fashion_scenes"}) == CLASSES


def test_layout_counts_cells_and_partial_depths() -> None:
    items, depth = layout(20000, 100, 4, 0.2, 3, np.random.default_rng(0))
    count = (items >= 0).sum(1)
    assert items.shape == (20000, 4) and count.min() == 1 and count.max() == 4
    assert set(np.bincount(count)[1:] > 4000) == {True}  # about 5,000 scenes each of 1, 2, 3 and 4 items
    assert ((depth > 0) == (items >= 0)).all() and items.max() < 100
    filled = depth[depth > 0]
    assert abs((filled < 3).mean() - 0.2) < 0.01
    assert abs((filled == 1).mean() - 0.1) < 0.01 and abs((filled == 2).mean() - 0.1) < 0.01
    items, depth = layout(1000, 100, 2, 0.0, 3, np.random.default_rng(0))
    assert (items >= 0).sum(1).max() == 2 and set(np.unique(depth)) == {0, 3}


def test_compose_puts_each_image_in_its_cell() -> None:
    images = torch.randint(1, 256, (5, 1, 28, 28), dtype=torch.uint8)
    canvas = compose(images, torch.tensor([[0, -1, 3, 4], [-1, -1, -1, 2]]))
    assert canvas.shape == (2, 1, 56, 56) and canvas.dtype == torch.uint8
    assert torch.equal(canvas[0, :, :28, :28], images[0]) and torch.equal(canvas[0, :, 28:, :28], images[3])
    assert torch.equal(canvas[0, :, 28:, 28:], images[4]) and not canvas[0, :, :28, 28:].any()
    assert torch.equal(canvas[1, :, 28:, 28:], images[2]) and canvas[1].count_nonzero() == images[2].count_nonzero()


def test_labels_are_ancestor_closed_and_as_annotated() -> None:
    classes = torch.tensor([[CLASSES.index("Sneaker"), CLASSES.index("Shirt"), -1, -1],
                            [CLASSES.index("Bag"), CLASSES.index("Bag"), CLASSES.index("Coat"), -1]])
    depth = torch.tensor([[3, 1, 0, 0], [3, 2, 2, 0]])
    targets, original = label_sets(classes, depth, CLASSES, TREE)

    def names(row):
        return {n for n, v in zip(TREE.nodes, row) if v}

    assert names(original[0]) == {"Sneaker", "clothes"} and names(original[1]) == {"Bag", "accessories", "outers"}
    assert names(targets[0]) == {"goods", "shoes", "Sneaker", "clothes"}
    assert names(targets[1]) == {"goods", "accessories", "Bag", "clothes", "outers"}


@needs_data
def test_splits_are_seeded_and_consistent() -> None:
    start = time.perf_counter()
    default = get_source("fashion_scenes").splits({"name": "fashion_scenes", "root": "data"}, TREE)
    assert time.perf_counter() - start < 10  # 34,000 scenes: reading the files dominates
    assert (len(default.train), len(default.val), len(default.test)) == (20000, 4000, 10000)
    assert default.in_chans == 1 and default.image_size == 56 and default.classes == TREE.nodes

    a, b, other = _splits(), _splits(), _splits(seed=1)
    for split in ("train", "val", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert torch.equal(x.items, y.items) and torch.equal(x.depth, y.depth)
        assert torch.equal(x.targets, y.targets) and torch.equal(x.original, y.original)
        assert not torch.equal(x.items, getattr(other, split).items)
    # a split's scenes do not depend on the other splits' sizes
    assert torch.equal(_splits(test_scenes=100).train.items, a.train.items)

    images, targets, index = a.train.__getitems__([0, 5, 7])
    assert images.shape == (3, 1, 56, 56) and images.dtype == torch.float32 and index.tolist() == [0, 5, 7]
    assert torch.equal(targets, a.train.targets[[0, 5, 7]])
    official = load(DATA, train=False)
    canvases = a.test.canvases(list(range(20)))
    for scene, items in zip(canvases, a.test.items[:20]):
        for cell, item in enumerate(items.tolist()):
            r, c = divmod(cell, 2)
            patch = scene[:, 28 * r:28 * r + 28, 28 * c:28 * c + 28]
            assert torch.equal(patch, official.images[item]) if item >= 0 else not patch.any()

    for ds in (a.train, a.val, a.test):
        count = (ds.items >= 0).sum(1)
        assert count.min() == 1 and count.max() == 4
        assert torch.equal(ds.targets, _closure(ds.original))
        assert ((ds.original == 1) <= (ds.targets == 1)).all()
        filled = ds.depth[ds.depth > 0]
        assert abs((filled < 3).float().mean().item() - 0.2) < 0.03  # partial labels in every split, test too
    full = _splits(partial_fraction=0.0)
    assert set(full.train.depth.unique().tolist()) == {0, 3}
    assert torch.equal(full.train.targets, _closure(full.train.original))


@needs_data
def test_train_and_val_scenes_share_no_official_image() -> None:
    splits = _splits(train_scenes=20000, val_scenes=4000)
    train_idx, val_idx = split_indices(60000, 0.1, 0)
    train_items = set(splits.train.items[splits.train.items >= 0].tolist())
    val_items = set(splits.val.items[splits.val.items >= 0].tolist())
    assert not train_items & val_items
    assert train_items <= set(train_idx.tolist()) and val_items <= set(val_idx.tolist())
    assert len(val_items) > 3000  # drawn from the whole held-out side, not a few images


@needs_data
def test_check_returns_the_files_and_the_scene_settings(tmp_path: Path) -> None:
    manifest = get_source("fashion_scenes").check({"name": "fashion_scenes", "root": "data", "seed": 3})
    assert {k: manifest[k] for k in RAW_MD5} == RAW_MD5
    scenes = yaml.safe_load(manifest["scenes"])
    assert scenes["seed"] == 3 and scenes["partial_fraction"] == 0.2 and scenes["train_scenes"] == 20000
    with pytest.raises(FileNotFoundError, match=r"FashionMNIST/raw: no Fashion-MNIST files there; run `bash scripts"):
        get_source("fashion_scenes").check({"name": "fashion_scenes", "root": str(tmp_path)})


BASE = {"grid": {"variants": ["Flat"], "seeds": [0]},
        "variants": {"Flat": {"kind": "flat", "backbone": {"name": "resnet18"}}}}


@pytest.mark.parametrize("bad, message", [
    ({"partial_fraction": 1.5}, "data.partial_fraction: Input should be less than or equal to 1"),
    ({"max_items": 5}, "data.max_items: Input should be less than or equal to 4"),
    ({"train_scenes": 0}, "data.train_scenes: Input should be greater than 0"),
    ({"val_fraction": 0.0}, "data.val_fraction: Input should be greater than 0"),
    ({"seed": -1}, "data.seed: Input should be greater than or equal to 0"),
    ({"test_scene": 10}, "data: unknown key 'test_scene'; did you mean 'test_scenes'?"),
    ({"limit_train": 10}, "data: unknown key 'limit_train'"),
])
def test_schema_rejects_bad_scene_settings(bad: dict, message: str) -> None:
    assert validate({**BASE, "data": {"name": "fashion_scenes"}}).section("data")["partial_fraction"] == 0.2
    with pytest.raises(ParamsError) as err:
        validate({**BASE, "data": {"name": "fashion_scenes", **bad}}, "params.yaml")
    assert f"params.yaml: {message}" in str(err.value)


def test_the_profile_is_valid() -> None:
    from dhnn.params import load_params

    params = load_params("configs/fashion-scenes.yaml")
    assert params.data.name == "fashion_scenes" and len(params.grid.seeds) == 3
    assert {params.variant(v)["kind"] for v in params.grid.variants} == {"flat", "rnn", "s2s"}
