"""Figures for the report: per-level accuracy, learning curves and the class tree.

Every function builds and returns a fresh :class:`~matplotlib.figure.Figure`
inside a seaborn style context, so calling it does not change global matplotlib
state. Nothing here picks a backend or calls ``plt.show()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.textpath import TextToPath
from matplotlib.ticker import MaxNLocator

from ..io import atomic_path

__all__ = ["plot_learning_curves", "plot_level_accuracy", "plot_reliability", "plot_selective", "plot_severity",
           "plot_taxonomy", "save_figure"]

_STYLE, _CONTEXT = "whitegrid", "notebook"


class TaxonomyLike(Protocol):
    """The part of :class:`dhnn.taxonomy.Taxonomy` that plotting relies on."""

    leaves: list[str]

    def children(self, name: str | None = None) -> list[str]: ...


def _ordered_unique(values: pd.Series) -> list[Any]:
    """Distinct values in order of first appearance (so legends follow the data)."""
    return list(pd.unique(values))


def _variant_palette(variants: Sequence[str]) -> dict[str, Any]:
    """One colour per variant, identical across figures for the same variant list."""
    # The default palette has 10 colours and would repeat after that.
    n = len(variants)
    colors = sns.color_palette(n_colors=n) if n <= 10 else sns.color_palette("husl", n)
    return dict(zip(variants, colors))


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Fail early with the missing column names rather than deep inside seaborn."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{what} frame is missing column(s) {missing}; has {list(frame.columns)}")
    if frame.empty:
        raise ValueError(f"{what} frame is empty")


# ------------------------------------------------------------- level accuracy


def plot_level_accuracy(levels: pd.DataFrame) -> Figure:
    """Grouped bars of accuracy per tree level (hue = variant, error bar = sd over seeds)."""
    _require(levels, ["variant", "level", "accuracy"], "levels")
    data = levels.assign(level_label=[f"level {int(x)}" for x in levels["level"]])
    order = [f"level {x}" for x in sorted(levels["level"].astype(int).unique())]
    variants = _ordered_unique(data["variant"])
    palette = _variant_palette(variants)
    with sns.axes_style(_STYLE), sns.plotting_context(_CONTEXT):
        width = max(5.0, 1.0 + len(order) * (0.5 + 0.35 * len(variants)))
        fig, ax = plt.subplots(figsize=(width, 4.0), layout="constrained")
        sns.barplot(
            data=data,
            x="level_label",
            y="accuracy",
            hue="variant",
            order=order,
            hue_order=variants,
            palette=palette,
            errorbar="sd",
            saturation=1.0,  # same colours as the legend and the learning curves
            capsize=0.1,
            err_kws={"linewidth": 1.2},
            # seaborn's own legend adds empty proxy patches to the axes; building
            # it here keeps ax.patches to exactly one per bar.
            legend=False,
            ax=ax,
        )
        ax.set_xlabel("")
        ax.set_ylabel("accuracy")
        if data["accuracy"].max() <= 1.0:
            ax.set_ylim(0.0, 1.0)
        handles = [Patch(facecolor=palette[v], label=v) for v in variants]
        # Above the axes so the legend never hides a bar.
        ncol = min(len(variants), 4)
        ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=ncol, frameon=False)
    return fig


# ---------------------------------------------------------- variant comparison


def plot_variant_comparison(runs: pd.DataFrame, metrics: Sequence[str] = ("path_accuracy", "node_accuracy")) -> Figure:
    """One panel per metric: each seed's value as a dot and the mean with sd bars, one row per variant."""
    _require(runs, ["variant", "seed", *metrics], "runs")
    variants = _ordered_unique(runs["variant"])
    palette = _variant_palette(variants)
    long = runs.melt(id_vars=["variant", "seed"], value_vars=list(metrics), var_name="metric", value_name="value")
    with sns.axes_style(_STYLE), sns.plotting_context(_CONTEXT):
        height = max(2.5, 0.45 * len(variants) + 1.2)
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), height), layout="constrained",
                                 squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            data = long[long["metric"] == metric]
            sns.stripplot(data=data, x="value", y="variant", hue="variant", order=variants, hue_order=variants,
                          palette=palette, legend=False, size=5, alpha=0.6, jitter=0.1, ax=ax)
            sns.pointplot(data=data, x="value", y="variant", order=variants, errorbar="sd", color="black",
                          markers="|", markersize=14, linestyles="none", capsize=0.2, err_kws={"linewidth": 1.2},
                          ax=ax)
            ax.set_title(metric.replace("_", " "))
            ax.set_xlabel("")
            ax.set_ylabel("")
    return fig


# ------------------------------------------------------------ learning curves


def plot_learning_curves(history: pd.DataFrame, metrics: Sequence[str] | None = None) -> Figure:
    """One panel per metric: mean over seeds vs epoch per variant, with an sd band."""
    _require(history, ["variant", "seed", "epoch", "metric", "value"], "history")
    available = _ordered_unique(history["metric"])
    metrics = available if metrics is None else list(metrics)
    unknown = [m for m in metrics if m not in available]
    if unknown or not metrics:
        raise ValueError(f"unknown metric(s) {unknown or metrics}; history has {available}")
    variants = _ordered_unique(history["variant"])
    palette = _variant_palette(variants)

    # 2x2 for four panels instead of 3+1; otherwise rows of at most three.
    ncols = 2 if len(metrics) == 4 else min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    with sns.axes_style(_STYLE), sns.plotting_context(_CONTEXT):
        size = (4.2 * ncols, 3.2 * nrows)
        fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False, layout="constrained")
        flat = list(axes.flat)
        for ax, metric in zip(flat, metrics):
            sns.lineplot(
                data=history[history["metric"] == metric],
                x="epoch",
                y="value",
                hue="variant",
                hue_order=variants,
                palette=palette,
                errorbar="sd",
                legend=False,
                ax=ax,
            )
            ax.set_title(metric)
            ax.set_ylabel("")
            ax.set_xlabel("epoch")
            # Short runs would otherwise get ticks at fractional epochs.
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in flat[len(metrics):]:
            fig.delaxes(ax)
        handles = [Line2D([], [], color=palette[v], label=v) for v in variants]
        fig.legend(handles=handles, loc="outside upper center", ncol=min(len(variants), 5), frameon=False)
    return fig


# ------------------------------------------------------------------- taxonomy


def plot_selective(selective: pd.DataFrame, backoff: pd.DataFrame) -> Figure:
    """Two panels, one line per variant (mean over seeds): full-path selective classification (risk
    of the answered paths against coverage, abstaining on the least probable images) and back-off
    (accuracy of the answers against the mean depth answered, over tau). A flat net's prefix
    probabilities are its exact marginals, so its back-off line is the marginal baseline."""
    _require(selective, ["variant", "coverage", "risk"], "selective-classification curves")
    _require(backoff, ["variant", "tau", "risk", "mean_depth"], "back-off curves")
    sel = selective.groupby(["variant", "coverage"], sort=False)["risk"].mean().reset_index()
    back = backoff.groupby(["variant", "tau"], sort=False)[["risk", "mean_depth"]].mean().reset_index()
    palette = _variant_palette(_ordered_unique(sel["variant"]))
    with sns.axes_style(_STYLE), sns.plotting_context(_CONTEXT):
        fig, (left, right) = plt.subplots(1, 2, figsize=(10.4, 4.0), layout="constrained")
        for variant, rows in sel.groupby("variant", sort=False):
            left.plot(rows["coverage"], 100 * rows["risk"], label=variant, color=palette[variant])
        left.set(xlabel="coverage (images answered with a whole path)", ylabel="risk (% wrong paths)",
                 xlim=(0, 1.02), title="answer the whole path, or abstain")
        for variant, rows in back.groupby("variant", sort=False):
            label = f"{variant} (marginals)" if variant.lower().startswith("flat") else variant
            right.plot(rows["mean_depth"], 100 * (1 - rows["risk"]), label=label, color=palette.get(variant))
        right.set(xlabel="mean depth answered (specificity)", ylabel="accuracy of the answers (%)",
                  title="back-off: answer less deep when unsure")
        left.legend(fontsize="small")
        right.legend(fontsize="small")
    return fig


def plot_reliability(bins: pd.DataFrame) -> Figure:
    """Reliability diagrams of the best path's probability per variant, before and after temperature
    scaling (a panel per value of ``probability`` where the column is there)."""
    _require(bins, ["variant", "confidence", "accuracy", "count"], "reliability")
    shown = bins[bins["count"] > 0]
    if "probability" not in shown:
        shown = shown.assign(probability="")
    panels = _ordered_unique(shown["probability"])
    palette = _variant_palette(_ordered_unique(shown["variant"]))
    with sns.axes_style(_STYLE), sns.plotting_context(_CONTEXT):
        fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.4), layout="constrained",
                                 squeeze=False)
        for ax, panel in zip(axes[0], panels):
            ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
            for variant, rows in shown[shown["probability"] == panel].groupby("variant", sort=False):
                ax.plot(rows["confidence"], rows["accuracy"], marker="o", markersize=3, label=variant,
                        color=palette[variant])
            ax.set(xlabel=f"probability of the predicted path{f' ({panel})' if panel else ''}",
                   ylabel="path accuracy", xlim=(0, 1.02), ylim=(0, 1.02))
        axes[0][0].legend(fontsize="small")
    return fig


def plot_severity(severity: pd.DataFrame) -> Figure:
    """Mistake severity per variant: the mean height of the lowest common ancestor over wrong paths, one dot per seed."""
    _require(severity, ["variant", "seed", "severity"], "severity")
    variants = _ordered_unique(severity["variant"])
    palette = _variant_palette(variants)
    with sns.axes_style(_STYLE), sns.plotting_context(_CONTEXT):
        fig, ax = plt.subplots(figsize=(1.1 * len(variants) + 2.5, 3.8), layout="constrained")
        sns.barplot(data=severity, x="variant", y="severity", hue="variant", palette=palette, errorbar=None,
                    alpha=0.6, ax=ax, legend=False)
        sns.stripplot(data=severity, x="variant", y="severity", color="black", size=4, ax=ax)
        ax.set(xlabel="", ylabel="mistake severity (levels)")
        ax.tick_params(axis="x", rotation=30)
    return fig


def _tree_layout(taxonomy: TaxonomyLike) -> tuple[dict[str, tuple[float, int]], list[tuple[str, str]]]:
    """Place nodes: leaves at consecutive slots, parents centred over their children.

    Returns ``{name: (slot, depth)}`` (depth 1 = top level) and parent->child edges.
    """
    pos: dict[str, tuple[float, int]] = {}
    edges: list[tuple[str, str]] = []
    next_slot = 0

    def place(name: str, depth: int) -> float:
        nonlocal next_slot
        if name in pos:
            raise ValueError(f"taxonomy is not a tree: {name!r} is reached twice")
        kids = taxonomy.children(name)
        if kids:
            xs = [place(k, depth + 1) for k in kids]
            edges.extend((name, k) for k in kids)
            x = (xs[0] + xs[-1]) / 2
        else:
            x = float(next_slot)
            next_slot += 1
        pos[name] = (x, depth)
        return x

    for top in taxonomy.children(None):
        place(top, 1)
    return pos, edges


def plot_taxonomy(taxonomy: TaxonomyLike) -> Figure:
    """Draw the class tree top-down: one row per level, labelled boxes, straight edges."""
    pos, edges = _tree_layout(taxonomy)
    if not pos:
        raise ValueError("taxonomy has no nodes")
    n_leaves = sum(1 for name in pos if not taxonomy.children(name))
    fontsize = 9.0 if n_leaves <= 25 else 8.0
    pad = 0.3  # box padding, in units of the font size
    measure = TextToPath()
    font = FontProperties(size=fontsize)

    # Work in inches so label sizes can be compared with node spacing directly.
    def text_width(s: str) -> float:
        return measure.get_text_width_height_descent(s, font, ismath=False)[0] / 72

    box_pad = 2 * pad * fontsize / 72
    width = {name: text_width(name) + box_pad for name in pos}
    height = 1.25 * fontsize / 72 + box_pad

    # Leaf slots wide enough for horizontal labels, unless that gets too wide
    # for a page; then slots shrink to one rotated label each.
    slot = max(width[n] for n in pos if not taxonomy.children(n)) + 0.15
    if n_leaves * slot > 14.0:
        slot = height + 0.08
    depth_of = {name: d for name, (_, d) in pos.items()}
    x_of = {name: x * slot for name, (x, _) in pos.items()}

    # Rotate a whole row when any two neighbours in it would overlap.
    num_rows = max(depth_of.values())
    rows = [sorted((n for n in pos if depth_of[n] == d), key=x_of.get) for d in range(1, num_rows + 1)]
    rotated: set[str] = set()
    for row in rows:
        if any((width[a] + width[b]) / 2 + 0.05 > x_of[b] - x_of[a] for a, b in zip(row, row[1:])):
            rotated.update(row)
    half_w = {n: (height if n in rotated else width[n]) / 2 for n in pos}
    half_h = {n: (width[n] if n in rotated else height) / 2 for n in pos}

    # Row d sits below row d-1 by both rows' half heights plus room for edges.
    edge_len = 0.3
    root_y = 0.0
    row_half = [0.05] + [max(half_h[n] for n in row) for row in rows]
    row_y = [root_y]
    for d in range(1, num_rows + 1):
        row_y.append(row_y[-1] - row_half[d - 1] - row_half[d] - edge_len)
    # Hang every box from its row's top line: rotated labels of different
    # lengths then line up, and edges can end exactly at a box edge.
    row_top = [y + h for y, h in zip(row_y, row_half)]
    y_of = {n: row_top[depth_of[n]] - half_h[n] for n in pos}
    tops = taxonomy.children(None)
    root_x = (x_of[tops[0]] + x_of[tops[-1]]) / 2

    margin = 0.1
    left = min(x_of[n] - half_w[n] for n in pos) - margin
    right = max(x_of[n] + half_w[n] for n in pos) + margin
    top = root_y + 0.1 + margin
    bottom = row_y[-1] - row_half[-1] - margin

    with sns.axes_style("white"):
        fig, ax = plt.subplots(figsize=(right - left, top - bottom))
        # Axes fill the figure and data units are inches, so the sizes measured
        # above are exactly what gets drawn.
        ax.set_position((0.0, 0.0, 1.0, 1.0))
        ax.set_xlim(left, right)
        ax.set_ylim(bottom, top)
        ax.set_axis_off()
        edge_style = {"color": "0.55", "linewidth": 0.9, "zorder": 1}
        # Edges run from the bottom of the parent's box to the top of the child's.
        for top_node in tops:
            ax.plot([root_x, x_of[top_node]], [root_y, row_top[1]], **edge_style)
        for parent, child in edges:
            ys = [y_of[parent] - half_h[parent], row_top[depth_of[child]]]
            ax.plot([x_of[parent], x_of[child]], ys, **edge_style)
        ax.plot([root_x], [root_y], marker="o", markersize=5, color="0.35", zorder=2)
        text_style = {"ha": "center", "va": "center", "rotation_mode": "anchor", "fontsize": fontsize, "zorder": 3}
        leaf_colors = {"facecolor": "#e6f2e6", "edgecolor": "#5a8f5a"}
        inner_colors = {"facecolor": "#dde8f5", "edgecolor": "#4a6f9c"}
        for name in pos:
            colors = inner_colors if taxonomy.children(name) else leaf_colors
            box = {"boxstyle": f"round,pad={pad}", "linewidth": 0.8, **colors}
            # parse_math=False: a "$" in a class name must not start mathtext.
            rotation = 90 if name in rotated else 0
            ax.text(x_of[name], y_of[name], name, rotation=rotation, bbox=box, parse_math=False, **text_style)
    return fig


# ---------------------------------------------------------------------- save


def _savefig_kwargs(fmt: str) -> dict[str, Any]:
    """Metadata overrides that drop version strings and dates, so saves are byte-stable."""
    if fmt == "png":
        return {"metadata": {"Software": None}}
    if fmt in ("svg", "svgz"):
        return {"metadata": {"Creator": None, "Date": None}}
    if fmt == "pdf":
        return {"metadata": {"Creator": None, "Producer": None, "CreationDate": None}}
    return {}


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> None:
    """Save ``fig`` atomically to ``path`` (format from the suffix), then close it."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    try:
        if not fmt:
            raise ValueError(f"cannot infer an image format from {path} (no suffix)")
        # a fixed salt makes SVG element ids reproducible
        with atomic_path(path) as tmp, plt.rc_context({"svg.hashsalt": "dhnn"}):
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", **_savefig_kwargs(fmt))
    finally:
        plt.close(fig)
