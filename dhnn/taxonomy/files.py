"""Taxonomy files: label paths (CSV), parent,child edges (CSV) or JSON, each read with errors that name the file."""
from __future__ import annotations

import csv
from pathlib import Path

from .tree import Taxonomy


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
            if parent.get(c) == p:
                raise ValueError(f"{where}: repeats the edge {p},{c}")
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
            try:
                with open(path, newline="", encoding="utf-8-sig") as f:
                    header = next(csv.reader(f), [])
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
            fmt = "edges" if [c.strip().lower() for c in header] == ["parent", "child"] else "paths"
    readers = {"paths": Taxonomy.from_csv, "edges": taxonomy_from_edges, "json": Taxonomy.load}
    if fmt not in readers:
        raise ValueError(f"{path}: unknown taxonomy format {fmt!r}; expected auto, {', '.join(readers)}")
    try:
        return readers[fmt](path)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r}); "
                         f"save it as UTF-8") from None
