"""scripts/gpu_check.sh in its tiny mode (--tiny, so tiny on a GPU machine too): exit code and the JSON."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
PARTS = ("speed", "beam_search", "accuracy")


def number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    out = tmp_path_factory.mktemp("gpu_check") / "check.json"
    # run from another folder: the script finds the project itself
    result = subprocess.run([str(SCRIPT), str(out), "--tiny"], capture_output=True, text=True, timeout=120,
                            cwd=out.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads(out.read_text(encoding="utf-8")), out


def test_script_is_executable() -> None:
    assert os.access(SCRIPT, os.X_OK)


def test_top_level(tiny_run) -> None:
    result, report, out = tiny_run
    assert report["schema_version"] == 1
    assert report["mode"] == "tiny"
    assert report["complete"] is True
    assert report["skipped"] == []
    assert "--tiny" in report["argv"]
    for key in ("torch_version", "python_version", "started_at"):
        assert isinstance(report[key], str) and report[key], key
    assert isinstance(report["device"]["name"], str) and report["device"]["type"] in ("cpu", "cuda", "mps")
    assert number(report["budget_s"]) and report["budget_s"] == 420
    assert number(report["total_wall_s"]) and 0 < report["total_wall_s"] < report["budget_s"]
    for part in PARTS:
        assert report[part]["status"] == "ok", (part, report[part])
        assert number(report[part]["wall_s"]) and isinstance(report[part]["settings"], dict)
    # the printed summary names each measurement and the file
    for text in ("gpu_check (tiny)", "speed (resnet18, 32 px, batch 8", "beam search (600 leaves, depth 4, k=5",
                 "accuracy (Fashion-MNIST", f"wrote {out}"):
        assert text in result.stdout, result.stdout


def test_speed(tiny_run) -> None:
    _, report, _ = tiny_run
    speed = report["speed"]
    st = speed["settings"]
    assert (st["backbone"], st["backbone_kwargs"], st["image_size"], st["batch_size"]) == (
        "resnet18", {"channels": [16, 32, 64, 128]}, 32, 8)
    assert st["channels_last"] is True and st["level_sizes"] == [2, 6, 10]
    assert set(speed["variants"]) == {"flat", "rnn", "s2s"}
    for key, row in speed["variants"].items():
        assert row["kind"] == key and row["status"] == "ok" and isinstance(row["name"], str)
        assert isinstance(row["parameters"], int) and row["parameters"] > 0
        assert len(row["rounds_images_per_s"]) == st["rounds"]
        assert all(number(x) and x > 0 for x in row["rounds_images_per_s"] + row["rounds_s"])
        assert number(row["images_per_s"]) and number(row["seconds_per_step"]) and row["images_per_s"] > 0
    assert speed["variants"]["s2s"]["config"]["collapse_chains"] is True
    assert set(speed["ratios"]) == {"rnn", "s2s"} and all(number(r) and r > 0 for r in speed["ratios"].values())
    flat = speed["variants"]["flat"]["images_per_s"]
    assert speed["ratios"]["rnn"] == pytest.approx(speed["variants"]["rnn"]["images_per_s"] / flat)
    best = max(speed["ratios"], key=speed["ratios"].get)
    assert speed["best_dhnn"] == best
    assert report["ratio_dhnn_over_flat"] == speed["ratios"][best]
    assert report["best_dhnn"] == speed["variants"][best]["name"]
    assert report["goal"] == {"ratio_dhnn_over_flat_at_least": 0.9,
                              "met": report["ratio_dhnn_over_flat"] >= 0.9}


def test_beam_search(tiny_run) -> None:
    _, report, _ = tiny_run
    beam = report["beam_search"]
    st = beam["settings"]
    assert (st["leaves"], st["depth"], st["beam_width"], st["level_sizes"][-1]) == (600, 4, 5, 600)
    assert number(beam["samples_per_s"]) and beam["samples_per_s"] > 0
    assert len(beam["seconds"]) == st["repeats"] and all(number(x) for x in beam["seconds"])
    assert number(beam["cpu"]["samples_per_s"]) and number(beam["speedup_over_cpu"])
    check = beam["check_against_cpu"]
    assert check["ok"] is True and check["all_paths_valid"] is True and number(check["max_rel_prob_diff"])
    assert 0.0 <= check["same_paths_fraction"] <= 1.0


def test_accuracy(tiny_run) -> None:
    _, report, _ = tiny_run
    acc = report["accuracy"]
    st = acc["settings"]
    assert st["params"] == "configs/demo.yaml"
    assert st["data"]["limit_train"] == 256 and st["train"]["epochs"] == 1
    assert acc["train_images"] == 256 and isinstance(acc["test_images"], int)
    assert 0.0 <= acc["test_path_accuracy"] <= 1.0 and number(acc["test_path_accuracy"])
    assert 0.0 <= acc["test_node_accuracy"] <= 1.0
    assert len(acc["test_level_accuracy"]) == 3
    assert len(acc["history"]) == 1 and number(acc["history"][0]["val/path_accuracy"])
    for key in ("train_s", "test_s", "run_s", "wall_s"):
        assert number(acc[key]) and acc[key] > 0, key
