"""The class tree: :class:`Taxonomy` and the files it is read from."""
from .tree import IGNORE_INDEX, Taxonomy

__all__ = ["IGNORE_INDEX", "Taxonomy"]
