"""End to end: `dvc repro` of the whole pipeline on a tiny configuration, in a temporary copy."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", "notebooks", "taxonomies", "dhnn"]
TINY_BACKBONE = {"name": "resnet18", "pretrained": False, "kwargs": {"channels": [8, 16, 32, 64]}}

pytestmark = pytest.mark.skipif(not (ROOT / "data" / "FashionMNIST" / "raw").is_dir(),
                                reason="run scripts/setup.sh first")


def _dvc(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # the stages call `papermill`, which lives next to this interpreter
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           **(env or {})}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, text=True,
                            capture_output=True, timeout=900)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _tiny(params: dict) -> dict:
    """The project's params.yaml shrunk to seconds per stage: small subsets, one epoch, a thin backbone."""
    params["data"].update(limit_train=512, limit_test=256)
    params["train"].update(epochs=1, batch_size=64, progress=False)
    params["infer"].update(batch_size=256)
    params["grid"] = {"variants": ["Flat", "RNN-Pool-Resi", "S2S-Pool"], "seeds": [0, 1]}
    for name in params["grid"]["variants"]:
        params["variants"][name]["backbone"] = TINY_BACKBONE
    params["variants"]["RNN-Pool-Resi"]["rnn"]["hidden_size"] = 16
    params["variants"]["S2S-Pool"]["s2s"]["hidden_size"] = 16
    return params


def copy_project(dst: Path, real_data: bool = True) -> Path:
    """The pipeline's files in ``dst``, an initialised DVC project; ``data`` links to the real data or is empty."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    if real_data:
        (dst / "data").symlink_to(ROOT / "data", target_is_directory=True)
    else:
        (dst / "data").mkdir()
    _dvc(dst, "init", "--no-scm", "-q")
    _dvc(dst, "config", "core.analytics", "false")
    return dst


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = copy_project(tmp_path_factory.mktemp("project"))
    params = _tiny(yaml.safe_load((ROOT / "params.yaml").read_text()))
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _dvc(dst, "repro")
    return dst


def test_repro_writes_the_report(project: Path) -> None:
    report = project / "results" / "report"
    for name in ["results.csv", "results.md", "level_accuracy.png", "learning_curves.png", "taxonomy.png",
                 "variants.png", "03_report.ipynb"]:
        assert (report / name).stat().st_size > 0, name
    table = (report / "results.md").read_text()
    assert "Flat" in table and "RNN-Pool-Resi" in table and "S2S-Pool" in table
    metrics = json.loads((project / "results" / "infer" / "RNN-Pool-Resi-seed1" / "metrics.json").read_text())
    assert metrics["test_images"] == 256 and 0.0 <= metrics["path_accuracy"] <= 1.0
    assert len(metrics["level_accuracy"]) == 3


def test_nothing_reruns_when_nothing_changed(project: Path) -> None:
    assert "up to date" in _dvc(project, "status").stdout
    out = _dvc(project, "repro").stdout
    assert "Running stage" not in out


def test_a_parameter_change_reruns_only_its_dependents(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["infer"]["batch_size"] = 128
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = json.loads(_dvc(project, "status", "--json").stdout)
    assert changed and all(stage.startswith("infer@") for stage in changed), changed
    ran = _dvc(project, "repro").stdout
    assert "Running stage 'train" not in ran and "Running stage 'report'" in ran


def test_metrics_and_plots_are_visible_to_dvc(project: Path) -> None:
    shown = _dvc(project, "metrics", "show", "--json").stdout
    assert "path_accuracy" in shown and "train_seconds" in shown
    _dvc(project, "plots", "show", "--json")
