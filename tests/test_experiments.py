"""`dvc exp` and `train.nproc` through the user's path: one git + DVC project, in a temporary folder.

On a tiny one-variant configuration the module's project runs, in order: `dvc repro` (one
process), committed as the baseline; `dvc exp run -S train.nproc=2` (torchrun, gloo on loopback);
a `dvc repro` of that train stage killed with SIGKILL mid-training, then rerun; `dvc exp run -S
train.lr=...`. Each test checks what one of these steps left. Up to the infer stage: the report adds
no metric, and runs in tests/test_pipeline.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_distributed import TOL_ACC
from test_pipeline import ROOT, TINY_BACKBONE, _dvc, _env, copy_project, tiny_params

VARIANT = "RNN-Pool-Resi"
STAGE = f"train@{VARIANT}"
# one thread a process: a tiny model on a busy 2-core machine otherwise spends its epochs waiting for threads
ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
       "OMP_NUM_THREADS": "1"}
INFER = f"infer@{VARIANT}"  # what the metrics need: the report stage runs in tests/test_pipeline.py
METRICS = [f"metrics/train/{VARIANT}.json", f"metrics/infer/{VARIANT}.json"]

pytestmark = pytest.mark.skipif(not (ROOT / "data" / "FashionMNIST" / "raw").is_dir(),
                                reason="run scripts/setup.sh first")


def _params() -> dict:
    params = tiny_params()
    params["data"].update(root=str(ROOT / "data"), limit_train=1024)  # absolute: queued experiments run elsewhere
    params["train"].update(batch_size=64, device="cpu", nproc=1)  # -S sets keys the file has
    params["grid"] = {"variants": [VARIANT], "seeds": [0]}
    params["variants"] = {VARIANT: {**params["variants"][VARIANT], "backbone": TINY_BACKBONE}}
    return params


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=project, env=_env(ENV), check=True, capture_output=True)


def _metrics(project: Path) -> dict:
    return {m: json.loads((project / m).read_text()) for m in METRICS}


@pytest.fixture(scope="module")
def exp(tmp_path_factory: pytest.TempPathFactory) -> dict:
    project = copy_project(tmp_path_factory.mktemp("exp"), _params(), git=True)
    seen: dict = {"project": project}
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "the project")  # as a clone has it (dvclive refuses a repository without commits)
    _dvc(project, "repro", INFER, env=ENV)
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "baseline")
    seen["one"] = _metrics(project)
    ran = _dvc(project, "exp", "run", "-n", "two-procs", "-S", "train.nproc=2", INFER, env=ENV)
    seen["two_output"] = ran.stdout + ran.stderr
    seen["two"] = _metrics(project)
    seen["two_model"] = torch.load(project / "results" / "train" / VARIANT / "seed0" / "model.pt", weights_only=True)

    # kill -9 in the middle of two-process training, then `dvc repro` again
    last = project / "results" / "resume" / VARIANT / "seed0" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-f", "-s", STAGE], cwd=project, env=_env(ENV),
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc, the stage runner, its kernel, torchrun and its workers
    proc.wait()
    seen["killed_with_last"] = last.is_file()
    ran = _dvc(project, "repro", "-f", "-s", STAGE, env=ENV)
    seen["resumed_output"] = ran.stdout + ran.stderr
    seen["resumed_model"] = torch.load(project / "results" / "train" / VARIANT / "seed0" / "model.pt",
                                       weights_only=True)

    _dvc(project, "exp", "run", "-n", "low-lr", "-S", "train.nproc=1", "-S", "train.lr=0.002", INFER, env=ENV)
    seen["show"] = json.loads(_dvc(project, "exp", "show", "--json").stdout)
    return seen


def test_two_processes_through_dvc_agree_with_one(exp: dict) -> None:
    assert "training in 2 processes" in exp["two_output"], exp["two_output"][-3000:]
    one, two = (exp[k][f"metrics/infer/{VARIANT}.json"]["seed0"] for k in ("one", "two"))
    shown = f"1 process {one}, 2 processes {two}"
    for key in ("path_accuracy", "node_accuracy"):
        assert abs(one[key] - two[key]) <= TOL_ACC, shown
    assert min(one["path_accuracy"], two["path_accuracy"]) > 0.3, shown  # both learn: chance is 0.1
    assert exp["two"][f"metrics/train/{VARIANT}.json"]["seed0"]["train_seconds"] > 0


def test_a_killed_two_process_stage_resumes_to_the_same_model(exp: dict) -> None:
    assert exp["killed_with_last"], "training finished before it could be killed"
    assert "resuming after epoch" in exp["resumed_output"], exp["resumed_output"][-3000:]
    done, reference = exp["resumed_model"], exp["two_model"]
    assert done["epoch"] == reference["epoch"] and done["val"] == reference["val"]
    assert all(torch.equal(done["model"][k], reference["model"][k]) for k in reference["model"])
    assert not (exp["project"] / "results" / "resume" / VARIANT).exists()


def _rows(show: list) -> list[tuple[str, dict]]:
    """(name, data) of the baseline and every experiment of `dvc exp show --json`."""
    rows = []
    for entry in show:
        rows.append((entry["rev"], entry))
        for exp in entry.get("experiments") or []:
            rows += [(run.get("name") or run["rev"], run) for run in exp["revs"]]
    return rows


def test_exp_show_has_every_metric_of_every_experiment(exp: dict) -> None:
    rows = _rows(exp["show"])
    names = [name for name, _ in rows]
    assert {"workspace", "two-procs", "low-lr"} <= set(names), names
    for name, row in rows:
        assert row.get("error") is None, (name, row.get("error"))
        data = row["data"]
        metrics = data["metrics"]
        for path in METRICS:
            assert metrics.get(path, {}).get("error") is None, (name, path, metrics.get(path))
            assert metrics[path]["data"]["seed0"], (name, path)
        assert metrics[f"metrics/infer/{VARIANT}.json"]["data"]["seed0"]["path_accuracy"] > 0.1, name
        params = data["params"]["results/check/params.json"]["data"]
        assert params["grid"]["seeds"] == [0], (name, params["grid"])
    lrs = {name: row["data"]["params"]["results/check/params.json"]["data"]["train"]["lr"] for name, row in rows}
    assert lrs["low-lr"] == 0.002 and lrs["two-procs"] == 0.003, lrs
