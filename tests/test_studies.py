"""Studies: every study number in README.md and docs/ is generated from its committed record, and a
study runs the real pipeline in a workspace of its own and freezes what it made."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from dhnn.pipeline import study

ROOT = Path(__file__).resolve().parents[1]
RUN_KEYS = {"study", "command", "commit", "params", "params_sha256", "variants", "seeds", "machine",
            "wall_seconds", "peak_memory_mib", "date"}


@pytest.mark.parametrize("page", study.doc_pages(), ids=lambda p: p.name)
def test_study_blocks_in_the_docs_equal_their_records(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert study.generated(text) == text, f"{page}: run `python -m dhnn.pipeline.study --docs`"


@pytest.mark.parametrize("record", sorted((ROOT / "studies").glob("*/run.json")), ids=lambda p: p.parent.name)
def test_each_study_has_its_run_record(record: Path) -> None:
    run = json.loads(record.read_text())
    assert RUN_KEYS <= set(run)
    assert (record.parent / "results.md").is_file() and (record.parent / "params.yaml").is_file()
    assert run["wall_seconds"] > 0 and run["peak_memory_mib"] > 0 and run["machine"]["torch_cpu_capability"]


def test_a_block_is_its_record_and_a_missing_record_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "results.md").write_text("| a |\n|--|\n| 1.00 |\n")
    monkeypatch.setattr(study, "study_dir", lambda name: tmp_path / name)
    page = "before\n<!-- study tiny results.md -->\n| a |\n|--|\n| 9.99 |\n<!-- end study -->\nafter\n"
    assert study.generated(page) == page.replace("9.99", "1.00")
    with pytest.raises(FileNotFoundError, match="other/results.md: no such study record"):
        study.generated("<!-- study other results.md -->\n<!-- end study -->")


def test_a_study_runs_dvc_repro_in_its_workspace_and_freezes_the_report(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    params = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    params["data"].update(limit_train=256, limit_test=128)
    params["train"]["epochs"] = 1
    profile = tmp_path / "study-tiny.yaml"
    profile.write_text(yaml.safe_dump(params))
    monkeypatch.setattr(study, "profile_path", lambda name: profile)
    monkeypatch.setattr(study, "study_dir", lambda name: tmp_path / "studies" / name)
    try:
        out = study.run_study("pytest-tiny")
    finally:
        shutil.rmtree(ROOT / "results" / "studies" / "pytest-tiny", ignore_errors=True)
    run = json.loads((out / "run.json").read_text())
    assert RUN_KEYS <= set(run) and run["variants"] == ["RNN-Pool-Resi"] and run["wall_seconds"] > 0
    assert "RNN-Pool-Resi" in (out / "results.md").read_text()
    assert (out / "reliability.png").stat().st_size > 0 and (out / "params.yaml").read_text() == profile.read_text()
