from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score

from dhnn.data import build_splits, dataset_taxonomy, get_source
from dhnn.data.open_images import OpenImagesDataset, check_images, open_images_splits, open_images_tree
from dhnn.data.open_images_tree import (count_images, multi_hot, prune_by_count, read_class_descriptions,
                                        read_image_labels, read_open_images_hierarchy, remap_labels,
                                        taxonomy_from_open_images)
from dhnn.evaluation.metrics import (ancestor_mask, evaluate_multilabel, node_f1, path_f1, path_prediction,
                                     search_threshold, weighted_f1)
from dhnn.taxonomy import Taxonomy


def _n(label: str, sub: list | None = None, part: list | None = None) -> dict:
    node: dict = {"LabelName": label}
    if sub is not None:
        node["Subcategory"] = sub
    if part is not None:
        node["Part"] = part
    return node


# Entity > Animal > Mammal > Dog, Cat > Jaguar(cat); Animal > Bird > Eagle; Animal has a Part (Tail)
# Food > Fruit > Apple, Tomato; Food > Vegetable > Tomato (second parent), Carrot
# Vehicle > Car (Part: Wheel) > Jaguar(car); Vehicle > Wheel (is-a; the Part edge must not count)
HIERARCHY = _n("/m/0bl9f", [
    _n("/m/animal", [
        _n("/m/mammal", [_n("/m/dog", part=[_n("/m/ear")]), _n("/m/cat", [_n("/m/jaguar_cat")])]),
        _n("/m/bird", [_n("/m/eagle")]),
    ], part=[_n("/m/tail")]),
    _n("/m/food", [
        _n("/m/fruit", [_n("/m/apple"), _n("/m/tomato")]),
        _n("/m/vegetable", [_n("/m/tomato"), _n("/m/carrot")]),
    ]),
    _n("/m/vehicle", [_n("/m/car", [_n("/m/jaguar_car")], part=[_n("/m/wheel")]), _n("/m/wheel")]),
])
NAMES = {
    "/m/0bl9f": "Entity", "/m/animal": "Animal", "/m/mammal": "Mammal", "/m/dog": "Dog",
    "/m/cat": "Cat", "/m/jaguar_cat": "Jaguar", "/m/bird": "Bird", "/m/eagle": "Eagle",
    "/m/food": "Food", "/m/fruit": "Fruit", "/m/apple": "Apple", "/m/tomato": "Tomato",
    "/m/vegetable": "Vegetable", "/m/carrot": "Carrot", "/m/vehicle": "Vehicle", "/m/car": "Car",
    "/m/jaguar_car": "Jaguar", "/m/wheel": "Wheel", "/m/tail": "Tail", "/m/ear": "Ear",
}
LABELS = """ImageID,Source,LabelName,Confidence
img1,verification,/m/dog,1
img1,verification,/m/animal,1
img1,crowdsource-verification,/m/apple,1
img1,verification,/m/dog,1
img2,verification,/m/cat,0
img2,verification,/m/bird,1
img3,verification,/m/not_in_tree,1
img3,verification,/m/carrot,0
img4,verification,/m/jaguar_cat,1
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    hierarchy = tmp_path / "bbox_labels_600_hierarchy.json"
    hierarchy.write_text(json.dumps(HIERARCHY))
    names = tmp_path / "class-descriptions-boxable.csv"  # no header, like the official file
    names.write_text("".join(f"{label},{name}\n" for label, name in NAMES.items()))
    labels = tmp_path / "labels.csv"
    labels.write_text(LABELS)
    images = tmp_path / "images"
    images.mkdir()
    for i, image_id in enumerate(["img1", "img2", "img4"]):
        Image.new("RGB", (8, 6), (40 * i, 100, 200)).save(images / f"{image_id}.jpg")
    (images / "img6.jpg").write_bytes(b"this is not a jpeg")
    return {"hierarchy": hierarchy, "names": names, "labels": labels, "images": images}


def _tree(files: dict[str, Path], **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_open_images_hierarchy(files["hierarchy"], files["names"], **kw)


# -- hierarchy ------------------------------------------------------------------------------------


def test_tree_structure_and_part_edges_ignored(files) -> None:
    with pytest.warns(UserWarning, match=r"1 labels have more than one parent \(Tomato"):
        tree = read_open_images_hierarchy(files["hierarchy"], files["names"], root_label="/m/0bl9f")
    tax = tree.taxonomy
    assert tax.levels[0] == ["Animal", "Food", "Vehicle"]
    assert tax.levels[1] == ["Mammal", "Bird", "Fruit", "Vegetable", "Car", "Wheel"]
    assert tax.path("Jaguar (/m/jaguar_cat)") == ["Animal", "Mammal", "Cat", "Jaguar (/m/jaguar_cat)"]
    assert tax.parent("Jaguar (/m/jaguar_car)") == "Car"
    assert "Tail" not in tax and "Ear" not in tax  # only ever a Part
    assert tax.parent("Wheel") == "Vehicle"  # is-a parent kept; "part of Car" is not an edge
    assert sorted(tree.part_edges) == [("/m/animal", "/m/tail"), ("/m/car", "/m/wheel"),
                                       ("/m/dog", "/m/ear")]
    assert tree.label_to_node["/m/dog"] == "Dog" and tree.node_to_label["Dog"] == "/m/dog"
    assert tree.root_label == "/m/0bl9f"


def test_multi_parent_first_policy(files) -> None:
    tree = _tree(files)
    assert tree.multi_parent == {"/m/tomato": ["/m/fruit", "/m/vegetable"]}
    assert tree.chosen_parent == {"/m/tomato": "/m/fruit"}
    assert tree.taxonomy.parent("Tomato") == "Fruit"
    assert tree.taxonomy.children("Vegetable") == ["Carrot"]


def test_multi_parent_error_policy(files) -> None:
    with pytest.raises(ValueError, match=r"bbox_labels_600_hierarchy.json: 1 labels.*Tomato \(/m/tomato\) "
                                         r"under Fruit \(/m/fruit\), Vegetable"):
        read_open_images_hierarchy(files["hierarchy"], files["names"], multi_parent="error")
    with pytest.raises(ValueError, match="multi_parent must be one of"):
        read_open_images_hierarchy(files["hierarchy"], multi_parent="duplicate")


def test_subtree_and_max_depth(files) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no multi-parent label under Animal: no warning
        animal = read_open_images_hierarchy(files["hierarchy"], files["names"], subtree="/m/animal",
                                            max_depth=2)
    assert animal.taxonomy.levels == [["Mammal", "Bird"], ["Dog", "Cat", "Eagle"]]
    assert animal.label_to_node["/m/jaguar_cat"] == "Cat"  # cut at depth 2: its ancestor there
    assert "/m/animal" not in animal.label_to_node and "/m/apple" not in animal.label_to_node
    assert animal.root_label == "/m/animal" and animal.multi_parent == {}

    food = _tree(files, subtree="Food")  # a display name works too
    assert food.taxonomy.levels == [["Fruit", "Vegetable"], ["Apple", "Tomato", "Carrot"]]
    assert food.multi_parent == {"/m/tomato": ["/m/fruit", "/m/vegetable"]}

    shallow = _tree(files, max_depth=1)
    assert shallow.taxonomy.levels == [["Animal", "Food", "Vehicle"]]
    assert shallow.label_to_node["/m/jaguar_car"] == "Vehicle"
    with pytest.raises(ValueError, match="display name of several labels"):
        _tree(files, subtree="Jaguar")
    with pytest.raises(ValueError, match="neither a label id nor a display name"):
        _tree(files, subtree="Plant")
    with pytest.raises(ValueError, match="has no Subcategory"):
        _tree(files, subtree="/m/dog")


def test_names_and_bad_input(files, tmp_path) -> None:
    assert read_class_descriptions(files["names"])["/m/dog"] == "Dog"
    with_header = tmp_path / "with_header.csv"
    with_header.write_text('LabelName,DisplayName\n/m/x,"Ball, tennis"\n')
    assert read_class_descriptions(with_header) == {"/m/x": "Ball, tennis"}
    bad = tmp_path / "bad.csv"
    bad.write_text("/m/x,X\n/m/y\n")
    with pytest.raises(ValueError, match=r"bad.csv: line 2: expected two non-empty cells"):
        read_class_descriptions(bad)
    few = tmp_path / "few.csv"
    few.write_text("/m/animal,Animal\n")
    with pytest.raises(ValueError, match=r"few.csv: no display name for 16 labels"), \
            pytest.warns(UserWarning, match="more than one parent"):
        read_open_images_hierarchy(files["hierarchy"], few, subtree="/m/0bl9f")
    ids = taxonomy_from_open_images(files["hierarchy"], subtree="/m/animal")  # no names: label ids
    assert ids.levels[0] == ["/m/mammal", "/m/bird"]
    with pytest.raises(ValueError, match=r"the root is /m/0bl9f, expected /m/other"):
        read_open_images_hierarchy(files["hierarchy"], root_label="/m/other")
    broken = tmp_path / "broken.json"
    broken.write_text('{"LabelName": "/m/r", "Subcategory": {"LabelName": "/m/a"}}')
    with pytest.raises(ValueError, match=r"broken.json: 'Subcategory' under /m/r must be a list"):
        read_open_images_hierarchy(broken)
    cyclic = tmp_path / "cyclic.json"
    cyclic.write_text(json.dumps(_n("/m/r", [_n("/m/a", [_n("/m/b", [_n("/m/a")])])])))
    with pytest.raises(ValueError, match=r"cyclic.json: /m/a is its own ancestor"):
        read_open_images_hierarchy(cyclic)


def test_taxonomy_from_open_images(files) -> None:
    # replaces the removed Taxonomy.from_open_images classmethod
    assert not hasattr(Taxonomy, "from_open_images")
    with pytest.warns(UserWarning, match="more than one parent"):
        tax = taxonomy_from_open_images(files["hierarchy"], files["names"], max_depth=2)
    assert isinstance(tax, Taxonomy) and tax == _tree(files, max_depth=2).taxonomy


def test_prune_by_count(files) -> None:
    tree = _tree(files)
    counts = {"Dog": 5, "Cat": 1, "Jaguar (/m/jaguar_cat)": 0, "Eagle": 1, "Bird": 1, "Apple": 3,
              "Carrot": 1, "Car": 1}
    pruned = prune_by_count(tree, counts, min_images=2)
    tax = pruned.taxonomy
    # Cat (1) goes, and Mammal stays for Dog; Eagle (1) folds into Bird, which reaches 2 and stays;
    # Carrot folds into Vegetable (1 < 2), which goes too; nothing under Vehicle reaches 2.
    assert tax.levels == [["Animal", "Food"], ["Mammal", "Bird", "Fruit"], ["Dog", "Apple"]]
    assert pruned.label_to_node["/m/cat"] == "Mammal"
    assert pruned.label_to_node["/m/jaguar_cat"] == "Mammal"
    assert pruned.label_to_node["/m/eagle"] == "Bird"
    assert pruned.label_to_node["/m/carrot"] == "Food"
    assert "/m/car" not in pruned.label_to_node and "Car" not in pruned.node_to_label
    with pytest.raises(ValueError, match="prunes every node"):
        prune_by_count(tree, counts, min_images=100)
    with pytest.raises(ValueError, match="not in the taxonomy"):
        prune_by_count(tree, {"Unicorn": 3}, min_images=1)


# -- labels ---------------------------------------------------------------------------------------


def test_read_labels_and_multi_hot(files) -> None:
    tree = _tree(files, max_depth=3)
    labels = read_image_labels(files["labels"], tree)
    # img2's Cat is a verified negative; img3 has nothing in the tree; img4's label is cut to Cat
    assert labels == {"img1": ["Dog", "Animal", "Apple"], "img2": ["Bird"], "img4": ["Cat"]}
    assert count_images(labels) == {"Dog": 1, "Animal": 1, "Apple": 1, "Bird": 1, "Cat": 1}
    assert read_image_labels(files["labels"], tree, min_confidence=0)["img2"] == ["Cat", "Bird"]

    tax = tree.taxonomy
    on = [[tax.nodes[i] for i in row.nonzero().flatten().tolist()]
          for row in multi_hot(list(labels.values()), tax)]
    assert sorted(on[0]) == ["Animal", "Apple", "Dog", "Food", "Fruit", "Mammal"]  # two paths
    assert sorted(on[1]) == ["Animal", "Bird"]  # a path ending at level 2
    original = multi_hot(list(labels.values()), tax, ancestors=False)
    assert original.sum(1).tolist() == [3.0, 1.0, 1.0] and original.dtype == torch.float32
    with pytest.raises(ValueError, match="'Unicorn' is not a node"):
        multi_hot([["Unicorn"]], tax)

    pruned = prune_by_count(tree, {"Dog": 1, "Bird": 1}, min_images=1)
    assert remap_labels(labels, tree, pruned) == {"img1": ["Dog", "Animal"], "img2": ["Bird"],
                                                  "img4": ["Mammal"]}


def test_label_file_errors(files, tmp_path) -> None:
    tree = _tree(files)
    no_conf = tmp_path / "no_conf.csv"
    no_conf.write_text("ImageID,Source,LabelName\nimg1,verification,/m/dog\n")
    with pytest.raises(ValueError, match=r"no_conf.csv: line 1: missing column\(s\) \['Confidence'\]"):
        read_image_labels(no_conf, tree)
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageID,Source,LabelName,Confidence\nimg1,verification,/m/dog,1\n"
                   "img2,verification,/m/cat,yes\n")
    with pytest.raises(ValueError, match=r"bad.csv: line 3: Confidence 'yes' is not a number"):
        read_image_labels(bad, tree)
    short = tmp_path / "short.csv"
    short.write_text("ImageID,Source,LabelName,Confidence\nimg1,/m/dog,1\n")
    with pytest.raises(ValueError, match=r"short.csv: line 2: 3 cells, but the header has 4"):
        read_image_labels(short, tree)


# -- images ---------------------------------------------------------------------------------------


def test_dataset_items(files) -> None:
    tree = _tree(files)
    labels = read_image_labels(files["labels"], tree)
    ds = OpenImagesDataset(files["images"], labels, tree.taxonomy)
    assert len(ds) == 3 and ds.image_ids == ["img1", "img2", "img4"]
    image, target, index = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 6, 8)
    assert torch.equal(target, multi_hot([["Bird"]], tree.taxonomy)[0]) and index == 1
    assert torch.equal(ds.original[0], multi_hot([labels["img1"]], tree.taxonomy, ancestors=False)[0])
    ds.check_images()

    scaled = OpenImagesDataset(files["images"], labels, tree.taxonomy,
                               transform=lambda im: torch.tensor(im.size))
    assert scaled[0][0].tolist() == [8, 6]


def test_missing_and_corrupt_images(files) -> None:
    tax = _tree(files).taxonomy
    labels = {"img1": ["Dog"], "img5": ["Cat"], "img6": ["Bird"]}
    with pytest.raises(FileNotFoundError, match=r"1 of 3 labelled images have no <ImageID>.jpg file "
                                                r"\(first: img5\)"):
        OpenImagesDataset(files["images"], labels, tax)
    with pytest.warns(UserWarning, match="dropped them"):
        ds = OpenImagesDataset(files["images"], labels, tax, skip_missing=True)
    assert ds.image_ids == ["img1", "img6"]
    with pytest.raises(OSError, match=r"img6.jpg: cannot read image"):
        ds[1]
    with pytest.raises(OSError, match=r"img6.jpg: cannot read image"):
        ds.check_images()
    with pytest.raises(FileNotFoundError, match=r"img5.jpg: image file not found"):
        check_images(files["images"], ["img1", "img5"])


def test_truncated_jpeg_is_caught(files) -> None:
    """A JPEG cut in half passes PIL's verify() (header only); check_images decodes every pixel."""
    pixels = torch.randint(0, 256, (96, 96, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole = files["images"] / "img7.jpg"
    Image.fromarray(pixels.numpy()).save(whole)
    check_images(files["images"], ["img1", "img7"])
    (files["images"] / "img8.jpg").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with Image.open(files["images"] / "img8.jpg") as image:
        image.verify()  # the old check let this file through
    with pytest.raises(OSError, match=r"img8.jpg: cannot read image \(image file is truncated"):
        check_images(files["images"], ["img1", "img7", "img8"])
    ds = OpenImagesDataset(files["images"], {"img7": ["Dog"], "img8": ["Cat"]}, _tree(files).taxonomy)
    with pytest.raises(OSError, match=r"img8.jpg: cannot read image"):
        ds.check_images()


# -- the configured data set (data.name: open_images) ---------------------------------------------


def _data_cfg(files, **kw) -> dict:
    root = files["hierarchy"].parent
    (files["images"] / "img6.jpg").unlink()  # unlabelled, but keep the folder clean of bad files
    return {"name": "open_images", "root": str(root), "hierarchy": files["hierarchy"].name,
            "class_descriptions": files["names"].name, "labels": {"train": "labels.csv", "test": "labels.csv"},
            "images": {"train": "images", "test": "images"}, "max_depth": 3, "val_fraction": 0.34,
            "split_seed": 0, "transform": {"resize": 8, "crop": 6}, **kw}


def test_open_images_source(files) -> None:
    cfg = _data_cfg(files)
    source = get_source("open_images")
    assert source.task == "node_sets"  # several labels per image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = open_images_tree(cfg)
        assert tree.taxonomy == _tree(files, max_depth=3).taxonomy
        tax = dataset_taxonomy(cfg, {})
        assert tax == tree.taxonomy and source.classes(cfg) == tax.nodes
        source.check(cfg)
        splits = build_splits(cfg, tax)
        assert (len(splits.train), len(splits.val), len(splits.test)) == (2, 1, 3)  # val carved from train
        assert set(splits.train.image_ids) | set(splits.val.image_ids) == {"img1", "img2", "img4"}
        assert splits.classes == tax.nodes and (splits.in_chans, splits.image_size) == (3, 6)
        assert not hasattr(splits, "multilabel")
        assert "CenterCrop" in repr(splits.train.transform)  # augment defaults to off
        image, target, i = splits.train[0]
        assert image.shape == (3, 6, 6) and target.shape == (len(tax.nodes),)
        assert torch.equal(splits.test.original, multi_hot([["Dog", "Animal", "Apple"], ["Bird"], ["Cat"]], tax,
                                                           ancestors=False))
        assert "RandomCrop" in repr(open_images_splits({**cfg, "augment": True}, tax).train.transform)
        limited = open_images_splits({**cfg, "val_fraction": 0.67, "limit_test": 1}, tax)
        assert (len(limited.val), len(limited.test)) == (1, 1)  # limit_val falls back to limit_test
        pruned = {**cfg, "min_images": 2}
        with pytest.raises(ValueError, match="differs from the taxonomy passed in; rerun the taxonomy stage"):
            open_images_splits(pruned, tax)


# -- metrics --------------------------------------------------------------------------------------


@pytest.fixture
def small() -> Taxonomy:
    return Taxonomy.from_paths([["a", "a1"], ["a", "a2"], ["b"]])  # nodes a, b, a1, a2


def test_ancestor_mask(small) -> None:
    assert ancestor_mask(small).int().tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0],
                                                   [1, 0, 0, 1]]


def test_weighted_f1_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(3)
    for p_true, p_pred in [(0.3, 0.3), (0.05, 0.6), (0.5, 0.0), (0.0, 0.4), (0.0, 0.0)]:
        t = torch.rand(25, 7, generator=g) < p_true
        p = torch.rand(25, 7, generator=g) < p_pred
        t[:, 0] = False  # a node without true instances: weight 0
        p[:, 1] = False  # a node never predicted
        expected = f1_score(t.numpy(), p.numpy(), average="weighted", zero_division=0)
        assert weighted_f1(t, p) == pytest.approx(expected, abs=1e-12)


def test_node_f1_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(40, 6, generator=g)
    targets = (torch.rand(40, 6, generator=g) < 0.4).float()
    for t in (0.0, 0.3, 0.5, 1.0):
        expected = f1_score(targets.numpy(), (scores >= t).numpy(), average="weighted", zero_division=0)
        assert node_f1(scores, targets, t) == pytest.approx(expected)
    with pytest.raises(ValueError, match="multi-hot"):
        node_f1(scores, targets * 2, 0.5)


def test_path_f1_by_hand(small) -> None:
    #                        a    b    a1   a2
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.2],    # path a > a1
                           [0.3, 0.7, 0.9, 0.1],    # a1 is above the threshold but a is not: only b
                           [0.6, 0.2, 0.1, 0.4]])   # only a
    targets = torch.tensor([[1, 0, 1, 0], [1, 0, 1, 0], [0, 1, 0, 0]])
    pred = path_prediction(scores, small, 0.5)
    assert pred.int().tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
    # a: TP 1, FP 1, FN 1 -> F1 1/2 (support 2); b: F1 0 (support 1); a1: TP 1, FN 1 -> 2/3 (support 2)
    assert path_f1(scores, targets, small, 0.5) == pytest.approx((2 * 0.5 + 0 + 2 * 2 / 3) / 5)
    assert path_f1(scores, targets, small, 0.5) == pytest.approx(
        f1_score(targets.numpy(), pred.numpy(), average="weighted", zero_division=0))
    # node F1 lets the orphaned a1 of sample 1 count, path F1 does not
    assert node_f1(scores, targets, 0.5) > path_f1(scores, targets, small, 0.5)
    with pytest.raises(ValueError, match="taxonomy has 4 nodes"):
        path_f1(scores[:, :3], targets[:, :3], small, 0.5)


def test_search_threshold_grid() -> None:
    seen: list[float] = []

    def metric(s, t, threshold: float) -> float:
        seen.append(threshold)
        return -abs(threshold - 0.37)

    assert search_threshold(None, None, metric) == (0.37, pytest.approx(0.0))
    assert len(seen) == 101 and seen[0] == 0.0 and seen[-1] == 1.0 and 0.5 in seen
    assert search_threshold(None, None, lambda s, t, th: 1.0) == (0.0, 1.0)  # ties: lowest
    assert search_threshold(None, None, lambda s, t, th: th, step=0.25) == (1.0, 1.0)
    with pytest.raises(ValueError, match="step must divide 1"):
        search_threshold(None, None, metric, step=0.3)


def test_search_threshold_finds_best_f1(small) -> None:
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(30, 4, generator=g)
    targets = (torch.rand(30, 4, generator=g) < 0.5).float()
    best_t, best = search_threshold(scores, targets, node_f1)
    assert best == max(node_f1(scores, targets, k / 100) for k in range(101))
    assert node_f1(scores, targets, best_t) == best


def test_evaluate_multilabel(small) -> None:
    g = torch.Generator().manual_seed(2)
    labels = [["a1"], ["a2", "b"], ["a"], ["b"]] * 5
    original = multi_hot(labels, small, ancestors=False)
    targets = multi_hot(labels, small)
    scores = (0.6 * targets + 0.5 * torch.rand(targets.shape, generator=g)).clamp(max=1)
    out = evaluate_multilabel(scores, targets, scores, targets, small, val_original=original,
                              test_original=original)
    assert out["path_targets"] == "original"
    assert out["node_f1"] == out["node_f1_val"] and out["path_f1"] == out["path_f1_val"]
    assert out["node_f1"] == search_threshold(scores, targets, node_f1)[1]
    assert out["path_f1"] == path_f1(scores, original, small, out["path_threshold"])
    assert evaluate_multilabel(scores, targets, scores, targets, small)["path_targets"] == "node"
    with pytest.raises(ValueError, match="both val_original and test_original"):
        evaluate_multilabel(scores, targets, scores, targets, small, val_original=original)
