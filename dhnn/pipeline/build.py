"""What the train and infer stages both build for a run: its task, its data splits and its resolved
model settings. The report needs none of it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..data.base import Splits
from ..data.registry import get_source
from ..models.registry import resolve_config
from ..params import Params
from ..tasks import PathTask, NodeSetTask, get_task
from ..taxonomy import Taxonomy


@dataclass
class RunData:
    """A run's task, its data on its tree, and its variant's settings with label-dependent choices fixed."""

    task: PathTask | NodeSetTask
    splits: Splits
    cfg: dict


def run_data(params: Params, variant: str, tree: Taxonomy) -> RunData:
    """Read the data on ``tree`` and resolve the variant's settings from every split's labels.

    Settings that depend on the labels (CNN-S2S's ``end_after: auto``) are fixed here, before a
    model is built, so that training and inference build the same model.
    """
    data = params.section("data")
    source = get_source(data["name"])
    task = get_task(source.task)
    splits = source.splits(data, tree)
    ends = task.label_ends([splits.train, splits.val, splits.test], tree)
    where = f"{params.source}: variants.{variant}.s2s.end_after (data {params.data.name!r})"
    return RunData(task, splits, resolve_config(params.variant(variant), tree, ends, where))
