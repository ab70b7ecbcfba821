"""Data sources behind one registry (dhnn.data.registry), and what they share (dhnn.data.base)."""
from .base import Splits, make_loader
from .registry import SOURCES, build_splits, dataset_taxonomy, get_source

__all__ = ["SOURCES", "Splits", "build_splits", "dataset_taxonomy", "get_source", "make_loader"]
