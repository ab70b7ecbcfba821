"""Data-parallel training (DDP) on the CPU with gloo: 2 processes against 1, the same data and global batch.

Both runs read the same seeded permutation of 4,096 Fashion-MNIST training images in global batches
of 64 (2 x 32 under DDP), train a tiny CNN-RNN (BatchNorm, like every variant of params.yaml) for
2 epochs and are scored on the same 1,024 validation images.

Tolerance: the final validation path and node accuracy agree within ``TOL_ACC`` = 0.06 (absolute),
the final train loss within ``TOL_LOSS`` = 20 % (relative). Exact agreement is not expected: under
DDP each process normalises with the BatchNorm statistics of its own half batch, and even without
BatchNorm (GroupNorm) the different order of floating-point sums grows over 128 Adam steps.
Measured with this setup over seeds 0-9 (on 2 cores): at most 0.030 in path accuracy (mean 0.015;
seed 0, the test's: 0.014), 0.018 in node accuracy (seed 0: 0.006) and 10 % in the final train
loss (seed 0: 0.03 %), while the path accuracy of 1 process alone ranges 0.58-0.73 across those seeds.

The processes are started by torchrun, meet on the loopback interface only (MASTER_ADDR
127.0.0.1 and a free port that torchrun picks there, ``GLOO_SOCKET_IFNAME=lo``) and use one thread
each.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from dhnn.params import load_params
from dhnn.pipeline import layout, train_stage
from dhnn.taxonomy import Taxonomy
from dhnn.training.checkpoint import load_checkpoint
from dhnn.training.distributed import Dist, distributed_loader, setup

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SEED = 0
VARIANT = "bn"
TOL_ACC = 0.06   # absolute, validation path and node accuracy
TOL_LOSS = 0.2   # relative, train loss

needs_data = pytest.mark.skipif(not (DATA / "FashionMNIST" / "raw").is_dir(), reason="run scripts/setup.sh first")

PARAMS = """\
data: {{name: fashion_mnist, root: {data}, val_fraction: 0.1, split_seed: 0,
       limit_train: 4096, limit_val: 1024, limit_test: 64}}
taxonomy: {{source: {taxonomy}}}
train: {{epochs: 2, batch_size: 64, lr: 0.003, weight_decay: 0.05, level_weights: [1.0, 1.0, 1.0],
        device: cpu, nproc: {nproc}}}
runtime: {{progress: true, num_workers: 0, eval_batch_size: 1024}}
infer: {{beam_width: 2}}
grid: {{variants: [bn], seeds: [{seed}]}}
variants:
  bn:
    kind: rnn
    backbone: {{name: resnet18, pretrained: false, kwargs: {{channels: [8, 8, 8, 8]}}}}
    level_layers: [[layer4], [layer3], [layer2, layer1]]
    conversion: {{kind: pool, grid: [4, 2, 2], mode: max}}
    rnn: {{hidden_size: 8, num_layers: 1, bidirectional: true, residual: true}}
"""

# What every torchrun process runs: the run, each rank into its own folder (so that a file written
# by rank 1 would show), then the same run stopped after epoch 0 on every rank, as a kill would
# stop it, and restarted in the same processes.
WORKER = textwrap.dedent("""\
    import json, sys
    from pathlib import Path
    from dhnn.params import load_params
    from dhnn.pipeline import train_stage
    from dhnn.training import loop
    from dhnn.training.distributed import cleanup, setup

    params_file, taxonomy, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    params = load_params(params_file)
    variant, seed = params.grid.variants[0], params.grid.seeds[0]
    dist = setup(params.train.device)


    class Stop(Exception):
        pass


    def train(variant, folder):
        run = train_stage.prepare_training(params, variant, seed, taxonomy)
        return train_stage.train_in_process(run, params, out / folder / f"rank{dist.rank}", dist)


    try:
        result = {"full": train(variant, "full")}
        train_one_epoch = loop.train_one_epoch

        def stop_before_epoch_1(*args, **kwargs):
            if args[6] == 1:  # the epoch; every rank stops here, after epoch 0's last.pt
                raise Stop
            return train_one_epoch(*args, **kwargs)

        loop.train_one_epoch = stop_before_epoch_1
        try:
            train(variant, "resumed")
        except Stop:
            pass
        loop.train_one_epoch = train_one_epoch
        result["last_pt_left"] = (out / "resumed" / "rank0" / "last.pt").is_file()
        result["resumed"] = train(variant, "resumed")
        if dist.is_main:
            (out / "result.json").write_text(json.dumps(result))
    finally:
        cleanup()
""")


def _params(tmp: Path, nproc: int = 1) -> Path:
    path = tmp / f"params{nproc}.yaml"
    path.write_text(PARAMS.format(data=DATA, taxonomy=ROOT / "taxonomies" / "fashion_mnist.csv", nproc=nproc,
                                  seed=SEED), encoding="utf-8")
    return path


def _env() -> dict:
    # PYTHONPATH: the worker script lives in a temp folder, and must import this checkout's dhnn, not an installed one
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def _torchrun(nproc: int, *args: str) -> list[str]:
    """torchrun on one machine as the train stage starts it: MASTER_ADDR 127.0.0.1, a free MASTER_PORT."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--rdzv-backend=c10d",
            "--rdzv-endpoint=127.0.0.1:0", f"--rdzv-id=test-{os.getpid()}", "--local-addr=127.0.0.1",
            f"--nproc_per_node={nproc}", *args]


def _final(history: list[dict]) -> dict:
    return {k: history[-1][k] for k in ("train/loss", "val/path_accuracy", "val/node_accuracy")}


def _numbers(history: list[dict] | pd.DataFrame) -> list[dict]:
    """The history without its wall-clock times."""
    rows = history.to_dict("records") if isinstance(history, pd.DataFrame) else history
    return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The run trained by 2 processes (torchrun), stopped and resumed by them, and trained by 1 (here)."""
    tmp = tmp_path_factory.mktemp("ddp")
    params_file = _params(tmp)
    taxonomy = tmp / "taxonomy.json"
    Taxonomy.from_csv(ROOT / "taxonomies" / "fashion_mnist.csv").save(taxonomy)
    (tmp / "worker.py").write_text(WORKER, encoding="utf-8")
    job = subprocess.run(_torchrun(2, str(tmp / "worker.py"), str(params_file), str(taxonomy), str(tmp / "two")),
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    two = json.loads((tmp / "two" / "result.json").read_text())
    params = load_params(params_file)
    run = train_stage.prepare_training(params, VARIANT, SEED, taxonomy)
    one = train_stage.train_in_process(run, params, tmp / "one", Dist())  # the same loader code, a world of 1
    return {"tmp": tmp, "one": one, "two": two, "output": job.stdout + job.stderr}


@needs_data
def test_two_processes_agree_with_one(runs: dict) -> None:
    """The final validation accuracies within TOL_ACC, the final train loss within TOL_LOSS (see above)."""
    one, two = _final(runs["one"]), _final(runs["two"]["full"])
    shown = f"1 process {one}, 2 processes {two}"
    assert abs(one["val/path_accuracy"] - two["val/path_accuracy"]) <= TOL_ACC, shown
    assert abs(one["val/node_accuracy"] - two["val/node_accuracy"]) <= TOL_ACC, shown
    assert abs(one["train/loss"] - two["train/loss"]) <= TOL_LOSS * one["train/loss"], shown
    assert min(one["val/path_accuracy"], two["val/path_accuracy"]) > 0.5  # both learn: chance is 0.1


@needs_data
def test_only_rank_0_writes(runs: dict) -> None:
    folder = runs["tmp"] / "two" / "full"
    assert sorted(p.name for p in folder.iterdir()) == ["rank0"]  # rank 1 wrote nothing, not even its folder
    assert sorted(p.name for p in (folder / "rank0").iterdir()) == ["dvclive", "model.pt"]
    ckpt = load_checkpoint(folder / "rank0" / "model.pt")
    assert (ckpt["variant"], ckpt["seed"]) == (VARIANT, SEED)
    assert sorted(p.name for p in (runs["tmp"] / "two" / "resumed").iterdir()) == ["rank0"]
    # one progress line per epoch, rank 0's alone (two printing ranks would double them)
    lines = re.findall(r"^(\S+): epoch", runs["output"], re.MULTILINE)
    assert lines == [f"{VARIANT}-seed{SEED}"] * (2 + 1 + 1), runs["output"][-2000:]  # the run, stopped after 1, resumed for 1


@needs_data
def test_a_stopped_ddp_run_resumes_to_the_same_numbers(runs: dict) -> None:
    """Every rank stops after epoch 0; restarted, rank 0 reads last.pt and sends it to rank 1 (whose folder has
    none), and the run ends exactly as the uninterrupted one."""
    assert runs["two"]["last_pt_left"]
    assert _numbers(runs["two"]["resumed"]) == _numbers(runs["two"]["full"])
    assert "resuming after epoch 0" in runs["output"]
    assert not (runs["tmp"] / "two" / "resumed" / "rank0" / "last.pt").exists()


@needs_data
def test_the_train_stage_launches_torchrun_with_train_nproc(runs: dict, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """train.nproc: 2 makes train_stage.train run torchrun; the history comes back as one process returns it."""
    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    params = load_params(_params(tmp_path, nproc=2))
    run = train_stage.prepare_training(params, VARIANT, SEED, runs["tmp"] / "taxonomy.json")
    out, logs, last = (tmp_path / "train" / f"{VARIANT}-seed{SEED}", tmp_path / "logs" / f"{VARIANT}-seed{SEED}",
                       tmp_path / "resume" / "last.pt")
    history = train_stage.train(run, params, out, last_file=last, logs=logs)  # as train_variant calls it
    assert isinstance(history, pd.DataFrame) and list(history.columns) == list(pd.DataFrame(runs["one"]).columns)
    assert _numbers(history) == _numbers(runs["two"]["full"])  # the worker's job, bit for bit
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]  # no history.json left
    assert last.is_file()  # the resume file, where the stage keeps it until every seed is done
    summary = json.loads((logs / "dvclive" / "metrics.json").read_text())
    assert summary["best_epoch"] in (0, 1) and summary["params"] == run.parameters


def test_no_worker_option_abbreviates_a_torchrun_option() -> None:
    """torchrun parses the script's options too: one that abbreviates its own (--logs, --logs-specs) is taken."""
    from torch.distributed.run import get_args_parser

    from dhnn.pipeline.ddp_train import parser

    theirs = [o for a in get_args_parser()._actions for o in a.option_strings]
    ours = [o for a in parser()._actions for o in a.option_strings if o not in ("-h", "--help")]
    assert ours and not [(o, t) for o in ours for t in theirs if t.startswith(o)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_data
def test_two_machines_of_one_process_each(runs: dict, tmp_path: Path) -> None:
    """The several-machines command of docs/scaling.md, as 2 nodes x 1 process on loopback: rank 0 (node 0)
    writes the run, and the numbers are those of 2 processes on one node, bit for bit."""
    (tmp_path / "taxonomy").mkdir()
    (tmp_path / "taxonomy" / "taxonomy.json").write_bytes((runs["tmp"] / "taxonomy.json").read_bytes())
    params, port = _params(tmp_path), _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                               "--nproc_per_node", "1", "--rdzv_endpoint", f"127.0.0.1:{port}",
                               "--local-addr=127.0.0.1", "-m", "dhnn.pipeline.ddp_train", "--params", str(params),
                               "--variant", VARIANT, "--seed", str(SEED), "--results", str(tmp_path)],
                              cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    out = layout.train_dir(tmp_path, VARIANT, SEED)
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "model.pt"]
    assert (layout.log_dir(tmp_path, VARIANT, SEED) / "dvclive" / "metrics.json").is_file()
    history = json.loads((out / "history.json").read_text())
    assert _numbers(history) == _numbers(runs["two"]["full"])
    assert "epoch 2/2" in outputs[0] and "epoch" not in outputs[1]  # node 1's rank prints nothing


def test_a_failed_job_raises_with_the_workers_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What torchrun prints when a worker fails, from a stand-in for Python: the error names the worker's exception."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n"
                    "echo 'RNN-seed0: epoch 1/2  loss 2.0000'\n"
                    "echo '[rank1]: Traceback (most recent call last):'\n"
                    "echo '[rank1]:   File \"dhnn/training/loop.py\", line 84, in train_one_epoch'\n"
                    "echo '[rank1]: FloatingPointError: epoch 1, step 3: the training loss is nan; stopping'\n"
                    "echo 'torch.distributed.elastic.multiprocessing.errors.ChildFailedError: '\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    params = load_params(_params(tmp_path, nproc=2))
    run = SimpleNamespace(variant="RNN", seed=0, tree=Taxonomy.from_csv(ROOT / "taxonomies" / "fashion_mnist.csv"),
                          full_tree=None)
    with pytest.raises(RuntimeError, match=r"^RNN-seed0: distributed training in 2 processes failed \(exit 1\): "
                                           r"FloatingPointError: epoch 1, step 3: the training loss is nan; stopping$"):
        train_stage.train(run, params, tmp_path / "RNN-seed0")


def test_the_shares_of_the_ranks_make_up_the_global_batch() -> None:
    """Rank r reads samples r, r+2, ... of each batch's slice of one permutation: together, the 1-process batch."""
    tree = Taxonomy.from_csv(ROOT / "taxonomies" / "fashion_mnist.csv")
    from dhnn.data.base import HierarchicalTensorDataset, ImageSet, class_targets

    ds = HierarchicalTensorDataset(ImageSet(torch.zeros(40, 1, 2, 2, dtype=torch.uint8), torch.arange(40) % 10,
                                            tree.leaves), class_targets(tree.leaves, tree), 0.5, 0.5)
    ds.labels = torch.arange(40)  # the sample's index, to follow it
    for epoch in (0, 1):
        loaders = [distributed_loader(ds, 8, 3, Dist(rank=r, world_size=w), 0) for w, r in ((1, 0), (2, 0), (2, 1))]
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        single, rank0, rank1 = ([batch[2].tolist() for batch in loader] for loader in loaders)
        assert len(single) == len(rank0) == len(rank1) == 5
        assert all(len(b) == 4 for b in rank0 + rank1)
        assert [sorted(a + b) for a, b in zip(rank0, rank1)] == [sorted(s) for s in single]
    assert single != [list(range(i, i + 8)) for i in range(0, 40, 8)]  # shuffled
    with pytest.raises(ValueError, match="train.batch_size 9 is not divisible by the 2 processes"):
        distributed_loader(ds, 9, 0, Dist(rank=0, world_size=2))


def _tiny_fit(out: Path, epochs: int = 2, task=None) -> tuple[list[dict], list[int]]:
    """fit through the DDP code with a world of 1, on 32 random images; the history and set_epoch's calls."""
    from dhnn.data.base import HierarchicalTensorDataset, ImageSet, class_targets, make_loader
    from dhnn.models import create_model
    from dhnn.tasks import get_task
    from dhnn.training.loop import fit, seed_everything

    tree = Taxonomy.from_csv(ROOT / "taxonomies" / "fashion_mnist.csv")
    cfg = {"kind": "flat", "backbone": {"name": "resnet18", "pretrained": False,
                                         "kwargs": {"channels": [8, 8, 8, 8]}}, "layer": "layer4"}
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ds = HierarchicalTensorDataset(ImageSet(images, torch.arange(32) % 10, tree.leaves),
                                   class_targets(tree.leaves, tree), 0.5, 0.5)
    seed_everything(0)
    loader, calls = distributed_loader(ds, 16, 0, Dist()), []
    set_epoch = loader.sampler.set_epoch
    loader.sampler.set_epoch = lambda epoch: (calls.append(epoch), set_epoch(epoch))
    history = fit(create_model(cfg, tree, 1, 28), loader, make_loader(ds, 32, False, 0),
                  task=task or get_task("paths"), epochs=epochs, lr=1e-3, weight_decay=0.0, level_weights=[1, 1, 1],
                  beam_width=1, device=torch.device("cpu"), out_dir=out, run_info={}, fingerprint="f",
                  progress=False, dist=Dist())
    return history, calls


def test_fit_tells_the_sampler_each_epoch(tmp_path: Path) -> None:
    """A new shuffle every epoch, the same on every rank: fit calls set_epoch(epoch) before each epoch."""
    assert _tiny_fit(tmp_path)[1] == [0, 1]


def test_a_resumed_run_keeps_the_best_epochs_weights(tmp_path: Path) -> None:
    """last.pt holds a copy of the best epoch's weights, not the live weights it was taken from."""
    from dhnn.tasks import PathTask

    scores = iter([0.9, 0.5])  # epoch 0 is the best; the run stops while validating epoch 2

    class Scripted(PathTask):
        def evaluate(self, *args, **kwargs):
            return {**super().evaluate(*args, **kwargs), "path_accuracy": next(scores)}

    with pytest.raises(StopIteration):
        _tiny_fit(tmp_path, epochs=3, task=Scripted())
    best, last = load_checkpoint(tmp_path / "model.pt"), load_checkpoint(tmp_path / "last.pt")
    assert (best["epoch"], last["epoch"]) == (0, 1)
    assert all(torch.equal(best["model"][k], last["best_state"]["model"][k]) for k in best["model"])
    assert not all(torch.equal(last["model"][k], best["model"][k]) for k in best["model"])
    (tmp_path / "model.pt").unlink()  # as dvc does before it reruns the stage
    scores = iter([0.1])  # epoch 2, resumed: worse than epoch 0
    _tiny_fit(tmp_path, epochs=3, task=Scripted())
    again = load_checkpoint(tmp_path / "model.pt")
    assert again["epoch"] == 0 and all(torch.equal(best["model"][k], again["model"][k]) for k in best["model"])


def test_without_torchrun_setup_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    dist = setup("cpu")
    assert (dist.rank, dist.world_size, dist.is_main, dist.distributed) == (0, 1, True, False)
    assert not torch.distributed.is_initialized()


def test_a_batch_that_the_processes_cannot_share_stops_before_launch(tmp_path: Path) -> None:
    params = load_params(_params(tmp_path, nproc=3))
    with pytest.raises(ValueError, match=r"train.batch_size: 64 is not divisible by train.nproc 3"):
        train_stage.train(None, params, tmp_path / "out")
    assert not (tmp_path / "out").exists()
