from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from dhnn.report.plots import plot_learning_curves, plot_level_accuracy, plot_taxonomy, save_figure

Tree = dict[str, "Tree"]


@pytest.fixture(autouse=True)
def agg_backend() -> Iterator[None]:
    # Headless and deterministic; the library itself never picks a backend.
    matplotlib.use("Agg")
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


class StandInTaxonomy:
    """Minimal stand-in for dhnn.taxonomy.Taxonomy, built from a nested dict."""

    def __init__(self, tree: Tree) -> None:
        self._children: dict[str | None, list[str]] = {}
        self._parent: dict[str, str | None] = {}
        self.levels: list[list[str]] = []

        def walk(node: str | None, sub: Tree, depth: int) -> None:
            self._children[node] = list(sub)
            for name, grandchildren in sub.items():
                self._parent[name] = node
                if len(self.levels) < depth:
                    self.levels.append([])
                self.levels[depth - 1].append(name)
                walk(name, grandchildren, depth + 1)

        walk(None, tree, 1)
        self.leaves = [n for n, kids in self._children.items() if n is not None and not kids]
        self.num_levels = len(self.levels)

    def parent(self, name: str) -> str | None:
        return self._parent[name]

    def children(self, name: str | None = None) -> list[str]:
        return list(self._children[name])


FIXED = StandInTaxonomy(
    {
        "animal": {"mammal": {"cat": {}, "dog": {}}, "bird": {"eagle": {}, "sparrow": {}}},
        "vehicle": {"road": {"car": {}, "truck": {}, "bus": {}}, "water": {"ship": {}}},
    }
)
# "plant" is a leaf at level 1 and "fish" a leaf at level 2, above the bottom level.
VARIABLE = StandInTaxonomy(
    {"animal": {"mammal": {"cat": {}, "dog": {}}, "fish": {}}, "plant": {}, "vehicle": {"car": {}, "truck": {}}}
)
MANY = StandInTaxonomy(
    {f"superclass_{i}": {f"fine_class_{i}_{j}": {} for j in range(5)} for i in range(8)}
)


def _all_nodes(tax: StandInTaxonomy) -> list[str]:
    return [n for level in tax.levels for n in level]


def _levels_frame(variants: list[str], num_levels: int, seeds: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        {"variant": v, "seed": s, "level": lvl, "accuracy": float(rng.uniform(0.5, 1.0))}
        for v in variants
        for s in range(seeds)
        for lvl in range(1, num_levels + 1)
    ]
    return pd.DataFrame(rows)


def _history_frame(variants: list[str], metrics: list[str], seeds: int = 2, epochs: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        {"variant": v, "seed": s, "epoch": e, "metric": m, "value": float(rng.uniform())}
        for v in variants
        for s in range(seeds)
        for e in range(epochs)
        for m in metrics
    ]
    return pd.DataFrame(rows)


def test_plot_level_accuracy_bars() -> None:
    variants = ["flat", "cnn_rnn", "cnn_s2s"]
    fig = plot_level_accuracy(_levels_frame(variants, num_levels=3))
    (ax,) = fig.axes
    assert len(ax.patches) == 3 * len(variants)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["level 1", "level 2", "level 3"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == variants


def test_plot_level_accuracy_single_seed() -> None:
    fig = plot_level_accuracy(_levels_frame(["flat", "cnn_rnn"], num_levels=2, seeds=1))
    assert len(fig.axes[0].patches) == 4


def test_plot_learning_curves_panels() -> None:
    variants = ["flat", "cnn_rnn"]
    metrics = ["train/loss", "val/loss", "val/path_accuracy", "val/node_accuracy", "val/level_1"]
    fig = plot_learning_curves(_history_frame(variants, metrics))
    assert len(fig.axes) == len(metrics)
    assert [ax.get_title() for ax in fig.axes] == metrics
    for ax in fig.axes:
        assert len(ax.lines) == len(variants)  # one mean line per variant
        assert len(ax.collections) == len(variants)  # one sd band per variant
    assert [t.get_text() for t in fig.legends[0].get_texts()] == variants


def test_plot_learning_curves_subset_and_unknown() -> None:
    history = _history_frame(["flat"], ["train/loss", "val/loss"])
    fig = plot_learning_curves(history, metrics=["val/loss"])
    assert [ax.get_title() for ax in fig.axes] == ["val/loss"]
    with pytest.raises(ValueError, match="nope"):
        plot_learning_curves(history, metrics=["nope"])


@pytest.mark.parametrize("tax", [FIXED, VARIABLE, MANY], ids=["fixed", "variable", "many"])
def test_plot_taxonomy_one_text_per_node(tax: StandInTaxonomy) -> None:
    fig = plot_taxonomy(tax)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sorted(texts) == sorted(_all_nodes(tax))


def _text_positions(fig: matplotlib.figure.Figure) -> dict[str, tuple[float, float]]:
    return {t.get_text(): t.get_position() for t in fig.axes[0].texts}


def test_plot_taxonomy_layout() -> None:
    pos = _text_positions(plot_taxonomy(VARIABLE))
    # One row per level, top-down.
    assert pos["animal"][1] == pos["plant"][1] > pos["mammal"][1] == pos["fish"][1] > pos["cat"][1]
    # Parents are centred over their children; leaves are spread evenly.
    assert pos["mammal"][0] == pytest.approx((pos["cat"][0] + pos["dog"][0]) / 2)
    assert pos["vehicle"][0] == pytest.approx((pos["car"][0] + pos["truck"][0]) / 2)
    leaves_x = [pos[n][0] for n in ["cat", "dog", "fish", "plant", "car", "truck"]]
    assert np.allclose(np.diff(leaves_x), leaves_x[1] - leaves_x[0])


def test_plot_taxonomy_rotates_crowded_leaves() -> None:
    fig = plot_taxonomy(MANY)
    rotation = {t.get_text(): t.get_rotation() for t in fig.axes[0].texts}
    assert rotation["fine_class_0_0"] == 90
    assert rotation["superclass_0"] == 0
    assert all(rotation[n] == 0 for n in _all_nodes(FIXED) if n in rotation)


def test_save_figure(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    out = tmp_path / "figs" / "tree.png"
    fig = plot_taxonomy(FIXED)
    save_figure(fig, out)
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["tree.png"]  # no temp files left behind
    assert not plt.fignum_exists(fig.number)
    # Byte-stable: same figure, same bytes.
    save_figure(plot_taxonomy(FIXED), out)
    assert out.read_bytes() == data


def test_save_figure_svg_is_stable(tmp_path: Path) -> None:
    history = _history_frame(["flat", "cnn_rnn"], ["train/loss"])
    save_figure(plot_learning_curves(history), tmp_path / "a.svg")
    save_figure(plot_learning_curves(history), tmp_path / "b.svg")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


def _images(variant: str, probability: list[float], right: list[int], seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"variant": variant, "seed": seed, "probability": probability,
                         "uncalibrated": [p / 2 for p in probability], "path_accuracy": right})


def test_selective_curves_answer_the_most_probable_paths_first() -> None:
    from dhnn.report.evidence import _selective, selective_curves

    run = _images("A", [0.9, 0.2, 0.8, 0.1], [1, 0, 1, 1])
    curve = _selective(run)  # answered in the order 0.9, 0.8, 0.2 (wrong), 0.1
    assert curve["risk"].tolist() == [0.0, 0.0, 1 / 3, 1 / 4]
    grid = selective_curves(run, points=5).set_index("coverage")["risk"]
    assert np.isnan(grid[0.0]) and grid[0.5] == 0.0 and grid[1.0] == 0.25


def test_reliability_and_selective_figures_have_their_panels() -> None:
    from dhnn.report.evidence import backoff_curves, reliability, selective_curves
    from dhnn.report.plots import plot_reliability, plot_selective

    rng = np.random.default_rng(0)
    images = pd.concat([_images(v, list(rng.uniform(0.3, 1, 200)), list(rng.integers(0, 2, 200))) for v in ("Flat", "RNN")])
    images["prefix_probs"] = [np.array([1.0, p, p]) for p in images["probability"]]
    images["true"] = [["a", "b", "c"]] * len(images)
    images["pred"] = [["a", "b", "c"] if r else ["a", "b", "d"] for r in images["path_accuracy"]]
    fig = plot_reliability(reliability(images))
    assert len(fig.axes) == 2  # before and after temperature scaling
    assert {a.get_xlabel() for a in fig.axes} == {"probability of the predicted path (uncalibrated)",
                                                  "probability of the predicted path (calibrated)"}
    fig = plot_selective(selective_curves(images), backoff_curves(images))
    left, right = fig.axes
    assert len(left.lines) == 2 and len(right.lines) == 2
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["Flat (marginals)", "RNN"]
