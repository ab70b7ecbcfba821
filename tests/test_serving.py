"""Using a trained model: bundles, k-best paths, prefix probabilities, back-off and `dhnn predict` (CPU)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dhnn import __version__
from dhnn.data.base import HierarchicalTensorDataset, class_targets, make_loader
from dhnn.data.fashion_mnist import MEAN, STD, load
from dhnn.evaluation.inference import predict
from dhnn.models import create_model
from dhnn.paths import project_root, resolve
from dhnn.evaluation.backoff import (PrefixPredictions, backoff, backoff_depth, correct_prefixes, evaluate_backoff,
                                  per_depth, precision_curve, risk_coverage, tau_for_precision)
from dhnn.serving.bundle import BundleError, export_bundle, load_bundle, preprocessing_for
from dhnn.serving.cli import main
from dhnn.serving.images import prepare, read_image
from dhnn.evaluation.prefixes import predict_prefixes, prefix_probs, top_paths_with_prefixes
from dhnn.taxonomy import IGNORE_INDEX, Taxonomy
from dhnn.training.checkpoint import save_checkpoint

TREE = Taxonomy.from_csv(resolve("taxonomies/fashion_mnist.csv"))
# zero_init_last=False: an untrained timm ResNet zero-initialises each block's last BN, flattening the outputs
BACKBONE = {"name": "resnet18", "pretrained": False, "kwargs": {"channels": [8, 16, 32, 64], "zero_init_last": False}}
LEVEL_LAYERS = [["layer4"], ["layer3"], ["layer2", "layer1"]]
CONFIGS = {
    "flat": {"kind": "flat", "backbone": BACKBONE, "layer": "layer4"},
    "rnn": {"kind": "rnn", "backbone": BACKBONE, "level_layers": LEVEL_LAYERS,
            "conversion": {"kind": "pool", "grid": [8, 2, 2], "mode": "max"},
            "rnn": {"hidden_size": 16, "num_layers": 1, "bidirectional": True, "residual": True}},
    "s2s": {"kind": "s2s", "backbone": BACKBONE, "level_layers": LEVEL_LAYERS,
            "conversion": {"kind": "pool", "grid": [8, 1, 1], "mode": "avg"}, "s2s": {"hidden_size": 8}},
}
DATA = {"name": "fashion_mnist", "root": "data"}


def _model(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(CONFIGS[kind], TREE, in_chans=1, image_size=28).eval()


def _checkpoint(path: Path, kind: str = "rnn") -> Path:
    """A model.pt as fit writes it, of an untrained model."""
    save_checkpoint(path, model=_model(kind).state_dict(), epoch=0, val={"path_accuracy": 0.1}, variant=f"{kind}-tiny",
                    seed=0, config=CONFIGS[kind], taxonomy=TREE.to_dict())
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A bundle of a tiny CNN-RNN, PNGs of real Fashion-MNIST test images, and an RGB JPEG of another size."""
    tmp = tmp_path_factory.mktemp("serving")
    bundle = export_bundle(_checkpoint(tmp / "model.pt"), DATA, tmp / "bundles" / "rnn-tiny.dhnn")
    test = load(resolve("data"), train=False)
    folder = tmp / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(test.images[i, 0].numpy(), "L").save(folder / f"{i}.png")
    rgb = np.stack([test.images[3, 0].numpy()] * 3, -1)
    jpeg = tmp / "other.jpg"
    Image.fromarray(rgb, "RGB").resize((45, 60)).save(jpeg, quality=95)
    return {"tmp": tmp, "bundle": bundle, "folder": folder, "jpeg": jpeg, "test": test}


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- bundles ---------------------------------------------------------------------------------------

def test_bundle_round_trip(work: dict) -> None:
    bundle = load_bundle(work["bundle"])
    assert bundle.taxonomy == TREE and not bundle.model.training and not bundle.multilabel
    assert {k: bundle.meta[k] for k in ("dhnn_version", "variant", "seed", "task")} == {
        "dhnn_version": __version__, "variant": "rnn-tiny", "seed": 0, "task": "paths"}
    assert bundle.preprocessing == {"kind": "tensor", "mode": "L", "in_chans": 1, "image_size": 28,
                                    "mean": [MEAN], "std": [STD]}
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(bundle.model(x), _model("rnn")(x))


def test_png_is_prepared_exactly_as_training_images(work: dict) -> None:
    bundle = load_bundle(work["bundle"])
    test = work["test"]
    targets = class_targets(test.classes, TREE)
    data = HierarchicalTensorDataset(test.subset(torch.arange(3)), targets, MEAN, STD, size=28)
    expected, _, _ = data.__getitems__([0, 1, 2])
    got = torch.stack([prepare(read_image(work["folder"] / f"{i}.png", "L"), bundle.preprocessing) for i in range(3)])
    assert torch.equal(got, expected)


def test_transform_preprocessing_of_folder_data() -> None:
    pre = preprocessing_for({"name": "image_folder", "root": "x", "transform": {"resize": 40, "crop": 32}})
    assert (pre["kind"], pre["mode"], pre["in_chans"], pre["image_size"]) == ("transform", "RGB", 3, 32)
    img = Image.new("RGBA", (70, 50), (10, 200, 30, 128))
    assert prepare(img.convert("RGB"), pre).shape == (3, 32, 32)


def test_bad_bundles_are_refused_naming_the_file(work: dict, capsys: pytest.CaptureFixture) -> None:
    tmp = work["tmp"]
    state = torch.load(work["bundle"], weights_only=True)
    torch.save({**state, "dhnn_version": "99.0"}, tmp / "newer.dhnn")
    torch.save({**state, "bundle_format": 7}, tmp / "other.dhnn")
    (tmp / "junk.dhnn").write_bytes(b"not a bundle")
    for name, message in [("newer.dhnn", "made by dhnn 99.0, newer than this dhnn"),
                          ("other.dhnn", "a dhnn bundle of format 7"), ("junk.dhnn", "not a readable dhnn bundle"),
                          ("model.pt", "a training checkpoint, not a bundle"), ("missing.dhnn", "no such bundle")]:
        with pytest.raises(ValueError, match=f"{name}: {message}"):
            load_bundle(tmp / name)
    code, out, err = _run(["predict", "--model", str(tmp / "newer.dhnn"), str(work["jpeg"])], capsys)
    assert code == 2 and out == "" and "newer.dhnn: made by dhnn 99.0, newer than this dhnn" in err


def test_export_refuses_data_settings_the_weights_do_not_fit(work: dict) -> None:
    with pytest.raises(BundleError, match="model.pt: the weights do not fit a 'rnn' model for 3-channel"):
        export_bundle(work["tmp"] / "model.pt", {"name": "cifar100", "root": "data"}, work["tmp"] / "rgb.dhnn")
    assert not (work["tmp"] / "rgb.dhnn").exists()


def test_bundle_command_exports_with_a_params_file(work: dict, capsys: pytest.CaptureFixture) -> None:
    from dhnn.serving.bundle import main as bundle_main

    tmp = work["tmp"]
    params = tmp / "params.yaml"
    params.write_text(json.dumps({"data": DATA, "grid": {"variants": ["flat-tiny"], "seeds": [0]},
                                  "variants": {"flat-tiny": CONFIGS["flat"]}}))  # JSON is YAML
    ckpt = _checkpoint(tmp / "flat.pt", "flat")
    assert bundle_main(["--checkpoint", str(ckpt), "--params", str(params), "--out", str(tmp / "flat.dhnn")]) == 0
    assert load_bundle(tmp / "flat.dhnn").meta["variant"] == "flat-tiny"
    assert bundle_main(["--checkpoint", str(tmp / "nope.pt"), "--params", str(params), "--out", str(tmp / "x")]) == 2
    assert "nope.pt: no checkpoint there" in capsys.readouterr().err


# -- dhnn predict ----------------------------------------------------------------------------------

def _real_path(path: list[str]) -> bool:
    return bool(path) and path[-1] in TREE.leaves and TREE.path(path[-1]) == path


def test_predict_json(work: dict, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _run(["predict", "--model", str(work["bundle"]), "--k", "3", "--json",
                           str(work["folder"]), str(work["jpeg"])], capsys)
    assert code == 0 and err == ""
    records = json.loads(out)
    assert [r["image"] for r in records] == [str(work["folder"] / f"{i}.png") for i in range(3)] + [str(work["jpeg"])]
    for r in records:
        assert set(r) == {"image", "paths", "backoff"} and r["backoff"] is None
        probs = [p["probability"] for p in r["paths"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
        assert all(_real_path(p["path"]) for p in r["paths"])
        assert len({tuple(p["path"]) for p in r["paths"]}) == 3


def test_predict_backoff(work: dict, capsys: pytest.CaptureFixture) -> None:
    image, bundle = str(work["folder"] / "0.png"), str(work["bundle"])

    def predict(tau: float) -> dict:
        code, out, _ = _run(["predict", "--model", bundle, "--json", "--backoff", str(tau), image], capsys)
        assert code == 0
        return json.loads(out)[0]

    full = predict(0.0)
    best, probs = full["paths"][0], full["backoff"]["prefix_probabilities"]
    assert full["backoff"]["path"] == best["path"] and probs == sorted(probs, reverse=True)
    assert math.isclose(probs[-1], best["probability"], rel_tol=1e-5)  # CNN-RNN: the product over the levels
    for tau in [(probs[0] + probs[1]) / 2, (probs[1] + probs[2]) / 2, probs[0] + 1e-4]:
        b = predict(tau)["backoff"]
        assert b["path"] == best["path"][:b["depth"]] and b["probability"] >= tau
        assert b["depth"] == sum(p >= tau for p in probs)
    assert predict(probs[0] + 1e-4)["backoff"]["path"] == []


def test_predict_text(work: dict, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _run(["predict", "--model", str(work["bundle"]), "--k", "2", "--backoff", "1",
                         str(work["jpeg"])], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0] == f"{work['jpeg']}:" and len(lines) == 4
    assert lines[1].startswith("  1. ") and " / " in lines[1] and lines[2].startswith("  2. ")
    assert lines[3] == "  back-off at 1: no decision (level 1 is below tau)"


def test_folder_with_bad_files_skips_them(work: dict, capsys: pytest.CaptureFixture) -> None:
    folder = work["tmp"] / "mixed"
    folder.mkdir()
    (folder / "a_good.png").write_bytes((work["folder"] / "0.png").read_bytes())
    (folder / "b_corrupt.png").write_bytes(b"\x89PNG not really")
    (folder / "c_cut.jpg").write_bytes(work["jpeg"].read_bytes()[:200])
    (folder / "notes.txt").write_text("not an image")
    code, out, err = _run(["predict", "--model", str(work["bundle"]), "--json", str(folder)], capsys)
    assert code == 0 and [r["image"] for r in json.loads(out)] == [str(folder / "a_good.png")]
    assert f"{folder / 'b_corrupt.png'}: not a readable image" in err and f"{folder / 'c_cut.jpg'}: not" in err
    assert err.count("skipped") == 2


def test_bad_image_arguments_exit_2(work: dict, capsys: pytest.CaptureFixture) -> None:
    bundle, tmp = str(work["bundle"]), work["tmp"]
    (tmp / "bad.png").write_bytes(b"nope")
    (tmp / "empty").mkdir()
    (tmp / "empty" / "readme.txt").write_text("no images here")
    for arg, message in [(tmp / "bad.png", "bad.png: not a readable image"),
                         (tmp / "empty", "empty: no .png, .jpg or .jpeg images in this folder"),
                         (tmp / "absent.png", "absent.png: no such file or folder")]:
        code, out, err = _run(["predict", "--model", bundle, str(arg)], capsys)
        assert (code, out) == (2, "") and message in err


def test_dhnn_console_script_in_a_fresh_process(work: dict) -> None:
    script = Path(sys.executable).parent / "dhnn"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "dhnn.serving.cli"]
    done = subprocess.run([*command, "predict", "--model", str(work["bundle"]), "--json", str(work["jpeg"])],
                          capture_output=True, text=True, cwd=project_root(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert _real_path(json.loads(done.stdout)[0]["paths"][0]["path"])


# -- k-best paths and prefix probabilities of each model kind ---------------------------------------

@pytest.mark.parametrize("kind", ["flat", "rnn", "s2s"])
def test_top_paths_agree_with_predict(kind: str) -> None:
    model = _model(kind, seed=1)
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = model(x)
    pred, score = model.predict(outputs, 1) if kind != "flat" else model.predict(outputs)
    indices, scores = model.top_paths(outputs, 1)
    assert torch.equal(indices[:, 0], pred) and torch.allclose(scores[:, 0], score)
    indices, scores, probs = top_paths_with_prefixes(model, x, 4)
    assert indices.shape == (6, 4, 3) and probs.shape == (6, 4, 3)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert all(_real_path(p) for p in TREE.decode(indices.reshape(-1, 3)))
    assert (probs[..., 1:] <= probs[..., :-1] + 1e-6).all()
    if kind == "s2s":  # the path's probability also multiplies in END's
        assert (scores <= probs[..., -1] + 1e-6).all()
    else:
        assert torch.allclose(probs[..., -1], scores, rtol=1e-5)
    if kind == "flat":  # exact marginals: level 1 of clothes is the sum over the clothes leaves
        leaf = outputs.softmax(-1)
        clothes = [i for i, n in enumerate(TREE.leaves) if TREE.path(n)[0] == "clothes"]
        first = indices[:, 0, 0] == TREE.index("clothes")
        expected = torch.where(first, leaf[:, clothes].sum(1), 1 - leaf[:, clothes].sum(1))
        assert torch.allclose(probs[:, 0, 0], expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "s2s"])
def test_predict_prefixes_describe_the_runs_predictions(kind: str, work: dict) -> None:
    test = work["test"]
    data = HierarchicalTensorDataset(test.subset(torch.arange(40)), class_targets(test.classes, TREE), MEAN, STD)
    loader = make_loader(data, 16, shuffle=False, seed=0)
    model, cpu = _model(kind), torch.device("cpu")
    run = predict_prefixes(model, loader, cpu, beam_width=2)
    pred, score, target = predict(model, loader, cpu, 2)
    assert np.array_equal(run.pred, pred.numpy()) and np.array_equal(run.target, target.numpy())
    assert run.prefix_probs.shape == (40, 3) and (run.prefix_probs[:, -1] >= score.numpy() - 1e-6).all()
    assert run.correct.shape == (40, 3)


def test_flat_top_paths_pad_past_the_leaves() -> None:
    model = _model("flat")
    with torch.no_grad():
        indices, scores = model.top_paths(model(torch.randn(2, 1, 28, 28)), 12)
        probs = prefix_probs(model, model(torch.randn(2, 1, 28, 28)), indices)
    assert (indices[:, 10:] == IGNORE_INDEX).all() and (scores[:, 10:] == 0).all() and probs[:, 10:].isnan().all()


# -- back-off on hand-made inputs ------------------------------------------------------------------

PROBS = np.array([[0.9, 0.8, 0.7], [0.6, 0.3, np.nan], [0.4, 0.2, 0.1]])
CORRECT = np.array([[True, True, True], [True, False, False], [False, False, False]])


def test_correct_prefixes_and_backoff() -> None:
    pred = np.array([[0, 1, 2], [0, 1, IGNORE_INDEX], [1, 0, 0]])
    target = np.array([[0, 1, 2], [0, 2, 3], [0, 0, 0]])
    assert (correct_prefixes(pred, target) == CORRECT).all()
    assert backoff_depth(PROBS, 0.5).tolist() == [3, 1, 0]
    assert backoff(PROBS[1], 0.5, ["a", "b"]) == (["a"], 0.6)
    assert backoff(PROBS[1], 0.0, ["a", "b"]) == (["a", "b"], 0.3)
    assert backoff(PROBS[2], 0.5, ["a", "b", "c"]) == ([], 1.0)


def test_risk_coverage_and_per_depth() -> None:
    table = risk_coverage(CORRECT, PROBS, [0.0, 0.5, 0.95]).set_index("tau")
    assert table.loc[0.0].tolist() == pytest.approx([1.0, 2 / 3, 8 / 3])  # everything, at full depth
    assert table.loc[0.5].tolist() == pytest.approx([2 / 3, 0.0, 2.0])
    assert table.loc[0.95, "coverage"] == 0 and math.isnan(table.loc[0.95, "risk"])
    depth = per_depth(CORRECT, PROBS, 0.5)
    assert depth["coverage"].tolist() == pytest.approx([1 / 3, 1 / 3, 0, 1 / 3])
    assert depth["accuracy"].tolist()[1::2] == [1.0, 1.0]


def test_tau_for_precision_reaches_the_target() -> None:
    assert tau_for_precision(CORRECT, PROBS, 1.0) == 0.6
    assert tau_for_precision(CORRECT, PROBS, 0.6) == 0.4
    assert tau_for_precision(CORRECT, PROBS, 0.0) == 0.1
    assert tau_for_precision(np.zeros((3, 3), bool), PROBS, 0.5) == math.inf
    # random inputs: the sweep agrees with risk_coverage at every tau, and the chosen tau is the smallest
    rng = np.random.default_rng(0)
    probs = np.sort(rng.random((200, 3)), axis=1)[:, ::-1].round(2)
    probs[rng.random(200) < 0.2, 2] = np.nan
    correct = np.logical_and.accumulate(rng.random((200, 3)) < 0.8, axis=1) & ~np.isnan(probs)
    curve = precision_curve(correct, probs)
    slow = risk_coverage(correct, probs, curve["tau"])
    assert np.allclose(curve["answered"] / 200, slow["coverage"])
    assert np.allclose(curve["correct"] / curve["answered"], 1 - slow["risk"])
    tau = tau_for_precision(correct, probs, 0.9)
    reached = risk_coverage(correct, probs, [tau])["risk"].iloc[0]
    assert 1 - reached >= 0.9 and (1 - slow["risk"][curve["tau"] < tau] < 0.9).all()


def test_evaluate_backoff_picks_tau_on_validation() -> None:
    pred = np.array([[0, 1, 2], [0, 1, IGNORE_INDEX], [1, 0, 0]])
    target = np.array([[0, 1, 2], [0, 2, 3], [0, 0, 0]])
    run = PrefixPredictions(pred, PROBS, target)
    result = evaluate_backoff(run, run, target_precision=1.0)
    assert result["tau"] == 0.6 and result["test_precision"] == 1.0
    assert (result["test_coverage"], result["test_mean_depth"]) == pytest.approx((2 / 3, 2.0))
    assert len(result["risk_coverage"]) == 101 and result["per_depth"]["coverage"].sum() == pytest.approx(1.0)
