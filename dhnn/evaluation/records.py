"""What each kind of label writes: the keys of a run's metrics.json and the columns of its
predictions.csv. The report reads results through these alone, so it never imports a model.

dhnn.tasks builds its tasks on these records; infer writes the task's name into every metrics.json.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    """The files of one kind of label: the metrics it is scored by and the keys a metrics file must hold."""

    name: str
    multilabel: bool
    metrics: tuple[str, ...]
    required: tuple[str, ...]


RECORDS: dict[str, Record] = {r.name: r for r in (
    Record("paths", False, ("path_accuracy", "node_accuracy"),
           ("variant", "seed", "path_accuracy", "node_accuracy", "level_accuracy")),
    Record("node_sets", True, ("path_f1", "node_f1"), ("variant", "seed", "path_f1", "node_f1")),
)}

# predictions.csv of a node_sets run: these columns, each a set of nodes written as space-separated
# indices into taxonomy.nodes (node names may hold any character), then one score column per node
NODE_SET_COLUMNS = ("true nodes", "true labels", "node prediction", "path prediction")


def get_record(name: str, where: str = "") -> Record:
    """The record of the task called ``name``; ``where`` names the file that gave it, for the error."""
    if name not in RECORDS:
        raise ValueError(f"{where + ': ' if where else ''}unknown task {name!r}; expected one of {', '.join(RECORDS)}")
    return RECORDS[name]
