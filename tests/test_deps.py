"""dvc.yaml's dependencies are exact: each stage lists every dhnn module its notebook runs, and the
keys it reads; saving a notebook from JupyterLab changes nothing a stage depends on."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from dhnn.pipeline.deps import STAGES, imports_of, stage_files
from dhnn.pipeline.nbcode import notebook_code

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_lists_exactly_the_modules_its_notebook_runs(stage: str) -> None:
    listed = sorted(d for d in DVC[stage]["deps"] if d.startswith("dhnn/"))
    needed = stage_files(ROOT / STAGES[stage])
    assert set(needed) - set(listed) == set(), f"dvc.yaml stage {stage!r} misses these (python -m dhnn.pipeline.deps)"
    assert set(listed) - set(needed) == set(), f"dvc.yaml stage {stage!r} lists modules its notebook never runs"


@pytest.mark.parametrize("stage", [s for s in STAGES if STAGES[s].endswith(".ipynb")])
def test_stages_depend_on_notebook_code_not_on_the_notebook(stage: str) -> None:
    deps = DVC[stage]["deps"]
    assert f"results/nbcode/{Path(STAGES[stage]).stem}.py" in deps
    assert not any(d.endswith(".ipynb") for d in deps)


def test_runtime_knobs_are_no_stage_dependency() -> None:
    for stage in DVC.values():
        params = [p for p in stage.get("params", []) if isinstance(p, str)]
        assert not any(p == "runtime" or p.startswith("runtime.") for p in params)


def test_imports_are_found_in_functions_relative_imports_and_registry_strings() -> None:
    src = "from .base import x\ndef f():\n    from ..models import registry\nSOURCE = 'dhnn.data.folders'\n"
    assert imports_of(src, "dhnn.data.registry") >= {"dhnn.data.base", "dhnn.models", "dhnn.models.registry",
                                                     "dhnn.data.folders"}


def test_saving_a_notebook_keeps_its_code_and_editing_a_cell_changes_it(tmp_path: Path) -> None:
    nb = json.loads((ROOT / "notebooks" / "01_train.ipynb").read_text())
    saved = copy.deepcopy(nb)  # what JupyterLab writes after Run All + Save
    saved["metadata"]["kernelspec"]["display_name"] = "Python 3 (my venv)"
    saved["metadata"]["widgets"] = {"state": {}}
    for i, cell in enumerate(saved["cells"]):
        cell.setdefault("metadata", {})["execution"] = {"iopub.status.busy": "2026-11-30T10:00:00"}
        if cell["cell_type"] == "code":
            cell["execution_count"] = 40 + i
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["other numbers\n"]}]
    edited = copy.deepcopy(nb)
    code = next(c for c in edited["cells"] if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", []))
    code["source"] = "".join(code["source"]) + "\nprint('changed')"
    files = {}
    for name, content in [("orig", nb), ("saved", saved), ("edited", edited)]:
        (tmp_path / f"{name}.ipynb").write_text(json.dumps(content))
        files[name] = notebook_code(tmp_path / f"{name}.ipynb")
    assert files["saved"] == files["orig"]
    assert files["edited"] != files["orig"]


@pytest.mark.parametrize("stage", [s for s in STAGES if STAGES[s].endswith(".ipynb")])
def test_notebook_stages_run_through_the_runner_and_depend_on_it(stage: str) -> None:
    assert DVC[stage]["cmd"].startswith("python -m dhnn.pipeline.run ")
    assert "dhnn/pipeline/run.py" in DVC[stage]["deps"]


def test_nbcode_depends_on_what_it_imports() -> None:
    assert {"dhnn/pipeline/nbcode.py", "dhnn/io.py"} <= set(DVC["nbcode"]["deps"])


def test_the_demo_is_no_stage_dependency_and_refuses_to_run_in_a_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stage's code reaches dhnn.pipeline.demo (a notebook opened on its own builds the demo), but no
    stage lists it: the runner marks the kernel, and the demo refuses to run there."""
    from dhnn.params import load_params
    from dhnn.pipeline.demo import ensure_demo
    from dhnn.pipeline.run import STAGE_ENV

    assert not any("dhnn/pipeline/demo.py" in stage.get("deps", []) for stage in DVC.values())
    monkeypatch.setenv(STAGE_ENV, "notebooks/01_train.ipynb")
    with pytest.raises(RuntimeError, match="must never build the demo"):
        ensure_demo(load_params(ROOT / "configs" / "demo.yaml"), "train", ROOT / "results" / "never")


def test_no_stage_lists_a_key_whose_list_another_stage_lists() -> None:
    """dvc merges the keys of every stage (`dvc exp show`, `dvc params show`) and appends lists: a stage listing
    `grid` beside another's `grid.seeds` shows the seeds twice."""
    from dhnn.params import load_params

    values = load_params(ROOT / "params.yaml").model_dump(mode="json")

    def value(key: str):
        v = values
        for part in key.split("."):
            v = v[part]
        return v

    keys = {k for stage in DVC.values() for entry in stage.get("params", []) if isinstance(entry, dict)
            for file_keys in entry.values() for k in file_keys if "${" not in k}
    twice = [(a, b) for a in keys for b in keys if b.startswith(a + ".") and isinstance(value(b), list)]
    assert twice == [], "list these keys one by one, not their parent"
