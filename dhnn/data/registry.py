"""The data-source registry: the one place a ``data.name`` is dispatched.

Each source is a module of ``dhnn.data`` with four functions, imported only when that source is
used (the image-folder readers pull in PIL and torchvision's transforms):

- ``classes(data) -> list[str]``: the class names, in label order, without reading images;
- ``taxonomy(data, taxonomy) -> Taxonomy``: the class tree, read from a file or built from the data;
- ``check(data) -> dict``: a quick check of the files (sizes, checksums, folders) before long work,
  returning a manifest (file -> checksum or fingerprint) that the pipeline's stages depend on;
- ``splits(data, tree) -> Splits``: train, validation and test sets.

A source whose files can be downloaded also names a ``fetcher``, a module of ``dhnn.data`` with
``fetch(data, progress) -> dict`` (the pipeline's fetch stage; its manifest). Others fetch nothing. It is
named relative to the package, so that the stages that never fetch don't list it among their code.

``task`` says what a label is: ``paths`` (one root path per image) or ``node_sets`` (any set of
nodes per image, each with its ancestors, as in Open Images); see dhnn.tasks.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from ..taxonomy import Taxonomy
from .base import Splits, check_classes


@dataclass(frozen=True)
class Source:
    """A data source: the module that reads it and the kind of label it has."""

    name: str
    module: str
    task: str
    fetcher: str | None = None

    def _impl(self) -> ModuleType:
        return importlib.import_module(self.module)

    def classes(self, data: dict) -> list[str]:
        """The class names, in label order."""
        return self._impl().classes(data)

    def taxonomy(self, data: dict, taxonomy: dict) -> Taxonomy:
        """The class tree."""
        return self._impl().taxonomy(data, taxonomy)

    def check(self, data: dict) -> dict[str, str]:
        """A quick check of the files, raising an error that names the file; the files' manifest."""
        return self._impl().check(data)

    def splits(self, data: dict, tree: Taxonomy) -> Splits:
        """Train, validation and test sets."""
        return self._impl().splits(data, tree)

    def fetch(self, data: dict, progress: bool = True) -> dict:
        """Download what the data settings need and is not there yet; a manifest of it."""
        if self.fetcher is None:
            return {"fetched": f"nothing: {self.name} is not fetched by the pipeline"}
        return importlib.import_module(f"{__package__}.{self.fetcher}").fetch(data, progress)


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("fashion_mnist", "dhnn.data.fashion_mnist", "paths"),
    Source("image_folder", "dhnn.data.folders", "paths"),
    Source("inaturalist", "dhnn.data.folders", "paths"),
    Source("cifar100", "dhnn.data.cifar100", "paths"),
    Source("open_images", "dhnn.data.open_images", "node_sets", fetcher="open_images_fetch"),
    Source("fashion_scenes", "dhnn.data.fashion_scenes", "node_sets"),
)}


def get_source(name: str) -> Source:
    """The registered source called ``name``."""
    if name not in SOURCES:
        raise ValueError(f"data.name: unknown data set {name!r}; expected one of {', '.join(SOURCES)}")
    return SOURCES[name]


def build_splits(data: dict, tree: Taxonomy) -> Splits:
    """Train, validation and test sets of the configured data set."""
    return get_source(data["name"]).splits(data, tree)


def dataset_taxonomy(data: dict, taxonomy: dict) -> Taxonomy:
    """The class tree of the configured data set, checked against its classes."""
    source = get_source(data["name"])
    tree = source.taxonomy(data, taxonomy)
    check_classes(source.classes(data), tree, taxonomy.get("source") or data["name"])
    return tree

