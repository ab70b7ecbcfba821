"""dhnn: Deep Hierarchical Neural Networks (Koo, Klabjan & Utke, IEEE BigData 2020).

A CNN learns features; a conversion turns chosen feature maps into one input per tree level; an
RNN emits one label per level; a beam search constrained to the tree returns the best paths.
"""
from .config import load_params, resolve, run_name
from .decoding import beam_search, beam_search_indices
from .metrics import evaluate_paths, level_accuracy, node_accuracy, path_accuracy
from .models import DHNN, FlatClassifier, count_parameters, create_model
from .taxonomy import IGNORE_INDEX, Taxonomy

__version__ = "0.1.0"

__all__ = [
    "DHNN", "FlatClassifier", "IGNORE_INDEX", "Taxonomy", "beam_search", "beam_search_indices", "count_parameters",
    "create_model", "evaluate_paths", "level_accuracy", "load_params", "node_accuracy", "path_accuracy", "resolve",
    "run_name",
]
