"""The training loop: reproducibility, checkpoints and the config helpers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dhnn.data.base import HierarchicalTensorDataset, ImageSet, class_targets, make_loader
from dhnn.evaluation.inference import predict
from dhnn.models import create_model
from dhnn.params import ParamsError, load_params
from dhnn.paths import project_root, resolve, run_name
from dhnn.tasks import get_task
from dhnn.taxonomy import Taxonomy
from dhnn.training.checkpoint import CheckpointError, check_run, load_checkpoint, save_checkpoint
from dhnn.training.loop import fit, seed_everything

TREE = Taxonomy.from_csv("taxonomies/fashion_mnist.csv")
CFG = {"kind": "rnn", "backbone": {"name": "resnet18", "pretrained": False, "kwargs": {"channels": [8, 8, 8, 8]}},
       "level_layers": [["layer4"], ["layer3"], ["layer2", "layer1"]],
       "conversion": {"kind": "pool", "grid": [4, 2, 2], "mode": "max"},
       "rnn": {"hidden_size": 8, "num_layers": 1, "bidirectional": True, "residual": True}}


def _loaders():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(48) % 10
    classes = TREE.leaves
    ds = HierarchicalTensorDataset(ImageSet(images, labels, classes), class_targets(classes, TREE), 0.5, 0.5)
    return make_loader(ds, 16, True, 0), make_loader(ds, 48, False, 0)


def _train(tmp_path: Path, seed: int, epochs: int = 2, lr: float = 1e-2) -> tuple[list[dict], torch.Tensor]:
    seed_everything(seed)
    model = create_model(CFG, TREE, 1, 28)
    train, val = _loaders()
    history = fit(model, train, val, task=get_task("paths"), epochs=epochs, lr=lr, weight_decay=0.0,
                  level_weights=[1, 1, 1], beam_width=2, device=torch.device("cpu"), out_dir=tmp_path,
                  run_info={"variant": "v", "seed": seed}, fingerprint="f", progress=False)
    return history, predict(model, val, torch.device("cpu"), 2)[1]


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    h1, s1 = _train(tmp_path, 3)
    h2, s2 = _train(tmp_path, 3)
    assert [r["train/loss"] for r in h1] == [r["train/loss"] for r in h2]
    assert torch.equal(s1, s2)
    h3, _ = _train(tmp_path, 4)
    assert [r["train/loss"] for r in h1] != [r["train/loss"] for r in h3]


def test_checkpoint_keeps_best_epoch_and_restores(tmp_path: Path) -> None:
    history, _ = _train(tmp_path, 0)
    ckpt = load_checkpoint(tmp_path / "model.pt")
    best = max(range(len(history)), key=lambda i: (history[i]["val/path_accuracy"], -i))
    assert ckpt["epoch"] == best and ckpt["seed"] == 0
    model = create_model(CFG, TREE, 1, 28)
    model.load_state_dict(ckpt["model"])
    # no temp files, and no resume state once the run is complete
    assert list(tmp_path.iterdir()) == [tmp_path / "model.pt"]


def test_save_checkpoint_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(Exception):
        save_checkpoint(tmp_path / "bad.pt", fn=lambda: None)  # lambdas can't be pickled
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (Path("ran").touch, ())  # what os.system would do: a side effect on load

    torch.save({"format": 1, "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt: refused: it holds Python objects that loading would run"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not Path("ran").exists()


def test_a_truncated_checkpoint_names_the_file(tmp_path: Path) -> None:
    _train(tmp_path, 0)
    data = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable dhnn checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    _train(tmp_path, 0)
    state = load_checkpoint(tmp_path / "model.pt")
    check_run(state, tmp_path / "model.pt", "v", 0)
    with pytest.raises(CheckpointError, match="holds run 'v' seed 0, but this stage is for 'Flat' seed 0"):
        check_run(state, tmp_path / "model.pt", "Flat", 0)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FloatingPointError, match="the training loss is (nan|inf)"):
        _train(tmp_path, 0, epochs=3, lr=1e30)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no half-written file


def test_an_interrupted_fit_resumes_to_the_same_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped after epoch 1 of 3 and restarted ends exactly where an uninterrupted run ends (CPU)."""
    full, full_scores = _train(tmp_path / "full", 5, epochs=3)
    real_evaluate, calls = get_task("paths").evaluate, []

    class Crash(Exception):
        pass

    def evaluate_then_crash(*args, **kwargs):  # dies after epoch 1's checkpoint, like kill -9 would
        if len(calls) == 2:
            raise Crash
        calls.append(1)
        return real_evaluate(*args, **kwargs)

    task = get_task("paths")
    monkeypatch.setattr(type(task), "evaluate", lambda self, *a, **k: evaluate_then_crash(*a, **k))
    with pytest.raises(Crash):
        _train(tmp_path / "cut", 5, epochs=3)
    assert (tmp_path / "cut" / "last.pt").is_file()
    monkeypatch.setattr(type(task), "evaluate", lambda self, *a, **k: real_evaluate(*a, **k))
    resumed, resumed_scores = _train(tmp_path / "cut", 5, epochs=3)
    assert [r["train/loss"] for r in resumed] == [r["train/loss"] for r in full]
    assert torch.equal(resumed_scores, full_scores)
    assert not (tmp_path / "cut" / "last.pt").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        load_checkpoint(tmp_path / "nope.pt")


def test_config_helpers(tmp_path: Path) -> None:
    assert (project_root() / "dvc.yaml").is_file()
    assert resolve("params.yaml") == project_root() / "params.yaml"
    assert run_name("RNN-Pool-Resi", 2) == "RNN-Pool-Resi-seed2"
    params = load_params("configs/demo.yaml")
    assert set(params.grid.variants) <= set(params.variants)
    bad = tmp_path / "p.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ParamsError, match="p.yaml: not valid YAML"):
        load_params(bad)


def test_alt_schedule_phases() -> None:
    from dhnn.training.loop import alt_phase

    # the authors' test is `epoch > alt1`: with alt1=3, epochs 0-3 train the head alone
    assert [alt_phase(e, {"alt1": 3, "alt2": 6}) for e in range(6)] == ["head"] * 4 + ["joint"] * 2
    assert [alt_phase(e, {"alt1": 6, "alt2": 2}) for e in range(8)] == ["head", "head", "joint", "joint", "head",
                                                                       "head", "joint", "joint"]
    assert alt_phase(0, None) == "joint"


def test_alt_freezes_exactly_the_cnn(tmp_path: Path) -> None:
    from dhnn.training.loop import make_optimizer, train_one_epoch

    seed_everything(0)
    model = create_model(CFG, TREE, 1, 28)
    train, _ = _loaders()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer, _ = make_optimizer(model, 1e-2, 0.05, 1, len(train))
    train_one_epoch(model, train, optimizer, None, torch.device("cpu"), [1, 1, 1], 0,
                    freeze_backbone=True)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(not n.startswith("backbone.") for n in changed)
    assert {n for n, _ in model.named_parameters() if not n.startswith("backbone.")} == changed
    bn_stats = {n: b.clone() for n, b in model.backbone.named_buffers()}
    train_one_epoch(model, train, optimizer, None, torch.device("cpu"), [1, 1, 1], 1,
                    freeze_backbone=False)
    assert any(not torch.equal(b, bn_stats[n]) for n, b in model.backbone.named_buffers())
    assert all(p.requires_grad for p in model.parameters())


def test_level_weight_schedule() -> None:
    from dhnn.training.loop import level_weights_at

    assert level_weights_at([1, 2, 3], 5, 10) == [1, 2, 3]
    ramp = {"start": [1.0, 1.0, 0.0], "end": [0.0, 1.0, 1.0]}
    assert level_weights_at(ramp, 0, 3) == [1.0, 1.0, 0.0]
    assert level_weights_at(ramp, 1, 3) == [0.5, 1.0, 0.5]
    assert level_weights_at(ramp, 2, 3) == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="start has 2"):
        level_weights_at({"start": [1, 1], "end": [1, 1, 1]}, 0, 2)
