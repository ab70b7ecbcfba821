"""The taxonomy stage (notebooks/00_taxonomy.ipynb): check the data set's files, read its class tree,
check it against every variant, and write it. It reads data sources and tree files, nothing else.
"""
from __future__ import annotations

from pathlib import Path

from ..data.registry import dataset_taxonomy, get_source
from ..params import Params
from ..taxonomy import Taxonomy
from .layout import taxonomy_path


def build_taxonomy(params: Params) -> Taxonomy:
    """Check the data set's files, read its class tree, and check the tree against every variant."""
    data, tax = params.section("data"), params.section("taxonomy")
    get_source(data["name"]).check(data)
    tree = dataset_taxonomy(data, tax)
    for name in params.grid.variants:
        check_tree(params, name, tree)
    return tree


def check_tree(params: Params, variant: str, tree: Taxonomy) -> Taxonomy:
    """The tree a variant trains on (collapsed if it asks), checked against its level settings."""
    cfg = params.variant(variant)
    if cfg.get("collapse_chains"):
        tree = tree.collapse_chains()
    weights = params.train.level_weights
    sizes = [len(weights)] if isinstance(weights, list) else [len(weights.start), len(weights.end)]
    which = f"the tree of {variant!r} (single-child chains collapsed)" if cfg.get("collapse_chains") else "the taxonomy"
    if cfg["kind"] != "flat" and any(n != tree.num_levels for n in sizes):
        raise ValueError(f"{params.source}: train.level_weights: {sizes[0]} weights, but {which} has "
                         f"{tree.num_levels} levels (one weight w_t per level)")
    if cfg["kind"] != "flat" and len(cfg["level_layers"]) != tree.num_levels:
        raise ValueError(f"{params.source}: variants.{variant}.level_layers: {len(cfg['level_layers'])} entries, "
                         f"but {which} has {tree.num_levels} levels (one list S_t per level)")
    return tree


def save_taxonomy(tree: Taxonomy, results_dir: str | Path) -> Path:
    """Write the tree where the later stages read it."""
    path = taxonomy_path(results_dir)
    tree.save(path)
    return path
