"""Bad inputs: each one stops with an error that names the file and the problem, before long work.

One table, one test. Each :class:`Case` makes its bad input under ``tmp_path`` (copies only: nothing
in the project is touched), calls the dhnn function that must refuse it, and states the exception
type and the message. ``message`` is the message as a reader sees it; ``…`` stands for any text
(a temp folder, a checksum, a long library detail). Afterwards no half-written file (a name starting
with ``.``) may be left under a ``results`` folder.

A case whose message is not yet clear carries the message it should have and ``xfail``: the test
then xfails (strictly) on the message alone; a wrong exception type, a file left behind or code
run from a checkpoint still fails it.

``python tests/test_bad_inputs.py --write`` writes docs/bad-inputs.md, the table of inputs and messages;
``test_page_is_generated`` keeps that page in sync.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
FMNIST_TREE = ROOT / "taxonomies" / "fashion_mnist.csv"
REAL_RAW = ROOT / "data" / "FashionMNIST" / "raw"
CODE_RAN = "code-ran"  # the file a malicious checkpoint would create when loaded


class MessageMismatch(AssertionError):
    """The right exception, but its message is not the one the table states (what an xfail case expects)."""


@dataclass(frozen=True)
class Case:
    id: str
    input: str                                          # the bad input, for docs/bad-inputs.md
    trigger: Callable[[Path, pytest.MonkeyPatch], Any]  # makes the input under tmp_path and calls dhnn
    error: type[BaseException]
    message: str                                        # "…" matches any text
    xfail: str | None = None                            # why today's message is not yet the right one
    needs_data: bool = False                            # copies the real Fashion-MNIST files

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(".*?".join(re.escape(part) for part in self.message.split("…")), re.DOTALL)


# -- making bad inputs -----------------------------------------------------------------------------

def _set(raw: dict, dotted: str, value: Any) -> None:
    *parents, key = dotted.split(".")
    for p in parents:
        raw = raw[p]
    raw[key] = value


def params_file(tmp: Path, **changes: Any) -> Path:
    """configs/demo.yaml with ``changes`` (dotted key with "." as "__" -> value) as tmp/params.yaml."""
    raw = copy.deepcopy(yaml.safe_load(DEMO.read_text(encoding="utf-8")))
    for dotted, value in changes.items():
        _set(raw, dotted.replace("__", "."), value)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def bad_params(**changes: Any) -> Callable[[Path, pytest.MonkeyPatch], Any]:
    from dhnn.params import load_params

    return lambda tmp, _: load_params(params_file(tmp, **changes))


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def read_taxonomy(name: str, content: str | bytes) -> Callable[[Path, pytest.MonkeyPatch], Any]:
    from dhnn.taxonomy.files import load_taxonomy_file

    return lambda tmp, _: load_taxonomy_file(write(tmp / name, content))


def fmnist_copy(tmp: Path) -> Path:
    """A data root under tmp holding a copy of the real Fashion-MNIST files."""
    shutil.copytree(REAL_RAW, tmp / "data" / "FashionMNIST" / "raw")
    return tmp / "data"


# -- the triggers that need more than a file -------------------------------------------------------

def level_weights_vs_tree(tmp: Path, _: pytest.MonkeyPatch) -> Any:
    from dhnn.params import load_params
    from dhnn.pipeline.taxonomy_stage import check_tree
    from dhnn.taxonomy import Taxonomy

    params = load_params(params_file(tmp, train__level_weights=[1.0, 1.0]))  # the schema alone accepts it
    return check_tree(params, "RNN-Pool-Resi", Taxonomy.from_csv(FMNIST_TREE))


def class_missing_from_tree(tmp: Path, _: pytest.MonkeyPatch) -> Any:
    from dhnn.data.registry import dataset_taxonomy

    root = fmnist_copy(tmp)
    lines = FMNIST_TREE.read_text(encoding="utf-8").splitlines(keepends=True)
    source = write(tmp / "no_bag.csv", "".join(line for line in lines if ",Bag" not in line))
    return dataset_taxonomy({"name": "fashion_mnist", "root": str(root)}, {"source": str(source)})


def data_missing(tmp: Path, _: pytest.MonkeyPatch) -> Any:
    from dhnn.data.fashion_mnist import verify

    return verify(tmp / "data")


def idx_truncated(tmp: Path, _: pytest.MonkeyPatch) -> Any:
    from dhnn.data.fashion_mnist import verify

    root = fmnist_copy(tmp)
    os.truncate(root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte", 1_000_000)  # a download cut short
    return verify(root)


def idx_altered(tmp: Path, _: pytest.MonkeyPatch) -> Any:
    from dhnn.data.fashion_mnist import verify

    root = fmnist_copy(tmp)
    labels = root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[100] = (data[100] + 1) % 10  # one label changed: same size, same header, other bytes
    labels.write_bytes(bytes(data))
    return verify(root)


def jpeg_truncated(tmp: Path, _: pytest.MonkeyPatch) -> Any:
    from PIL import Image

    from dhnn.data.images import check_images

    path = tmp / "images" / "train" / "cat" / "broken.jpg"
    path.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    os.truncate(path, path.stat().st_size // 2)
    return check_images([path])


def class_folder_empty(tmp: Path, _: pytest.MonkeyPatch) -> Any:
    from PIL import Image

    from dhnn.data.folders import scan_folder

    train = tmp / "images" / "train"
    (train / "cat").mkdir(parents=True)
    (train / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(train / "cat" / "a.png")
    return scan_folder(train)


def model_file(tmp: Path, variant: str = "RNN-Pool-Resi", seed: int = 0) -> Path:
    return tmp / "results" / "train" / f"{variant}-seed{seed}" / "model.pt"


def checkpoint_truncated(tmp: Path, _: pytest.MonkeyPatch) -> Any:
    import torch

    from dhnn.training.checkpoint import load_checkpoint, save_checkpoint

    path = model_file(tmp)
    save_checkpoint(path, variant="RNN-Pool-Resi", seed=0, model={"w": torch.zeros(1000)})
    os.truncate(path, path.stat().st_size // 2)
    return load_checkpoint(path)


def checkpoint_of_other_variant(tmp: Path, _: pytest.MonkeyPatch) -> Any:
    import torch

    from dhnn.training.checkpoint import check_run, load_checkpoint, save_checkpoint

    path = model_file(tmp, "S2S-Pool")  # S2S-Pool's folder, RNN-Pool-Resi's weights copied over
    save_checkpoint(path, variant="RNN-Pool-Resi", seed=0, model={"w": torch.zeros(3)})
    return check_run(load_checkpoint(path), path, "S2S-Pool", 0)


class RunsCode:
    """Unpickling this calls open(path, "w"): a checkpoint that would run code when loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return open, (self.path, "w")


def checkpoint_runs_code(tmp: Path, _: pytest.MonkeyPatch) -> Any:
    import torch

    from dhnn.training.checkpoint import load_checkpoint

    path = model_file(tmp)
    path.parent.mkdir(parents=True)
    torch.save({"format": 1, "variant": "RNN-Pool-Resi", "seed": 0, "model": RunsCode(tmp / CODE_RAN)}, path)
    return load_checkpoint(path)


def metrics_of_other_run(tmp: Path, _: pytest.MonkeyPatch) -> Any:
    from dhnn.report.tables import load_grid

    results = tmp / "results"
    for variant in ("RNN-Pool-Resi", "S2S-Pool"):
        train = results / "logs" / variant / "seed0" / "dvclive"
        write(train / "metrics.json", json.dumps({"params": 1000, "conversion_params": 10,
                                                  "conversion_activation_bytes": 64, "train_seconds": 1.5,
                                                  "seconds_per_step": 0.01}))
        write(train / "plots" / "metrics" / "x.tsv", "step\tvalue\n0\t0.5\n1\t0.6\n")
        write(results / "infer" / variant / "seed0" / "metrics.json",
              json.dumps({"variant": "RNN-Pool-Resi", "seed": 0,  # S2S-Pool's file is RNN-Pool-Resi's, copied
                          "path_accuracy": 0.5, "node_accuracy": 0.6, "level_accuracy": [0.9, 0.7, 0.5]}))
    return load_grid(results, ["RNN-Pool-Resi", "S2S-Pool"], [0])


def weights_offline(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import huggingface_hub.constants

    import dhnn.models.backbone as backbone

    # offline with an empty cache, even on a machine that is online or has the weights cached
    monkeypatch.setattr(backbone, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp / "hf-cache"))
    return backbone.Backbone("resnet18", ["layer4"], 3, pretrained=True)


class Stopped(Exception):
    """A command that stopped with an error: what it printed."""


def _command(args: list[str], cwd: Path, stop_when: Path | None = None) -> None:
    """Run ``args`` (in a session of its own, as a terminal runs a command); once ``stop_when`` exists, press
    Ctrl-C (SIGINT to the whole process group). Raises Stopped with its output if it fails."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    if stop_when is not None:
        deadline = time.monotonic() + 120
        while not stop_when.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    if proc.returncode:
        raise Stopped(output)


def train_nan(tmp: Path, _: pytest.MonkeyPatch) -> Any:
    from dhnn.params import load_params
    from dhnn.pipeline import taxonomy_stage, train_stage

    params = load_params(params_file(tmp, train__lr=1.0e6, data__root=str(ROOT / "data"),
                                     taxonomy__source=str(FMNIST_TREE), data__limit_train=512))
    taxonomy_stage.save_taxonomy(taxonomy_stage.build_taxonomy(params), tmp / "results")
    return train_stage.train_variant(params, "RNN-Pool-Resi", [0], tmp / "results", tmp / "metrics")


def ctrl_c_in_training(tmp: Path, _: pytest.MonkeyPatch) -> Any:
    """Ctrl-C at the terminal during the train stage's command (dvc ignores it while a stage runs)."""
    import sys

    from dhnn.params import load_params
    from dhnn.pipeline import taxonomy_stage

    path = params_file(tmp, train__epochs=4, data__root=str(ROOT / "data"), taxonomy__source=str(FMNIST_TREE))
    results = tmp / "results"
    taxonomy_stage.save_taxonomy(taxonomy_stage.build_taxonomy(load_params(path)), results)
    last = results / "resume" / "RNN-Pool-Resi" / "seed0" / "last.pt"
    try:
        _command([sys.executable, "-m", "dhnn.pipeline.run", "notebooks/01_train.ipynb",
                  str(results / "logs" / "RNN-Pool-Resi" / "01_train.ipynb"), "-p", "params_file", str(path),
                  "-p", "results_dir", str(results), "-p", "metrics_dir", str(tmp / "metrics"),
                  "-p", "variant", "RNN-Pool-Resi"], ROOT, stop_when=last)
    except Stopped as err:
        lines = str(err).strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in str(err), str(err)  # one line, no kernel tracebacks
        assert last.is_file()  # what the rerun resumes from
        raise


def params_missing_under_dvc(tmp: Path, _: pytest.MonkeyPatch) -> Any:
    import sys

    shutil.copy(ROOT / "dvc.yaml", tmp / "dvc.yaml")
    _command([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], tmp)
    _command([sys.executable, "-m", "dvc", "repro"], tmp)


def _errors() -> dict[str, type[BaseException]]:
    from dhnn.models.backbone import PretrainedWeightsError
    from dhnn.params import ParamsError
    from dhnn.training.checkpoint import CheckpointError

    return {"params": ParamsError, "checkpoint": CheckpointError, "weights": PretrainedWeightsError}


E = _errors()
SETUP = "run `bash scripts/setup.sh` to fetch Fashion-MNIST"

CASES = [
    # -- params --------------------------------------------------------------------------------
    Case("params-typo", "params: a misspelt key, `data.limit_trian`", bad_params(data__limit_trian=1024),
         E["params"], "params.yaml: data: unknown key 'limit_trian'; did you mean 'limit_train'?"),
    Case("params-type", 'params: a wrong type, `train.epochs: "two"`', bad_params(train__epochs="two"),
         E["params"], "params.yaml: train.epochs: Input should be a valid integer, unable to parse string as an integer"),
    Case("params-range", "params: a value out of range, `train.epochs: -1`", bad_params(train__epochs=-1),
         E["params"], "params.yaml: train.epochs: Input should be greater than 0"),
    Case("params-grid-variant", "params: `grid.variants` names a variant that `variants` does not define",
         bad_params(grid__variants=["RNN-Pool-Resi", "RNN-Pool-Res"]), E["params"],
         "params.yaml: grid.variants: 'RNN-Pool-Res' is not defined under variants; did you mean 'RNN-Pool-Resi'?"),
    Case("params-seed-twice", "params: a seed listed twice, `grid.seeds: [0, 0]`", bad_params(grid__seeds=[0, 0]),
         E["params"], "params.yaml: grid.seeds: listed twice: [0]"),
    Case("params-beam-width", "params: `infer.beam_width: 0`", bad_params(infer__beam_width=0),
         E["params"], "params.yaml: infer.beam_width: Input should be greater than 0"),
    Case("params-level-weights", "params: `train.level_weights` of length 2 for a 3-level taxonomy",
         level_weights_vs_tree, ValueError,
         "params.yaml: train.level_weights: 2 weights, but the taxonomy has 3 levels (one weight w_t per level)"),
    Case("params-conversion-kind", "params: an unknown conversion kind, `conversion: {kind: pooll}`",
         bad_params(**{"variants__RNN-Pool-Resi__conversion__kind": "pooll"}), E["params"],
         "params.yaml: variants.RNN-Pool-Resi.conversion: unknown kind 'pooll'; expected one of 'pool', …"),
    Case("params-data-name", "params: an unknown data set, `data.name: imagenet`", bad_params(data__name="imagenet"),
         E["params"], "params.yaml: data: unknown name 'imagenet'; expected one of 'fashion_mnist', …"),
    Case("params-not-yaml", "params: a file that is not YAML (an unclosed `{`)",
         lambda tmp, _: _load_params(write(tmp / "params.yaml", DEMO.read_text(encoding="utf-8").replace(
             "infer: {beam_width: 2}", "infer: {beam_width: 2"))),
         E["params"], "params.yaml: not valid YAML: …line …"),
    Case("params-missing", "params: no params file", lambda tmp, _: _load_params(tmp / "params.yaml"),
         E["params"], "params.yaml: no such parameter file; restore it with `git checkout params.yaml`, or start "
                      "from a profile: `cp configs/demo.yaml params.yaml` (configs/ holds the others)"),
    Case("params-missing-dvc", "params: no `params.yaml` under `dvc repro` (DVC reads dvc.yaml's `vars`, which "
         "list it, before any stage runs: DVC's message, the fix beside `vars` in dvc.yaml)",
         params_missing_under_dvc, Stopped, "ERROR: failed to parse 'vars' in 'dvc.yaml': 'params.yaml' does not exist"),
    # -- taxonomy ------------------------------------------------------------------------------
    Case("taxonomy-cycle", "taxonomy: a cycle in a parent,child edges CSV",
         read_taxonomy("edges.csv", "parent,child\nclothes,tops\ntops,Shirt\nShirt,clothes\n"),
         ValueError, "edges.csv: the edges form a cycle (parent -> child): clothes -> tops -> Shirt -> clothes"),
    Case("taxonomy-two-parents", "taxonomy: a node with two parents (edges CSV)",
         read_taxonomy("edges.csv", "parent,child\nclothes,tops\ngoods,shoes\ntops,Shirt\nshoes,Shirt\n"),
         ValueError, "edges.csv: line 5: 'Shirt' has two parents, 'tops' and 'shoes'"),
    Case("taxonomy-duplicate-row", "taxonomy: a row repeated in a label-paths CSV",
         read_taxonomy("paths.csv", "level_1,level_2,level_3\nclothes,tops,Shirt\ngoods,shoes,Sandal\n"
                                    "clothes,tops,Shirt\n"),
         ValueError, "paths.csv: line 4: repeats the path of line 2 (clothes / tops / Shirt)"),
    Case("taxonomy-empty", "taxonomy: an empty file", read_taxonomy("taxonomy.csv", ""),
         ValueError, "taxonomy.csv: empty file, expected a header row such as level_1,level_2"),
    Case("taxonomy-not-utf8", "taxonomy: a CSV saved as Latin-1 (non-UTF-8 bytes)",
         read_taxonomy("taxonomy.csv", "level_1,level_2\nclothes,tops\ngoods,Caf\xe9\n".encode("latin-1")),
         ValueError, "taxonomy.csv: not UTF-8 text (byte …); save it as UTF-8"),
    Case("taxonomy-class-missing", "taxonomy: a Fashion-MNIST class (`Bag`) missing from the tree",
         class_missing_from_tree, ValueError, "no_bag.csv: the data set's classes ['Bag'] are not nodes of the taxonomy",
         needs_data=True),
    # -- data ----------------------------------------------------------------------------------
    Case("data-missing", "data: no `data/` folder", data_missing, FileNotFoundError,
         f"data/FashionMNIST/raw: no Fashion-MNIST files there; {SETUP}"),
    Case("data-idx-truncated", "data: a truncated idx file", idx_truncated, ValueError,
         "train-images-idx3-ubyte: 1,000,000 bytes, expected 47,040,016 for shape (60000, 28, 28) "
         f"(truncated or padded); delete data/ and {SETUP}", needs_data=True),
    Case("data-idx-md5", "data: an idx file of the right size with the wrong MD5", idx_altered, ValueError,
         "t10k-labels-idx1-ubyte: md5 … differs from the official file's 15d484375f8d13e6eb1aabb0c3f46965; "
         f"delete data/ and {SETUP}", needs_data=True),
    Case("data-jpeg-truncated", "data: a truncated JPEG in an image folder", jpeg_truncated, ValueError,
         "cat/broken.jpg: not a readable image (…); remove or replace it, or set data.verify_images: false to "
         "skip this check"),
    Case("data-class-folder-empty", "data: an empty class folder", class_folder_empty, FileNotFoundError,
         "train/dog: empty class folder (no files ending in .jpg, …)"),
    # -- stops during training ------------------------------------------------------------------
    Case("train-nan", "training: a loss that turns NaN in the first epoch, `train.lr: 1.0e6`", train_nan,
         FloatingPointError, "RNN-Pool-Resi-seed0: epoch 0, step …: the training loss is nan; stopping (lower "
         "train.lr, or check the data); no checkpoint is kept: no epoch had finished", needs_data=True),
    Case("train-ctrl-c", "training: Ctrl-C during the train stage (one line; rerun `dvc repro` to resume)",
         ctrl_c_in_training, Stopped, "stopped by Ctrl-C: notebooks/01_train.ipynb (…01_train.ipynb): kept the last finished epoch of "
         "seed0 (…/resume/RNN-Pool-Resi/seed0/last.pt); `dvc repro` resumes there", needs_data=True),
    # -- checkpoints and results ---------------------------------------------------------------
    Case("checkpoint-truncated", "checkpoint: a truncated `model.pt`", checkpoint_truncated, E["checkpoint"],
         "RNN-Pool-Resi-seed0/model.pt: not a readable dhnn checkpoint (…); it may be truncated or not a "
         "checkpoint at all; rerun its train stage"),
    Case("checkpoint-other-variant", "checkpoint: another variant's `model.pt` in a run's folder",
         checkpoint_of_other_variant, E["checkpoint"],
         "S2S-Pool-seed0/model.pt: holds run 'RNN-Pool-Resi' seed 0, but this stage is for 'S2S-Pool' seed 0; "
         "rerun `dvc repro` for that run"),
    Case("checkpoint-runs-code", "checkpoint: a pickle that would run code when loaded (`open(…, 'w')`)",
         checkpoint_runs_code, E["checkpoint"],
         "RNN-Pool-Resi-seed0/model.pt: refused: it holds Python objects that loading would run "
         "(…Unsupported global: GLOBAL io.open…); dhnn checkpoints hold only tensors and plain data"),
    Case("results-metrics-other-run", "results: another run's `metrics.json` in a run's infer folder",
         metrics_of_other_run, ValueError,
         "infer/S2S-Pool/seed0/metrics.json: holds run 'RNN-Pool-Resi' seed 0, but it is the file of 'S2S-Pool' "
         "seed 0; rerun that run's infer stage"),
    Case("weights-offline", "model: pretrained weights that can't be downloaded (offline, empty cache)",
         weights_offline, E["weights"],
         "backbone 'resnet18': no pretrained weights (…). Connect to the network (or fill the Hugging Face "
         "cache), or set allow_random_init: true in the variant's backbone to train from scratch"),
]


def _load_params(path: Path) -> Any:
    from dhnn.params import load_params

    return load_params(path)


def _param(case: Case) -> Any:
    marks = []
    if case.xfail:
        marks.append(pytest.mark.xfail(strict=True, raises=MessageMismatch, reason=case.xfail))
    if case.needs_data:
        marks.append(pytest.mark.skipif(not REAL_RAW.is_dir(), reason="run scripts/setup.sh first"))
    return pytest.param(case, id=case.id, marks=marks)


def test_table_is_complete() -> None:
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(case.error) as info:
        case.trigger(tmp_path, monkeypatch)
    # hard checks, xfail or not: nothing half-written under results/, no code run by a checkpoint
    left = [p for p in tmp_path.rglob(".*") if "results" in p.relative_to(tmp_path).parts]
    assert not left, f"half-written files left under results/: {left}"
    assert not (tmp_path / CODE_RAN).exists(), "loading the checkpoint ran code"
    stubs = [p for p in tmp_path.rglob("metrics.json") if p.read_text(encoding="utf-8").strip() == "{}"]
    assert not stubs, f"stub metrics files left: {stubs}"
    message = str(info.value)
    if not case.pattern.search(message):
        raise MessageMismatch(f"message\n  {message!r}\ndoes not match\n  {case.message!r}")


# -- docs/bad-inputs.md ----------------------------------------------------------------------------

def markdown() -> str:
    """docs/bad-inputs.md: one row per case, input -> message."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def code(text: str) -> str:
        return f"`` {text} ``" if "`" in text else f"`{text}`"

    lines = ["# Bad inputs and their messages", "",
             "Each bad input below stops the pipeline with an error that names the file (for params: the file",
             "and the key) and the problem, before long work starts; none leaves a half-written file under",
             "`results/`. Each row is a case of `tests/test_bad_inputs.py`, which asserts the message shown",
             "(`…` stands for any text: a folder, a checksum, a library's detail). This page is generated:",
             "`python tests/test_bad_inputs.py --write` rewrites it from the cases, and the test",
             "`test_page_is_generated` fails when it differs from them.", "",
             "| input | message |", "| --- | --- |"]
    notes = []
    for case in CASES:
        mark = ""
        if case.xfail:
            notes.append(case)
            mark = f" [†{len(notes)}]"
        lines.append(f"| {cell(case.input)} | {cell(code(case.message))}{mark} |")
    if notes:
        lines += ["", "† The message the input should get; today's differs, and its case is an expected failure:", ""]
        lines += [f"{i}. `{case.id}`: {case.xfail}." for i, case in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


PAGE = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"

if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        PAGE.write_text(markdown(), encoding="utf-8")
        print(f"updated {PAGE}")
    else:
        print(markdown(), end="")


def test_page_is_generated() -> None:
    """docs/bad-inputs.md is this file's table (regenerate it with `python tests/test_bad_inputs.py --write`)."""
    page = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else ""
    assert page == markdown(), "docs/bad-inputs.md differs from the cases; run `python tests/test_bad_inputs.py --write`"
