from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dhnn.taxonomy import IGNORE_INDEX, Taxonomy

SLIDE_PATHS = [["A", "C"], ["A", "D"], ["B", "E"], ["B", "F"], ["B", "G"]]


@pytest.fixture
def slide() -> Taxonomy:
    return Taxonomy.from_paths(SLIDE_PATHS)


@pytest.fixture
def ragged() -> Taxonomy:
    # "clothes" has a depth-3 subtree, "goods" is a leaf at level 1, "tops" is reached as a prefix.
    return Taxonomy.from_paths([
        ["clothes", "tops"],
        ["clothes", "tops", "shirt"],
        ["goods"],
        ["clothes", "tops", "pullover"],
        ["clothes", "dress"],
        ["clothes", "tops", "shirt"],  # repeated
    ])


def test_structure(slide: Taxonomy) -> None:
    assert slide.levels == [["A", "B"], ["C", "D", "E", "F", "G"]]
    assert slide.num_levels == 2
    assert slide.nodes == ["A", "B", "C", "D", "E", "F", "G"]
    assert slide.leaves == ["C", "D", "E", "F", "G"]
    assert slide.is_fixed_depth
    assert slide.level_sizes == [2, 5]
    assert len(slide) == 7
    assert "F" in slide and "Root" not in slide and 3 not in slide
    assert slide.parent("A") is None and slide.parent("F") == "B"
    assert slide.children() == ["A", "B"] and slide.children("B") == ["E", "F", "G"]
    assert slide.children("C") == []
    assert slide.depth("A") == 1 and slide.depth("G") == 2
    assert slide.path("F") == ["B", "F"]
    assert slide.index("F") == 3 and slide.index("B") == 1
    assert slide.parent_index(0).tolist() == [-1, -1]
    assert slide.parent_index(1).tolist() == [0, 0, 1, 1, 1]
    assert repr(slide) == "Taxonomy(levels=[2, 5], nodes=7, leaves=5)"


def test_ragged(ragged: Taxonomy) -> None:
    assert ragged.levels == [["clothes", "goods"], ["tops", "dress"], ["shirt", "pullover"]]
    assert ragged.leaves == ["goods", "dress", "shirt", "pullover"]
    assert not ragged.is_fixed_depth
    assert ragged.children("tops") == ["shirt", "pullover"]
    assert ragged.encode_path(["goods"]).tolist() == [1, IGNORE_INDEX, IGNORE_INDEX]
    assert ragged.encode_path(["clothes", "tops"]).tolist() == [0, 0, IGNORE_INDEX]
    assert ragged.leaf_paths().tolist() == [
        [1, IGNORE_INDEX, IGNORE_INDEX], [0, 1, IGNORE_INDEX], [0, 0, 0], [0, 0, 1]]


def test_slide_one_hot(slide: Taxonomy) -> None:
    y = slide.one_hot(["B", "F"])
    assert y.tolist() == [[0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0]]


def test_one_hot_short_path(ragged: Taxonomy) -> None:
    y = ragged.one_hot(["goods"])
    assert y.shape == (3, 6)
    assert y[0].tolist() == [0, 1, 0, 0, 0, 0] and y[1:].abs().sum() == 0


def test_unknown_names(slide: Taxonomy) -> None:
    for method in (slide.parent, slide.children, slide.depth, slide.path, slide.index):
        with pytest.raises(KeyError, match="'Z' is not a node"):
            method("Z")


@pytest.mark.parametrize("paths, message", [
    ([["A", "C"], ["B", "C"]], r"node 'C' has two parents, 'A' and 'B'"),
    ([["A"], ["B", "A"]], r"node 'A' has two parents, <root> and 'B'"),
    ([["A", "A"]], r"two parents"),
    ([["A", ""]], r"path 0: empty or non-string node name"),
    ([["A"], []], r"path 1: empty path"),
    ([], r"no paths"),
    (["AB"], r"got the string 'AB'"),
])
def test_from_paths_errors(paths: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Taxonomy.from_paths(paths)


def test_encode_path_errors(slide: Taxonomy) -> None:
    with pytest.raises(ValueError, match="not a root path"):
        slide.encode_path(["A", "F"])
    with pytest.raises(ValueError, match="not a root path"):
        slide.encode_path(["F"])
    with pytest.raises(ValueError, match="'Z' is not a node"):
        slide.encode_path(["A", "Z"])
    with pytest.raises(ValueError, match="empty path"):
        slide.encode_path([])
    with pytest.raises(ValueError, match="string"):
        slide.encode_path("F")


def test_encode_decode(slide: Taxonomy, ragged: Taxonomy) -> None:
    for tax in (slide, ragged):
        paths = [tax.path(n) for n in tax.nodes]
        encoded = torch.stack([tax.encode_path(p) for p in paths])
        assert tax.decode(encoded) == paths
    assert slide.encode_path(["B", "F"]).tolist() == [1, 3]
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        slide.decode(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range for level 2"):
        slide.decode(torch.tensor([[0, 5]]))


def test_leaf_paths(slide: Taxonomy) -> None:
    lp = slide.leaf_paths()
    assert lp.tolist() == [[0, 0], [0, 1], [1, 2], [1, 3], [1, 4]]
    lp[0, 0] = 7  # returned tensor is a copy
    assert slide.leaf_paths()[0, 0] == 0


def test_json_round_trip(tmp_path, ragged: Taxonomy) -> None:
    file = tmp_path / "tax.json"
    ragged.save(file)
    loaded = Taxonomy.load(file)
    assert loaded == ragged and loaded.levels == ragged.levels and loaded.nodes == ragged.nodes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tax.json"]  # no temp file left behind
    data = json.loads(file.read_text())
    assert data["levels"] == ragged.levels


def test_json_keeps_order_leaf_paths_alone_would_not() -> None:
    # Leaves in nodes order are (B, D, X); rebuilding from those paths alone would put B first.
    tax = Taxonomy.from_paths([["A", "C", "X"], ["B"], ["A", "D"]])
    assert tax.levels == [["A", "B"], ["C", "D"], ["X"]]
    assert Taxonomy.from_dict(tax.to_dict()).levels == tax.levels
    assert Taxonomy.from_dict({"paths": tax.to_dict()["paths"]}).levels[0] == ["B", "A"]


def test_load_errors(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        Taxonomy.load(bad)
    bad.write_text(json.dumps({"levels": [["A"]]}))
    with pytest.raises(ValueError, match="bad.json: .*'paths'"):
        Taxonomy.load(bad)
    bad.write_text(json.dumps({"paths": [["A", "C"]], "levels": [["A"], ["C", "Q"]]}))
    with pytest.raises(ValueError, match="bad.json: 'levels' does not match 'paths'"):
        Taxonomy.load(bad)


def test_equality(slide: Taxonomy) -> None:
    assert slide == Taxonomy.from_paths(SLIDE_PATHS + SLIDE_PATHS[:2])
    assert slide != Taxonomy.from_paths(SLIDE_PATHS[::-1])  # same tree, different order
    assert slide != "not a taxonomy"


def test_from_csv(tmp_path) -> None:
    file = tmp_path / "fmnist.csv"
    file.write_text(
        "level_1,level_2,level_3\n"
        "clothes,tops,T-shirt/top\n"
        "clothes, tops ,Pullover\n"
        "\n"
        "goods,accessories,\n"
        "clothes,bottoms,Trouser\n"
    )
    tax = Taxonomy.from_csv(file)
    assert tax.levels == [["clothes", "goods"], ["tops", "accessories", "bottoms"],
                          ["T-shirt/top", "Pullover", "Trouser"]]
    assert tax.leaves == ["accessories", "T-shirt/top", "Pullover", "Trouser"]


@pytest.mark.parametrize("body, message", [
    ("a,b\nA,C\nB,C\n", r"line 3: node 'C' has two parents, 'A' and 'B'"),
    ("a,b,c\nA,C,X\nA,,Y\n", r"line 3: empty cell in column 2 \('b'\)"),
    ("a,b\nA,C,X\n", r"line 2: 3 cells but the header has 2 columns"),
    ("a,b\n", r"no label paths"),
    ("", r"empty file"),
])
def test_from_csv_errors(tmp_path, body: str, message: str) -> None:
    file = tmp_path / "bad.csv"
    file.write_text(body)
    with pytest.raises(ValueError, match=f"bad.csv: {message}"):
        Taxonomy.from_csv(file)


@st.composite
def path_lists(draw: st.DrawFn) -> list[list[str]]:
    """Random prefix-closed path lists over a small random tree (names made unique by construction)."""
    names = iter(f"n{i}" for i in range(1000))
    paths: list[list[str]] = []

    def grow(prefix: list[str], depth: int) -> None:
        for _ in range(draw(st.integers(1, 3))):
            path = prefix + [next(names)]
            paths.append(path)
            if depth < 4 and draw(st.booleans()):
                grow(path, depth + 1)

    grow([], 1)
    return draw(st.permutations(paths))


@settings(max_examples=50, deadline=None)
@given(path_lists())
def test_property_round_trips(paths: list[list[str]]) -> None:
    tax = Taxonomy.from_paths(paths)
    # Level order is order of first appearance.
    for level in tax.levels:
        firsts = [min(i for i, p in enumerate(paths) if n in p) for n in level]
        assert firsts == sorted(firsts)
    assert Taxonomy.from_dict(json.loads(json.dumps(tax.to_dict()))) == tax
    leaf_paths = tax.leaf_paths()
    assert tax.decode(leaf_paths) == [tax.path(leaf) for leaf in tax.leaves]
    assert sorted(map(tuple, paths)) == sorted(tuple(tax.path(n)) for n in tax.nodes)
    for n in tax.nodes:
        one_hot = tax.one_hot(tax.path(n))
        assert one_hot.sum() == tax.depth(n)
        assert [tax.nodes[i] for i in one_hot.nonzero()[:, 1].tolist()] == tax.path(n)


def test_collapse_chains_fashion_mnist() -> None:
    tree = Taxonomy.from_csv("taxonomies/fashion_mnist.csv")
    collapsed = tree.collapse_chains()
    # bottoms, dresses, outers and accessories had one child each: the child takes their slot
    assert collapsed.levels == [["clothes", "goods"], ["tops", "Trouser", "Dress", "Coat", "shoes", "Bag"],
                                ["T-shirt/top", "Pullover", "Sandal", "Shirt", "Sneaker", "Ankle boot"]]
    assert sorted(collapsed.leaves) == sorted(tree.leaves)
    assert collapsed.path("Trouser") == ["clothes", "Trouser"] and collapsed.path("Bag") == ["goods", "Bag"]
    assert collapsed.path("Shirt") == ["clothes", "tops", "Shirt"]
    assert not collapsed.is_fixed_depth
    assert tree.num_levels == 3 and len(tree) == 18  # the original is left alone


def test_collapse_chains_long_chains_and_level_one() -> None:
    # a -> b -> c -> {x, y}: a and b go and c takes a's slot; p -> q -> r collapses to the leaf r
    tree = Taxonomy.from_paths([["a", "b", "c", "x"], ["a", "b", "c", "y"], ["p", "q", "r"], ["z"]])
    collapsed = tree.collapse_chains()
    assert collapsed.levels == [["c", "r", "z"], ["x", "y"]]
    assert collapsed.parent("c") is None and collapsed.parent("x") == "c"
    assert collapsed.leaves == ["r", "z", "x", "y"]


def test_collapse_chains_without_chains_is_equal(slide: Taxonomy, ragged: Taxonomy) -> None:
    assert slide.collapse_chains() == slide
    # ragged: clothes -> {tops, dress}, tops -> {shirt, pullover}: no chains either
    assert ragged.collapse_chains() == ragged
    assert Taxonomy.from_paths([["A"]]).collapse_chains() == Taxonomy.from_paths([["A"]])


@settings(max_examples=50, deadline=None)
@given(path_lists())
def test_property_collapse_chains(paths: list[list[str]]) -> None:
    tax = Taxonomy.from_paths(paths)
    collapsed = tax.collapse_chains()
    assert collapsed.leaves == [n for n in collapsed.nodes if n in tax.leaves]
    assert sorted(collapsed.leaves) == sorted(tax.leaves)
    assert all(len(collapsed.children(n)) != 1 for n in collapsed.nodes)
    assert collapsed.collapse_chains() == collapsed
    for n in collapsed.nodes:  # ancestors are kept in order, only single-child ones dropped
        assert collapsed.path(n) == [a for a in tax.path(n) if len(tax.children(a)) != 1]
