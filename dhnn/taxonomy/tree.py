"""Label taxonomy: a rooted tree of class names and the path encodings DHNN trains on.

The root is implicit and never part of a path. ``levels[t]`` holds the nodes at depth t + 1 in
order of first appearance in the input, and ``nodes`` (level 1, then level 2, ...) is the slides'
ordering of V. A label is a root path; ``encode_path`` turns it into one index per level, which is
what the per-level cross-entropy losses and the beam search work with.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_json

# Same value as torch.nn.CrossEntropyLoss's default ignore_index, so encoded paths can be fed to
# the loss directly: levels below the end of a short path contribute nothing.
IGNORE_INDEX = -100


def _show(parent: str | None) -> str:
    return "<root>" if parent is None else repr(parent)


class _Builder:
    """Accumulates root paths into levels + a parent map; errors are prefixed with a location."""

    def __init__(self) -> None:
        self.levels: list[list[str]] = []
        self.parent: dict[str, str | None] = {}

    def add(self, path: Sequence[str], where: str) -> None:
        if isinstance(path, str):
            raise ValueError(f"{where}: expected a sequence of node names, got the string {path!r}")
        if len(path) == 0:
            raise ValueError(f"{where}: empty path")
        parent = None
        for depth, name in enumerate(path):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"{where}: empty or non-string node name {name!r} at level "
                                 f"{depth + 1} of path {list(path)}")
            if name not in self.parent:
                self.parent[name] = parent
                if depth == len(self.levels):
                    self.levels.append([])
                self.levels[depth].append(name)
            elif self.parent[name] != parent:
                raise ValueError(f"{where}: node {name!r} has two parents, {_show(self.parent[name])} "
                                 f"and {_show(parent)} (node names must be unique in the tree)")
            parent = name

    def build(self, empty_message: str) -> Taxonomy:
        if not self.levels:
            raise ValueError(empty_message)
        return Taxonomy(self.levels, self.parent)


class Taxonomy:
    """A rooted tree of labels with stable per-level node order."""

    def __init__(self, levels: Sequence[Sequence[str]], parent: Mapping[str, str | None]) -> None:
        """Build from per-level node lists and a child -> parent map (see the from_* constructors)."""
        self.levels: list[list[str]] = [list(level) for level in levels]
        self._parent: dict[str, str | None] = dict(parent)
        self._depth: dict[str, int] = {}
        self._index: dict[str, int] = {}
        if not self.levels:
            raise ValueError("a taxonomy needs at least one node")
        for t, level in enumerate(self.levels):
            if not level:
                raise ValueError(f"level {t + 1} has no nodes")
            for i, name in enumerate(level):
                if name in self._depth:
                    raise ValueError(f"node {name!r} is listed twice in levels")
                if name not in self._parent:
                    raise ValueError(f"node {name!r} (level {t + 1}) has no parent entry")
                p = self._parent[name]
                if (p is None) != (t == 0) or (p is not None and self._depth.get(p) != t):
                    raise ValueError(f"node {name!r} at level {t + 1} has parent {_show(p)}, "
                                     f"which is not a node at level {t}")
                self._depth[name] = t + 1
                self._index[name] = i
        missing = [n for n in self._parent if n not in self._depth]
        if missing:
            raise ValueError(f"nodes {missing} have a parent entry but are missing from levels")

        self._nodes = [n for level in self.levels for n in level]
        self._children: dict[str | None, list[str]] = {n: [] for n in self._nodes}
        self._children[None] = list(self.levels[0])
        for level in self.levels[1:]:
            for name in level:
                self._children[self._parent[name]].append(name)
        self._leaves = [n for n in self._nodes if not self._children[n]]
        self._offsets = [0]
        for level in self.levels[:-1]:
            self._offsets.append(self._offsets[-1] + len(level))
        self._leaf_paths: torch.Tensor | None = None

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def from_paths(cls, paths: Iterable[Sequence[str]]) -> Taxonomy:
        """Build from root paths (node names from level 1 down); repeats and prefixes are fine."""
        builder = _Builder()
        for i, path in enumerate(paths):
            builder.add(path, f"path {i}")
        return builder.build("no paths given")

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> Taxonomy:
        """Read a CSV with a header row and one label path per row (trailing cells may be empty)."""
        builder = _Builder()
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty file, expected a header row such as level_1,level_2")
            seen: dict[tuple[str, ...], int] = {}
            for row in reader:
                where = f"{path}: line {reader.line_num}"
                cells = [c.strip() for c in row]
                while cells and not cells[-1]:
                    cells.pop()
                if not cells:
                    continue  # blank line
                if tuple(cells) in seen:
                    raise ValueError(f"{where}: repeats the path of line {seen[tuple(cells)]} ({' / '.join(cells)})")
                seen[tuple(cells)] = reader.line_num
                if len(cells) > len(header):
                    raise ValueError(f"{where}: {len(cells)} cells but the header has "
                                     f"{len(header)} columns")
                if "" in cells:
                    col = cells.index("")
                    raise ValueError(f"{where}: empty cell in column {col + 1} ({header[col]!r}) "
                                     f"in the middle of the path")
                builder.add(cells, where)
        return builder.build(f"{path}: no label paths after the header row")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``paths`` (one per leaf) and ``levels`` (to pin the node order)."""
        return {"levels": [list(level) for level in self.levels],
                "paths": [self.path(leaf) for leaf in self._leaves]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Taxonomy:
        """Inverse of to_dict; ``levels`` is optional (without it, order of first appearance)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("paths"), list):
            raise ValueError("taxonomy data must be a mapping with a 'paths' list")
        built = cls.from_paths(data["paths"])
        if data.get("levels") is None:
            return built
        try:
            return cls(data["levels"], built._parent)
        except (TypeError, ValueError) as e:
            raise ValueError(f"'levels' does not match 'paths': {e}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON atomically (see dhnn.io)."""

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Taxonomy:
        """Read a taxonomy from JSON (as written by save) or, for a .csv suffix, a CSV of label paths."""
        if Path(path).suffix.lower() == ".csv":
            return cls.from_csv(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    # -- structure ----------------------------------------------------------------------------

    @property
    def num_levels(self) -> int:
        """T, the depth of the deepest leaf."""
        return len(self.levels)

    @property
    def level_sizes(self) -> list[int]:
        """Number of nodes at each level (the output width of each per-level classifier)."""
        return [len(level) for level in self.levels]

    @property
    def nodes(self) -> list[str]:
        """All node names, level by level (the slides' ordering of V)."""
        return list(self._nodes)

    @property
    def leaves(self) -> list[str]:
        """Nodes without children, in ``nodes`` order."""
        return list(self._leaves)

    @property
    def is_fixed_depth(self) -> bool:
        """True when every leaf sits at the deepest level."""
        return all(self._depth[leaf] == self.num_levels for leaf in self._leaves)

    def _check(self, name: str) -> None:
        if name not in self._depth:
            raise KeyError(f"{name!r} is not a node of this taxonomy ({len(self)} nodes, "
                           f"level 1: {self.levels[0][:5]}{'...' if len(self.levels[0]) > 5 else ''})")

    def parent(self, name: str) -> str | None:
        """Parent of a node, or None for level-1 nodes."""
        self._check(name)
        return self._parent[name]

    def children(self, name: str | None = None) -> list[str]:
        """Children of a node in level order; None means the root's children (level 1)."""
        if name is not None:
            self._check(name)
        return list(self._children[name])

    def depth(self, name: str) -> int:
        """1-based level of a node."""
        self._check(name)
        return self._depth[name]

    def index(self, name: str) -> int:
        """Position of a node within its own level list."""
        self._check(name)
        return self._index[name]

    def path(self, name: str) -> list[str]:
        """Root path from level 1 down to the node (root excluded)."""
        self._check(name)
        out: list[str] = []
        node: str | None = name
        while node is not None:
            out.append(node)
            node = self._parent[node]
        return out[::-1]

    def parent_index(self, t: int) -> torch.Tensor:
        """For each node in levels[t] (0-based t), the index of its parent in levels[t-1]; -1 at t=0."""
        if not 0 <= t < self.num_levels:
            raise ValueError(f"level index t={t} out of range [0, {self.num_levels})")
        if t == 0:
            return torch.full((len(self.levels[0]),), -1, dtype=torch.long)
        return torch.tensor([self._index[self._parent[n]] for n in self.levels[t]], dtype=torch.long)

    def collapse_chains(self) -> Taxonomy:
        """A new taxonomy without single-child nodes: each is removed and its child takes its place.

        Chains collapse all the way (in a -> b -> c with a and b single-child, c moves up to a's
        level), so leaves may end up at different depths. Leaves are never removed, so leaf names
        (the class names datasets map to) are kept. A moved node takes the slot in its new level
        of the top of the chain it replaces; everything else keeps its order, so a tree without
        chains comes back equal. The implicit root is left alone even if it has one child.
        """
        def single(name: str | None) -> bool:
            return name is not None and len(self._children[name]) == 1

        kept = [n for n in self._nodes if not single(n)]
        parent: dict[str, str | None] = {}
        slot: dict[str, tuple[int, int]] = {}
        for n in kept:
            top = n
            while single(self._parent[top]):
                top = self._parent[top]
            parent[n] = self._parent[top]
            slot[n] = (self._depth[top], self._index[top])
        depth: dict[str, int] = {}
        for n in kept:  # level by level, so a (shallower) parent is placed before its children
            depth[n] = 1 if parent[n] is None else depth[parent[n]] + 1
        levels: list[list[str]] = [[] for _ in range(max(depth.values()))]
        for n in sorted(kept, key=slot.__getitem__):
            levels[depth[n] - 1].append(n)
        return Taxonomy(levels, parent)

    # -- encodings ----------------------------------------------------------------------------

    def encode_path(self, path: Sequence[str]) -> torch.Tensor:
        """Per-level indices [T] of a root path; IGNORE_INDEX after the path ends."""
        if isinstance(path, str):
            raise ValueError(f"expected a sequence of node names, got the string {path!r} "
                             f"(use taxonomy.path({path!r}) for a node's root path)")
        path = list(path)
        if not path:
            raise ValueError("cannot encode an empty path")
        for t, name in enumerate(path):
            if name not in self._depth:
                raise ValueError(f"path {path}: {name!r} is not a node of the taxonomy")
            expected = path[t - 1] if t else None
            if self._parent[name] != expected:
                raise ValueError(f"path {path} is not a root path of the taxonomy: the parent of "
                                 f"{name!r} is {_show(self._parent[name])}, not {_show(expected)}")
        out = torch.full((self.num_levels,), IGNORE_INDEX, dtype=torch.long)
        out[: len(path)] = torch.tensor([self._index[n] for n in path], dtype=torch.long)
        return out

    def one_hot(self, path: Sequence[str]) -> torch.Tensor:
        """The slides' encoding [T, |V|]: row t one-hot over ``nodes``; zero rows after the end."""
        encoded = self.encode_path(path)
        out = torch.zeros(self.num_levels, len(self._nodes))
        for t, i in enumerate(encoded.tolist()):
            if i != IGNORE_INDEX:
                out[t, self._offsets[t] + i] = 1.0
        return out

    def leaf_paths(self) -> torch.Tensor:
        """Encoded root path [len(leaves), T] of every leaf, in ``leaves`` order."""
        if self._leaf_paths is None:
            self._leaf_paths = torch.stack([self.encode_path(self.path(n)) for n in self._leaves])
        return self._leaf_paths.clone()

    def decode(self, indices: torch.Tensor) -> list[list[str]]:
        """Names for a batch of per-level indices [N, T], each stopping at the first IGNORE_INDEX.

        Parent/child consistency is not checked, so independent per-level predictions decode too.
        """
        if indices.dim() != 2 or indices.shape[1] != self.num_levels:
            raise ValueError(f"expected indices of shape [N, {self.num_levels}], "
                             f"got {list(indices.shape)}")
        out = []
        for row in indices.tolist():
            names = []
            for t, i in enumerate(row):
                if i == IGNORE_INDEX:
                    break
                if not 0 <= i < len(self.levels[t]):
                    raise ValueError(f"index {i} out of range for level {t + 1} "
                                     f"({len(self.levels[t])} nodes)")
                names.append(self.levels[t][i])
            out.append(names)
        return out

    # -- dunder -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._depth

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Taxonomy):
            return NotImplemented
        return self.levels == other.levels and self._parent == other._parent

    def __repr__(self) -> str:
        return (f"Taxonomy(levels={self.level_sizes}, nodes={len(self)}, "
                f"leaves={len(self._leaves)})")
