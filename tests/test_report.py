from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dhnn.report.tables import (
    atomic_write_json,
    atomic_write_text,
    level_table,
    load_runs,
    results_table,
    summary_stats,
    write_table,
)


@pytest.fixture
def runs() -> pd.DataFrame:
    # "cnn_rnn" first on purpose: tables must keep first-appearance order, not sort.
    return pd.DataFrame(
        {
            "variant": ["cnn_rnn", "flat", "cnn_rnn", "flat", "cnn_rnn", "solo"],
            "seed": [0, 0, 1, 1, 2, 0],
            "path_accuracy": [0.70, 0.60, 0.72, 0.62, 0.74, 0.50],
            "node_accuracy": [0.80, 0.70, 0.81, 0.73, 0.83, 0.55],
            "level_accuracy": [[0.9, 0.8], [0.85, 0.7], [0.91, 0.82], [0.86, 0.71], [0.92, 0.81], [0.6, 0.5]],
            "params": [1000, 500, 1000, 500, 1001, 7],
            "train_seconds": [100.0, 50.0, 110.0, 52.0, 120.0, 0.01234],
        }
    )


def test_summary_stats_numbers(runs: pd.DataFrame) -> None:
    stats = summary_stats(runs).set_index("variant")
    assert list(stats.index) == ["cnn_rnn", "flat", "solo"]
    assert stats.loc["cnn_rnn", "seeds"] == 3
    assert stats.loc["cnn_rnn", "path_accuracy_mean"] == pytest.approx(72.0)
    assert stats.loc["cnn_rnn", "path_accuracy_sd"] == pytest.approx(2.0)
    node = [80.0, 81.0, 83.0]
    assert stats.loc["cnn_rnn", "node_accuracy_mean"] == pytest.approx(statistics.mean(node))
    assert stats.loc["cnn_rnn", "node_accuracy_sd"] == pytest.approx(statistics.stdev(node))
    assert stats.loc["flat", "path_accuracy_sd"] == pytest.approx(statistics.stdev([60.0, 62.0]))
    assert np.isnan(stats.loc["solo", "path_accuracy_sd"])  # sample sd undefined for one seed
    assert stats.loc["cnn_rnn", "params_mean"] == pytest.approx(1000 + 1 / 3)


def test_summary_stats_scale(runs: pd.DataFrame) -> None:
    stats = summary_stats(runs, metrics=["path_accuracy"], scale=1.0)
    assert stats.loc[0, "path_accuracy_mean"] == pytest.approx(0.72)
    assert "node_accuracy_mean" not in stats.columns


def test_results_table_formatting(runs: pd.DataFrame) -> None:
    table = results_table(runs)
    assert list(table.columns) == ["variant", "path_accuracy", "node_accuracy", "seeds", "params", "train_seconds"]
    row = table.set_index("variant").loc["cnn_rnn"]
    assert row["path_accuracy"] == "72.00 (2.00)"
    node_sd = statistics.stdev([80.0, 81.0, 83.0])
    assert row["node_accuracy"] == f"81.33 ({node_sd:.2f})"
    assert row["seeds"] == 3
    assert row["params"] == 1000
    assert row["train_seconds"] == "110"
    solo = table.set_index("variant").loc["solo"]
    assert solo["path_accuracy"] == "50.00 (–)"
    assert solo["train_seconds"] == "0.0123"


def test_results_table_digits_and_scale(runs: pd.DataFrame) -> None:
    table = results_table(runs, metrics=["path_accuracy"], scale=1.0, digits=3)
    assert table.loc[0, "path_accuracy"] == "0.720 (0.020)"
    assert "node_accuracy" not in table.columns


def test_results_table_without_extras(runs: pd.DataFrame) -> None:
    table = results_table(runs.drop(columns=["params", "train_seconds"]))
    assert list(table.columns) == ["variant", "path_accuracy", "node_accuracy", "seeds"]


def test_level_table(runs: pd.DataFrame) -> None:
    levels = level_table(runs)
    assert list(levels.columns) == ["variant", "seed", "level", "accuracy"]
    assert len(levels) == 2 * len(runs)
    assert sorted(levels["level"].unique()) == [1, 2]
    first = levels[(levels["variant"] == "cnn_rnn") & (levels["seed"] == 1)]
    assert first["accuracy"].tolist() == pytest.approx([0.91, 0.82])


def _write_run(path: Path, **overrides: object) -> Path:
    record = {
        "variant": "flat",
        "seed": 0,
        "path_accuracy": 0.7,
        "node_accuracy": 0.8,
        "level_accuracy": [0.9, 0.8],
        "params": 123,
    }
    record.update(overrides)
    path.write_text(json.dumps(record))
    return path


def test_load_runs_roundtrip(tmp_path: Path) -> None:
    files = [
        _write_run(tmp_path / "a.json", variant="cnn_rnn", seed=1),
        _write_run(tmp_path / "b.json", variant="flat", seed=0),
    ]
    runs = load_runs(files)
    assert runs["variant"].tolist() == ["cnn_rnn", "flat"]
    assert runs["seed"].tolist() == [1, 0]
    assert runs["level_accuracy"].iloc[0] == [0.9, 0.8]
    assert runs["params"].tolist() == [123, 123]
    assert len(results_table(runs)) == 2


def test_load_runs_missing_key_names_file(tmp_path: Path) -> None:
    good = _write_run(tmp_path / "good.json")
    bad = tmp_path / "no_node.json"
    bad.write_text(json.dumps({"variant": "flat", "seed": 0, "path_accuracy": 0.7, "level_accuracy": []}))
    with pytest.raises(ValueError, match="no_node.json.*node_accuracy"):
        load_runs([good, bad])


def test_load_runs_invalid_json_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_runs([bad])


def test_load_runs_missing_file_names_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_runs([tmp_path / "absent.json"])


def test_write_table(runs: pd.DataFrame, tmp_path: Path) -> None:
    table = results_table(runs)
    csv_path = tmp_path / "out" / "results.csv"
    md_path = tmp_path / "out" / "md" / "results.md"
    write_table(table, csv_path, md_path)

    back = pd.read_csv(csv_path)
    assert back["variant"].tolist() == ["cnn_rnn", "flat", "solo"]
    assert back["path_accuracy"].tolist() == table["path_accuracy"].tolist()

    lines = md_path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("|") and "variant" in lines[0] and "path_accuracy" in lines[0]
    assert set(lines[1]) <= set("|-: ")  # the header separator row
    assert len(lines) == 2 + len(table)
    assert md_path.read_text(encoding="utf-8").endswith("\n")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["md", "results.csv", "results.md"]


def test_atomic_write_text_replaces(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "note.txt"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "second\n")
    assert path.read_text() == "second\n"
    assert [p.name for p in path.parent.iterdir()] == ["note.txt"]


def test_atomic_write_json(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    atomic_write_json(path, {"z": np.float64(0.5), "a": [np.int64(1), 2], "p": tmp_path / "x"})
    text = path.read_text()
    assert text.endswith("}\n")
    assert list(json.loads(text)) == ["z", "a", "p"]  # insertion order, not sorted
    assert json.loads(text)["a"] == [1, 2]
    assert text.startswith('{\n  "z": 0.5')


def _predictions(folder: Path, true: list[str], pred: list[str], scores: list[float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"test_index": range(len(true)), "true path": true, "predicted path": pred, "score": scores}
                 ).to_csv(folder / "predictions.csv", index=False)


def test_evidence_compares_variants_on_the_same_images(tmp_path: Path) -> None:
    from dhnn.report import evidence

    true = ["a / x", "a / y", "b / z", "b / w"] * 50
    for seed in (0, 1):
        _predictions(tmp_path / "infer" / "Flat" / f"seed{seed}", true, ["a / x", "a / x", "b / z", "a / x"] * 50,
                     [0.9, 0.6, 0.8, 0.3] * 50)
        _predictions(tmp_path / "infer" / "RNN" / f"seed{seed}", true, true, [0.95] * 200)
    images = evidence.per_image(tmp_path, ["Flat", "RNN"], [0, 1])
    assert len(images) == 800 and images.groupby("variant")["path_accuracy"].mean().to_dict() == {"Flat": 0.5, "RNN": 1.0}
    assert images[images.variant == "Flat"]["node_accuracy"].mean() == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    compared = evidence.comparisons(images, evidence.default_pairs(["Flat", "RNN"]))
    row = compared[compared.metric == "path_accuracy"].iloc[0]
    assert (row.variant, row.baseline) == ("RNN", "Flat") and row.difference == pytest.approx(50.0)
    assert row.ci_low > 0 and row.verdict.endswith("better")
    metrics = evidence.hierarchical_metrics(images).set_index("variant")
    assert metrics.loc["RNN", "hF1"].startswith("100.00") and metrics.loc["Flat", "severity"].startswith("1.500")


def test_evidence_reads_paths_of_different_depths(tmp_path: Path) -> None:
    """A CNN-S2S path that ends early leaves its deeper prefix probabilities empty in predictions.csv."""
    from dhnn.report import evidence

    folder = tmp_path / "infer" / "S2S" / "seed0"
    folder.mkdir(parents=True)
    pd.DataFrame({"test_index": [0, 1], "true path": ["a / x", "b"], "predicted path": ["a / x", "b"],
                  "score": [0.8, 0.9], "p_level1": [0.9, 0.95], "p_level2": [0.8, None]}
                 ).to_csv(folder / "predictions.csv", index=False)
    images = evidence.per_image(tmp_path, ["S2S"], [0])
    assert np.isnan(images["prefix_probs"][1][1]) and images["path_accuracy"].tolist() == [1.0, 1.0]
    curves = evidence.backoff_curves(images)
    assert curves[curves.tau == 0]["coverage"].iloc[0] == 1.0


def test_default_pairs_cover_the_baseline_and_the_residual_arc() -> None:
    from dhnn.report.evidence import default_pairs

    assert default_pairs(["Flat", "RNN-Pool", "RNN-Pool-Resi"]) == [
        ("RNN-Pool", "Flat"), ("RNN-Pool-Resi", "Flat"), ("RNN-Pool-Resi", "RNN-Pool")]
    assert default_pairs(["RNN-Pool-Resi"]) == []


def test_node_set_comparisons_recompute_f1_and_bootstrap_it(tmp_path: Path) -> None:
    """Multi-label runs: the report recomputes node and path F1 from predictions.csv and compares them with Flat."""
    import torch

    from dhnn.evaluation.metrics import node_f1, path_f1
    from dhnn.report import evidence
    from dhnn.report.tables import run_dirs
    from dhnn.evaluation.scoring import node_set_predictions
    from dhnn.taxonomy import Taxonomy

    tree = Taxonomy.from_paths([["a", "x"], ["a", "y"], ["b", "z"]])  # nodes a, b, x, y, z
    gen = torch.Generator().manual_seed(0)
    original = torch.zeros(300, 5)
    original[torch.arange(300), torch.randint(0, 5, (300,), generator=gen)] = 1.0  # one label, some partial
    targets = original.clone()
    targets[:, 0] += original[:, 2] + original[:, 3]
    targets[:, 1] += original[:, 4]
    expected = {}
    for variant, noise in (("Flat", 0.45), ("RNN", 0.1)):
        for seed in (0, 1):
            scores = (targets + noise * torch.randn(300, 5, generator=gen)).clamp(0, 1)
            table = node_set_predictions(scores, targets, original, tree, 0.5, 0.4)
            folder = run_dirs(tmp_path, variant, seed)[1]
            folder.mkdir(parents=True)
            table.to_csv(folder / "predictions.csv", index_label="test_index")
            expected[variant, seed] = (node_f1(scores, targets, 0.5), path_f1(scores, original, tree, 0.4))
    counts = evidence.node_set_counts(tmp_path, ["Flat", "RNN"], [0, 1])
    assert counts["RNN"]["nodes"] == tree.nodes and counts["RNN"]["node_f1"].shape == (2, 300, 15)
    compared = evidence.node_set_comparisons(counts, evidence.default_pairs(["Flat", "RNN"]), n_boot=500)
    assert compared["metric"].tolist() == ["node_f1", "path_f1"]
    for k, metric in enumerate(("node_f1", "path_f1")):
        row = compared.iloc[k]
        gain = np.mean([expected["RNN", s][k] - expected["Flat", s][k] for s in (0, 1)])
        assert row.difference == pytest.approx(100 * gain) and row.ci_low < row.difference < row.ci_high
        assert row.ci_low > 0 and row.verdict.endswith("better")
    # runs scored on other nodes (a collapsed tree) are not paired: left out, with a warning
    counts["RNN"]["nodes"] = counts["RNN"]["nodes"][:4]
    with pytest.warns(UserWarning, match="RNN vs Flat: scored on different nodes"):
        assert evidence.node_set_comparisons(counts, [("RNN", "Flat")]).empty


def test_node_set_counts_name_a_file_without_the_sets(tmp_path: Path) -> None:
    from dhnn.report import evidence
    from dhnn.report.tables import run_dirs

    folder = run_dirs(tmp_path, "Flat", 0)[1]
    folder.mkdir(parents=True)
    pd.DataFrame({"test_index": [0], "a": [0.5]}).to_csv(folder / "predictions.csv", index=False)
    with pytest.raises(ValueError, match=r"predictions.csv: missing columns .*'true labels'"):
        evidence.node_set_counts(tmp_path, ["Flat"], [0])


def test_bootstrap_of_counts_matches_the_per_image_bootstrap_and_weighted_f1() -> None:
    import torch

    from dhnn.evaluation.bootstrap import paired_bootstrap, paired_bootstrap_counts
    from dhnn.evaluation.metrics import f1_counts, weighted_f1, weighted_f1_of_counts

    rng = np.random.default_rng(0)
    a, b = rng.random((3, 400)), rng.random((3, 400))
    mean = paired_bootstrap_counts(a[..., None], b[..., None], lambda x: x[..., 0] / 400, n_boot=300, seed=5)
    assert mean == pytest.approx(paired_bootstrap(a, b, n_boot=300, seed=5))  # the same resamples
    targets, predicted = rng.random((500, 7)) < 0.3, rng.random((500, 7)) < 0.4
    targets[:, 6] = False  # a node never true: no weight
    counts = f1_counts(targets, predicted)
    assert counts.shape == (500, 21) and counts.dtype == np.uint8
    assert weighted_f1_of_counts(counts.sum(0)) == pytest.approx(weighted_f1(torch.tensor(targets), torch.tensor(predicted)))
    assert weighted_f1_of_counts(np.zeros((2, 21))).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"same non-empty shape \[S, N, K\]"):
        paired_bootstrap_counts(counts[None], counts[None, :10], weighted_f1_of_counts)
