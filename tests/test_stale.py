"""What an edit makes stale: for every module under dhnn/, the stages whose dvc.yaml dependencies list it.

The table below is the design, written down: editing a figure retrains nothing, editing the bundle
writer re-runs inference and nothing upstream of it. ``dvc status`` lists exactly these stages after
a module is edited (tests/test_pipeline.py checks a few on a real project); what they write then
makes the stages below them run too, as the last test spells out for the modules every stage reads.
"""
from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
NOTEBOOK_STAGES = {"taxonomy", "train", "infer", "report"}
EVERY = {"fetch", "nbcode", *NOTEBOOK_STAGES}
DATA_STAGES = {"fetch", "taxonomy", "train", "infer"}  # what reads a data source

# module (first match wins) -> the stages that editing it makes stale
STALE: list[tuple[str, set[str]]] = [
    ("dhnn/report/*", {"report"}),                              # tables and figures: never a retrain
    ("dhnn/serving/bundle.py", {"infer"}),                      # the infer stage writes each run's bundle
    ("dhnn/serving/__init__.py", {"infer"}),
    ("dhnn/serving/*", set()),                                  # `dhnn predict` only
    ("dhnn/evaluation/bootstrap.py", {"report"}),               # intervals of the comparisons
    ("dhnn/evaluation/hierarchical.py", {"infer", "report"}),   # calibration error (infer); hierarchical F1, severity
    ("dhnn/evaluation/scoring.py", {"infer"}),                  # test scores and predictions
    ("dhnn/evaluation/calibration.py", {"infer"}),              # temperatures fitted on validation
    ("dhnn/evaluation/prefixes.py", {"infer"}),                 # prefix probabilities of the test paths
    ("dhnn/evaluation/backoff.py", {"infer", "report"}),        # back-off on test, and its curves
    ("dhnn/evaluation/inference.py", {"train", "infer"}),       # train: each epoch's validation predictions
    ("dhnn/evaluation/metrics.py", {"train", "infer", "report"}),   # train: the validation score per epoch
    ("dhnn/evaluation/records.py", {"train", "infer", "report"}),   # train: the metric that picks the epoch
    ("dhnn/evaluation/__init__.py", NOTEBOOK_STAGES - {"taxonomy"}),
    ("dhnn/decoding.py", NOTEBOOK_STAGES - {"taxonomy"}),       # the beam search every score goes through
    ("dhnn/models/*", {"train", "infer"}),
    ("dhnn/tasks.py", {"train", "infer"}),
    ("dhnn/training/checkpoint.py", {"train", "infer"}),        # infer reads the checkpoints
    ("dhnn/training/__init__.py", {"train", "infer"}),
    ("dhnn/training/*", {"train"}),
    ("dhnn/data/open_images_fetch.py", {"fetch"}),             # downloads; the other stages read what it wrote
    ("dhnn/data/open_images_cut.py", set()),                   # cuts the committed tree: a command, no stage
    ("dhnn/data/*", DATA_STAGES),
    ("dhnn/taxonomy/files.py", DATA_STAGES),                   # tree files; the report reads taxonomy.json
    ("dhnn/taxonomy/*", DATA_STAGES | NOTEBOOK_STAGES),
    ("dhnn/params.py", DATA_STAGES | NOTEBOOK_STAGES),
    ("dhnn/params_*.py", DATA_STAGES | NOTEBOOK_STAGES),       # parts of the schema
    ("dhnn/paths.py", DATA_STAGES | NOTEBOOK_STAGES),
    ("dhnn/console.py", {"train", "infer"}),
    ("dhnn/io.py", EVERY),
    ("dhnn/__init__.py", EVERY),
    ("dhnn/pipeline/__init__.py", EVERY),
    ("dhnn/pipeline/nbcode.py", {"nbcode"}),
    ("dhnn/pipeline/fetch.py", {"fetch"}),
    ("dhnn/pipeline/run.py", NOTEBOOK_STAGES),                  # every notebook stage's cmd runs it
    ("dhnn/pipeline/context.py", NOTEBOOK_STAGES),
    ("dhnn/pipeline/layout.py", NOTEBOOK_STAGES),
    ("dhnn/pipeline/taxonomy_stage.py", {"taxonomy", "train"}),  # train re-checks its variant's tree
    ("dhnn/pipeline/build.py", {"train", "infer"}),
    ("dhnn/pipeline/train_stage.py", {"train"}),
    ("dhnn/pipeline/ddp_train.py", {"train"}),
    ("dhnn/pipeline/infer_stage.py", {"infer"}),
    ("dhnn/pipeline/report_stage.py", {"report"}),
    ("dhnn/pipeline/demo.py", set()),    # notebooks opened on their own only; refuses to run in a stage
    ("dhnn/pipeline/check.py", set()),   # the check stage runs on every repro anyway
    ("dhnn/pipeline/deps.py", set()),    # writes these lists; no stage runs it
    ("dhnn/pipeline/study.py", set()),   # runs a whole dvc repro in a workspace of its own
]


def expected_stale(module: str) -> set[str]:
    """The stages that editing ``module`` (a path like dhnn/report/tables.py) makes stale, by the table."""
    for pattern, stages in STALE:
        if fnmatch(module, pattern):
            return stages
    raise KeyError(f"{module}: not in tests/test_stale.py's STALE table; add it with the stages it may make stale")


def listed_by(module: str) -> set[str]:
    """The stages of dvc.yaml that list ``module`` among their dependencies."""
    return {name for name, stage in DVC.items() if module in stage.get("deps", [])}


MODULES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "dhnn").rglob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_an_edit_makes_exactly_the_expected_stages_stale(module: str) -> None:
    assert listed_by(module) == expected_stale(module)


def test_every_pattern_of_the_table_matches_a_module() -> None:
    unused = [p for p, _ in STALE if not any(fnmatch(m, p) for m in MODULES)]
    assert unused == []


def _downstream(stages: set[str]) -> set[str]:
    """``stages`` and every stage that reads what they write."""
    outs = {name: [o if isinstance(o, str) else next(iter(o)) for o in stage.get("outs", [])] for name, stage in DVC.items()}
    found, grew = set(stages), True
    while grew:
        grew = False
        for name, stage in DVC.items():
            reads = [d for d in stage.get("deps", []) if isinstance(d, str)]
            if name not in found and any(d == o or d.startswith(o + "/") or o.startswith(d + "/")
                                         for s in found for o in outs[s] for d in reads):
                found.add(name)
                grew = True
    return found


@pytest.mark.parametrize("module", ["dhnn/data/base.py", "dhnn/taxonomy/tree.py", "dhnn/params.py"])
def test_data_taxonomy_and_params_reach_every_stage_downstream(module: str) -> None:
    assert _downstream(listed_by(module)) == DATA_STAGES | NOTEBOOK_STAGES | {"check"}


def test_a_report_edit_reaches_nothing_upstream() -> None:
    assert _downstream(listed_by("dhnn/report/tables.py")) == {"report"}
    assert _downstream(listed_by("dhnn/serving/bundle.py")) == {"infer", "report"}
