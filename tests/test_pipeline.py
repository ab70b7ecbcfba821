"""End to end: `dvc repro` of the whole pipeline on a tiny configuration, in a temporary copy.

The tests never read the live params.yaml (users edit it): the tiny params start from the committed
configs/demo.yaml and add the variants they need.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", "notebooks", "taxonomies", "dhnn", "configs"]
TINY_BACKBONE = {"source": "dhnn", "name": "small_resnet", "kwargs": {"widths": [8, 16, 32, 64]}}
RUN = "RNN-Pool-Resi/seed0"
STAGE = "train@RNN-Pool-Resi"

pytestmark = pytest.mark.skipif(not (ROOT / "data" / "FashionMNIST" / "raw").is_dir(),
                                reason="run scripts/setup.sh first")


def _env(extra: dict | None = None) -> dict:
    # the stages call `python`, which must be this interpreter (the project's venv)
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **(extra or {})}


def _dvc(project: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=_env(env), text=True,
                            capture_output=True, timeout=900)
    if check:
        assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def tiny_params() -> dict:
    """configs/demo.yaml with a flat baseline beside its CNN-RNN, on a thin backbone (CNN-S2S runs in
    tests/test_pipeline_datasets.py, which drives the same stage functions in one process)."""
    params = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    params["data"].update(limit_train=512, limit_test=256)
    params["train"].update(epochs=3)
    params["runtime"].update(eval_batch_size=256, progress=True)
    params["variants"]["RNN-Pool-Resi"]["backbone"] = TINY_BACKBONE
    params["variants"]["Flat"] = {"kind": "flat", "backbone": TINY_BACKBONE}
    params["grid"] = {"variants": ["Flat", "RNN-Pool-Resi"], "seeds": [0]}
    return params


def copy_project(dst: Path, params: dict | None = None, real_data: bool = True, git: bool = False) -> Path:
    """The pipeline's files in ``dst``, an initialised DVC project; ``data`` links to the real data or is empty.

    ``git``: a git repository too (what `dvc exp` needs), with the project's .gitignore and nothing committed.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES + ([".gitignore"] if git else []):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    if real_data:
        (dst / "data").symlink_to(ROOT / "data", target_is_directory=True)
    else:
        (dst / "data").mkdir()
    if params is not None:
        write_params(dst, params)
    if git:
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dst, check=True)
    _dvc(dst, "init", "-q", *([] if git else ["--no-scm"]))
    _dvc(dst, "config", "core.analytics", "false")
    return dst


def write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = copy_project(tmp_path_factory.mktemp("project"), tiny_params())
    ran = _dvc(dst, "repro")
    assert "epoch 3/3" in ran.stderr + ran.stdout  # one progress line per epoch reaches the terminal
    return dst


def test_repro_writes_the_report(project: Path) -> None:
    report = project / "results" / "report"
    for name in ["results.csv", "results.md", "level_accuracy.png", "learning_curves.png", "taxonomy.png",
                 "variants.png", "03_report.ipynb"]:
        assert (report / name).stat().st_size > 0, name
    table = (report / "results.md").read_text()
    assert "Flat" in table and "RNN-Pool-Resi" in table
    metrics = json.loads((project / "results" / "infer" / RUN / "metrics.json").read_text())
    assert metrics["test_images"] == 256 and 0.0 <= metrics["path_accuracy"] <= 1.0
    assert len(metrics["level_accuracy"]) == 3
    assert not list((project / "results").rglob("last.pt"))  # finished runs leave no resume state
    assert not list((project / "results").rglob(".*"))  # nor temp files


def test_nothing_reruns_when_nothing_changed(project: Path) -> None:
    assert set(json.loads(_dvc(project, "status", "--json").stdout)) == {"check"}  # always runs, changes nothing
    ran = _dvc(project, "repro").stdout
    assert ran.count("Running stage") == 1 and "Running stage 'check'" in ran


def test_runtime_knobs_rerun_nothing(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["runtime"] = {"progress": False, "num_workers": 1, "eval_batch_size": 128}
    write_params(project, params)
    changed = json.loads(_dvc(project, "status", "--json").stdout)
    assert set(changed) <= {"check"}, changed
    assert "Running stage 'train" not in _dvc(project, "repro").stdout


def test_saving_notebooks_from_jupyter_reruns_no_training(project: Path) -> None:
    for nb in (project / "notebooks").glob("*.ipynb"):
        content = json.loads(nb.read_text())
        content["metadata"]["kernelspec"]["display_name"] = "Python 3 (renamed)"
        for i, cell in enumerate(content["cells"]):
            if cell["cell_type"] == "code":
                cell["execution_count"] = 100 + i
                cell["outputs"] = []
        nb.write_text(json.dumps(content, indent=1))
    changed = json.loads(_dvc(project, "status", "--json").stdout)
    assert set(changed) == {"nbcode", "check"}, changed
    ran = _dvc(project, "repro").stdout
    assert "Running stage 'nbcode'" in ran and "Running stage 'train" not in ran and "Running stage 'infer" not in ran


@pytest.mark.parametrize("module", ["dhnn/report/tables.py", "dhnn/serving/bundle.py", "dhnn/tasks.py",
                                    "dhnn/data/base.py"])
def test_an_edited_module_makes_exactly_its_stages_stale(project: Path, module: str) -> None:
    """`dvc status` after appending a comment lists what tests/test_stale.py's table says, one stage per variant."""
    from test_stale import expected_stale

    variants = yaml.safe_load((project / "params.yaml").read_text())["grid"]["variants"]
    expected = {f"{s}@{v}" if s in ("train", "infer") else s for s in expected_stale(module)
                for v in (variants if s in ("train", "infer") else [None])}
    path = project / module
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        changed = set(json.loads(_dvc(project, "status", "--json").stdout)) - {"check"}
    finally:
        path.write_text(original)
    assert changed == expected


def test_a_params_typo_stops_repro_in_seconds(project: Path) -> None:
    good = (project / "params.yaml").read_text()
    write_params(project, {**yaml.safe_load(good), "trian": {"epochs": 2}})
    before = sorted(p.relative_to(project) for p in (project / "results").rglob("*"))
    try:
        start = time.perf_counter()
        result = _dvc(project, "repro", check=False)
        seconds = time.perf_counter() - start
    finally:
        (project / "params.yaml").write_text(good)
    assert result.returncode != 0
    assert "params.yaml: unknown key 'trian'; did you mean 'train'?" in result.stderr + result.stdout
    assert seconds < 20, seconds
    assert "Running stage 'taxonomy'" not in result.stdout
    after = sorted(p.relative_to(project) for p in (project / "results").rglob("*") if "check" not in p.parts)
    assert after == [p for p in before if "check" not in p.parts]
    healed = _dvc(project, "repro").stdout  # the fixed file: only the check reruns, and changes nothing
    assert "Running stage 'check'" in healed and "Running stage 'taxonomy'" not in healed


def test_a_damaged_data_file_stops_repro_and_is_never_recorded(tmp_path: Path) -> None:
    damaged = copy_project(tmp_path / "damaged", tiny_params(), real_data=False)
    shutil.copytree(ROOT / "data" / "FashionMNIST", damaged / "data" / "FashionMNIST")
    shutil.copy(ROOT / "data.dvc", damaged / "data.dvc")
    _dvc(damaged, "commit", "-f", "-q", "data.dvc")
    recorded = (damaged / "data.dvc").read_text()
    images = damaged / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1_000_000])
    result = _dvc(damaged, "repro", check=False)
    assert result.returncode != 0
    assert "train-images-idx3-ubyte: 1,000,000 bytes, expected 47,040,016" in result.stderr + result.stdout
    assert (damaged / "data.dvc").read_text() == recorded  # the official hash stays
    assert "Running stage 'taxonomy'" not in result.stdout


def test_metrics_are_visible_to_dvc(project: Path) -> None:
    shown = json.loads(_dvc(project, "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    assert files["metrics/infer/Flat.json"]["data"]["seed0"]["path_accuracy"] >= 0.0
    assert files["metrics/train/RNN-Pool-Resi.json"]["data"]["seed0"]["train_seconds"] > 0.0


def test_repro_after_kill_9_resumes_to_the_same_model(project: Path) -> None:
    """kill -9 in the middle of training, then `dvc repro`: the run resumes and ends as the uninterrupted one."""
    run_dir = project / "results" / "train" / RUN
    reference = torch.load(run_dir / "model.pt", weights_only=True)
    last = project / "results" / "resume" / RUN / "last.pt"  # outside the stage's output, which dvc deletes
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-f", "-s", STAGE],
                            cwd=project, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole tree: dvc, the stage runner and its kernel
    proc.wait()
    assert last.is_file(), "training finished before it could be killed; make its epochs longer"
    # The run had finished once before, so a plain `dvc repro` would check its outputs out of the
    # cache; forcing it again is what a first run killed half-way gets from a plain `dvc repro`.
    ran = _dvc(project, "repro", "-f", "-s", STAGE)
    assert "resuming after epoch" in ran.stderr + ran.stdout, ran.stdout + ran.stderr
    done = torch.load(run_dir / "model.pt", weights_only=True)
    assert done["epoch"] == reference["epoch"] and done["val"] == reference["val"]
    assert all(torch.equal(done["model"][k], reference["model"][k]) for k in reference["model"])
    stale = json.loads(_dvc(project, "status", "--json").stdout)
    assert not any(s.startswith("infer@") for s in stale), stale  # the same model.pt bytes: inference is current
