"""One GPU check, prepared as one script: training speed, a short accuracy run, beam search on the GPU.

``scripts/gpu_check.sh`` runs this; it writes ONE JSON file and prints a short summary.

* Speed: training images/s (the project's ``train_one_epoch``: bf16 autocast on CUDA, channels-last)
  of the Flat baseline and of two DHNN variants (a CNN-RNN like the paper's Res-RNN-Resi and a
  CNN-S2S like Res-S2S-Pool) on the same backbone, on synthetic batches already on the device and
  the 3-level Fashion-MNIST tree; and each DHNN's images/s over Flat's. The goal is a DHNN at
  >= 0.9x Flat's images/s (``ratio_dhnn_over_flat`` is the best DHNN's ratio). The variants are
  warmed up one after another, then timed in interleaved rounds (Flat, RNN, S2S, Flat, ...) so that
  clock drift hits them alike; the headline is each variant's median round.
* Beam search: ``dhnn.decoding.beam_search_indices`` at k=5 on a seeded 600-leaf, depth-4 tree (the
  tree of benchmarks/beam_search.py), synchronised timing, checked against the same search on CPU.
* Accuracy: the pipeline's stage functions (build_taxonomy, prepare_training, train, load_trained,
  test) on Fashion-MNIST with the params of configs/demo.yaml, given a real backbone budget on a GPU.

Modes: ``gpu`` (CUDA present and no --tiny): ResNet-50 at 224 px, batch 64; beam search on 65,536
samples; the accuracy run with a full-width resnet18 for 3 epochs on the whole training split.
``tiny`` (no CUDA, or --tiny): a quarter-width resnet18 at 32 px with the demo's head sizes, batch 8,
a few steps; 4,096 beam samples; the demo run on 256 training images for 1 epoch; one torch thread on
CPU. It checks that everything runs (tests run it); its numbers mean little.

The budget (--budget-s, default 420 s, counted from the start of the process) bounds the whole
check: a part is skipped when less of the budget is left than it needs, and a part that is still
running when the budget runs out is stopped (SIGALRM) with what it had measured so far; both are
recorded. The JSON is rewritten after every part (``complete`` is false until the end), so a run
killed from outside still leaves the parts it finished. Exit status: 0, or 1 when a part failed
with an error (its message is in the JSON).

    python benchmarks/gpu_check.py --out gpu_check.json            # gpu mode where CUDA is present
    python benchmarks/gpu_check.py --out /tmp/check.json --tiny     # tiny mode anywhere
"""
from __future__ import annotations

import time

T0 = time.perf_counter()  # the check's wall time counts from here (imports included)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

# cuBLAS reads this when it starts: set it before anything touches CUDA (the pipeline's seed_everything
# sets it too, but only for a process where cuBLAS has not started yet)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from beam_search import random_tree  # noqa: E402
from dhnn.decoding import beam_search_indices  # noqa: E402
from dhnn.taxonomy import IGNORE_INDEX, Taxonomy  # noqa: E402

SCHEMA_VERSION = 1
TAXONOMY = "taxonomies/fashion_mnist.csv"
DEMO_PARAMS = "configs/demo.yaml"
GOAL_RATIO = 0.9  # a DHNN should train at >= 0.9x the Flat baseline's images/s
PART_ORDER = ("speed", "beam_search", "accuracy")

# -- the settings of each mode ---------------------------------------------------------------------

LEVEL_LAYERS = [["layer4"], ["layer3"], ["layer2", "layer1"]]  # the deepest layer feeds the coarsest level
# the heads of configs/paper-fashion-mnist.yaml: its small pooling grid, Res-RNN's LSTM with the residual
# arc (Res-RNN-Resi), Res-S2S-Pool's decoder
PAPER_HEADS = {
    "conversion": {"kind": "pool", "grid": [64, 2, 2], "mode": "max"},
    "rnn": {"cell": "lstm", "hidden_size": 512, "num_layers": 2, "bidirectional": True, "residual": True,
            "dropout": 0.0},
    "s2s": {"hidden_size": 512, "num_layers": 1, "feed": "softmax", "end_after": "leaves", "embed_size": None,
            "dropout": 0.0},
}
# tiny: the same structure at the demo's sizes (orthogonal init of a 512-unit LSTM alone takes seconds on a CPU)
TINY_HEADS = {
    "conversion": {"kind": "pool", "grid": [8, 2, 2], "mode": "max"},
    "rnn": {**PAPER_HEADS["rnn"], "hidden_size": 32},
    "s2s": {**PAPER_HEADS["s2s"], "hidden_size": 32},
}

MODES: dict[str, dict[str, Any]] = {
    "gpu": {
        "speed": {"backbone": {"name": "resnet50", "pretrained": False, "allow_random_init": False, "kwargs": {}},
                  "names": {"flat": "Res-50", "rnn": "Res-RNN-Resi", "s2s": "Res-S2S-Pool"}, "heads": PAPER_HEADS,
                  "image_size": 224, "in_chans": 3, "batch_size": 64, "warmup_steps": 20, "timed_steps": 50,
                  "rounds": 3},
        "beam_search": {"samples": 65536, "beam_width": 5, "repeats": 10, "check_samples": 1024,
                        "cpu_samples": 16384, "cpu_repeats": 3},
        "accuracy": {"backbone": {"name": "resnet18", "pretrained": False, "allow_random_init": False,
                                  "kwargs": {}},
                     "epochs": 3, "limit_train": None, "limit_val": None, "limit_test": None, "image_size": 28,
                     "eval_batch_size": 1000, "progress": True},
        # about how long each part takes (seconds): a part is skipped when less of the budget is left
        "needs_s": {"speed": 45, "beam_search": 15, "accuracy": 60},
    },
    "tiny": {
        "speed": {"backbone": {"name": "resnet18", "pretrained": False, "allow_random_init": False,
                               "kwargs": {"channels": [16, 32, 64, 128]}},
                  "names": {"flat": "Res18q-Flat", "rnn": "Res18q-RNN-Resi", "s2s": "Res18q-S2S-Pool"},
                  "heads": TINY_HEADS,
                  "image_size": 32, "in_chans": 3, "batch_size": 8, "warmup_steps": 2, "timed_steps": 3,
                  "rounds": 2},
        "beam_search": {"samples": 4096, "beam_width": 5, "repeats": 3, "check_samples": 256,
                        "cpu_samples": 1024, "cpu_repeats": 2},
        "accuracy": {"backbone": None,  # the demo's own (a quarter-width resnet18)
                     "epochs": 1, "limit_train": 256, "limit_val": None, "limit_test": None, "image_size": None,
                     "eval_batch_size": None, "progress": False},
        "needs_s": {"speed": 3, "beam_search": 1, "accuracy": 5},
    },
}


# -- the budget ------------------------------------------------------------------------------------

class PartTimeout(BaseException):
    """The budget ran out while a part was running (a BaseException, like KeyboardInterrupt, so that no
    library's ``except Exception`` swallows it)."""


class Budget:
    """Seconds left of --budget-s, counted from the start of the process."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def used(self) -> float:
        return time.perf_counter() - T0

    def left(self) -> float:
        return self.seconds - self.used()


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise PartTimeout in the main thread after ``seconds`` (between Python bytecodes: a running
    GPU kernel or C++ call finishes first)."""
    if not hasattr(signal, "setitimer"):  # not on Unix: no deadline, the budget only skips parts
        yield
        return

    def expire(signum, frame):
        raise PartTimeout(f"the budget ran out after {time.perf_counter() - T0:.1f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_part(report: dict, name: str, fn: Callable[[dict], None], needs_s: float, budget: Budget,
             write: Callable[[], None]) -> None:
    """Run one part into ``report[name]`` (fn fills the dict as it goes, so a stopped part keeps its
    partial results), unless less than ``needs_s`` of the budget is left. Never raises."""
    left = budget.left()
    if left < needs_s:
        report[name] = {"status": "skipped", "wall_s": 0.0,
                        "reason": f"{max(left, 0):.0f} s of the {budget.seconds:.0f} s budget left; "
                                  f"the part needs about {needs_s:.0f} s"}
        report["skipped"].append(name)
        write()
        return
    part = report[name] = {"status": "running"}
    start = time.perf_counter()
    try:
        with deadline(left):
            fn(part)
        part["status"] = "ok"
    except PartTimeout as err:
        part["status"] = "timeout"
        part["reason"] = f"stopped: {err} (budget {budget.seconds:.0f} s); the results so far are kept"
        report["skipped"].append(name)
    except Exception as err:  # one part's failure (say, out of memory) must not cost the others
        part["status"] = "error"
        part["error"] = f"{type(err).__name__}: {err}"
        part["traceback"] = traceback.format_exc(limit=-6)
        print(f"gpu_check: {name} failed:\n{part['traceback']}", file=sys.stderr, flush=True)
    finally:
        part["wall_s"] = time.perf_counter() - start
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    write()


# -- the environment -------------------------------------------------------------------------------

def select(device_arg: str) -> torch.device:
    if device_arg == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device_arg)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"gpu_check: --device {device_arg}, but torch {torch.__version__} sees no CUDA device")
    return device


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": p.name, "count": torch.cuda.device_count(),
                "capability": f"{p.major}.{p.minor}", "memory_bytes": int(p.total_memory),
                "multiprocessors": int(p.multi_processor_count)}
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return {"type": device.type, "name": name, "count": 1, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def versions() -> dict:
    out = {"python_version": platform.python_version(), "torch_version": torch.__version__,
           "cuda_version": torch.version.cuda, "cudnn_version": None, "timm_version": None, "dhnn_version": None,
           "git_commit": None}
    if torch.backends.cudnn.is_available():
        out["cudnn_version"] = torch.backends.cudnn.version()
    with contextlib.suppress(Exception):
        import timm
        out["timm_version"] = timm.__version__
    with contextlib.suppress(Exception):
        import dhnn
        out["dhnn_version"] = dhnn.__version__
    with contextlib.suppress(Exception):  # read-only; no git or no .git (a copied tree) leaves None
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True, timeout=10, check=True).stdout.strip() or None
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- speed -----------------------------------------------------------------------------------------

def speed_variants(s: dict) -> dict[str, dict]:
    """The three variants (flat, rnn, s2s) as params.yaml entries, every key spelled out."""
    backbone, heads = s["backbone"], s["heads"]
    return {
        "flat": {"kind": "flat", "backbone": backbone, "layer": "layer4", "dropout": 0.0, "collapse_chains": False},
        "rnn": {"kind": "rnn", "backbone": backbone, "level_layers": LEVEL_LAYERS, "conversion": heads["conversion"],
                "rnn": heads["rnn"], "softmax_over": "level", "alt": None, "collapse_chains": False},
        "s2s": {"kind": "s2s", "backbone": backbone, "level_layers": LEVEL_LAYERS, "conversion": heads["conversion"],
                "s2s": heads["s2s"], "alt": None, "collapse_chains": True},
    }


def schema_checked(variants: dict[str, dict], names: dict[str, str], image_size: int) -> tuple[dict, bool]:
    """The variants through dhnn.params (defaults filled, keys checked) where pydantic is installed."""
    try:
        from dhnn.params import validate
    except ImportError:
        return variants, False
    params = validate({"data": {"name": "fashion_mnist", "image_size": image_size},
                       "taxonomy": {"source": TAXONOMY},
                       "grid": {"variants": [names[k] for k in variants], "seeds": [0]},
                       "variants": {names[k]: cfg for k, cfg in variants.items()}}, "gpu_check speed variants")
    return {k: params.variant(names[k]) for k in variants}, True


def speed(part: dict, mode: dict, device: torch.device, amp: bool) -> None:
    from dhnn.training.loop import seed_everything, train_one_epoch

    s = mode["speed"]
    seed_everything(0)  # as prepare_training does: deterministic algorithms, no cudnn.benchmark
    variants, checked = schema_checked(speed_variants(s), s["names"], s["image_size"])
    tree = Taxonomy.from_csv(ROOT / TAXONOMY)
    part["settings"] = {
        "backbone": s["backbone"]["name"], "backbone_kwargs": s["backbone"]["kwargs"],
        "pretrained": s["backbone"]["pretrained"], "heads": s["heads"], "image_size": s["image_size"],
        "in_chans": s["in_chans"],
        "batch_size": s["batch_size"], "warmup_steps": s["warmup_steps"], "timed_steps": s["timed_steps"],
        "rounds": s["rounds"], "device": str(device), "amp": "bf16" if amp and device.type == "cuda" else None,
        "channels_last": True, "optimizer": "adam", "lr": 1e-4, "schedule": "constant",
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None,
        "loop": "dhnn.training.loop.train_one_epoch", "data": "synthetic images and label paths, on the device",
        "taxonomy": TAXONOMY, "level_sizes": tree.level_sizes, "schema_checked": checked,
        "timing": "each round synchronised (torch.cuda.synchronize on CUDA); images/s = batch * steps / seconds; "
                  "the headline is the median round",
    }
    results = part["variants"] = {}
    g = torch.Generator().manual_seed(0)
    images = torch.randn(s["batch_size"], s["in_chans"], s["image_size"], s["image_size"], generator=g)
    images = images.to(device).contiguous(memory_format=torch.channels_last)
    runs = {}
    for key, cfg in variants.items():  # build and warm up each variant in turn
        row = results[key] = {"name": s["names"][key], "kind": cfg["kind"], "status": "building", "config": cfg}
        try:
            runs[key] = warm_up(row, cfg, tree, images, g, s, device, amp)
        except Exception as err:  # one variant's failure (say, out of memory) must not cost the others
            row.update(status="error", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=-6))
            print(f"gpu_check: speed, {row['name']} failed:\n{row['traceback']}", file=sys.stderr, flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    steps = s["timed_steps"]
    for r in range(s["rounds"]):  # interleaved: each round times every variant once
        for key, (model, opt, batch, weights) in runs.items():
            row = results[key]
            sync(device)
            start = time.perf_counter()
            train_one_epoch(model, [batch] * steps, opt, None, device, weights, 1 + r, amp)
            sync(device)
            seconds = time.perf_counter() - start
            row["rounds_s"].append(seconds)
            row["rounds_images_per_s"].append(s["batch_size"] * steps / seconds)
            summarize_speed(part)
    for key in runs:
        results[key]["status"] = "ok"
    summarize_speed(part)
    failed = [row["name"] for row in results.values() if row["status"] == "error"]
    if failed:
        raise RuntimeError(f"{', '.join(failed)} failed (see speed.variants); the others were timed")


def warm_up(row: dict, cfg: dict, tree: Taxonomy, images: torch.Tensor, g: torch.Generator, s: dict,
            device: torch.device, amp: bool) -> tuple:
    """Build one variant with its optimizer and run its warm-up steps; (model, optimizer, batch, level weights)."""
    from dhnn.models.registry import count_parameters, create_model
    from dhnn.training.loop import make_optimizer, train_one_epoch

    vtree = tree.collapse_chains() if cfg.get("collapse_chains") else tree
    leaves = torch.randint(len(vtree.leaves), (s["batch_size"],), generator=g)
    batch = (images, vtree.leaf_paths()[leaves].to(device), torch.arange(s["batch_size"]))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    model = create_model(cfg, vtree, s["in_chans"], s["image_size"]).to(device, memory_format=torch.channels_last)
    opt, _ = make_optimizer(model, 1e-4, 0.0, 1, 1, "adam", "constant")
    weights = [1.0] * vtree.num_levels
    row.update(parameters=count_parameters(model), level_sizes=vtree.level_sizes, status="warming up")
    start = time.perf_counter()
    stats = train_one_epoch(model, [batch] * s["warmup_steps"], opt, None, device, weights, 0, amp)
    sync(device)
    row.update(warmup_s=time.perf_counter() - start, warmup_loss=stats["loss"])
    if device.type == "cuda":
        row["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device) - base)
    row.update(status="warm", rounds_images_per_s=[], rounds_s=[])
    return model, opt, batch, weights


def summarize_speed(part: dict) -> None:
    """Each variant's median images/s and the DHNN/Flat ratios, from the rounds timed so far."""
    results = part["variants"]
    for row in results.values():
        done = row.get("rounds_images_per_s") or []
        if done:
            row["images_per_s"] = statistics.median(done)
            row["seconds_per_step"] = statistics.median(row["rounds_s"]) / part["settings"]["timed_steps"]
            row["timed_steps_total"] = len(done) * part["settings"]["timed_steps"]
    flat = results.get("flat", {}).get("images_per_s")
    part["ratios"] = {k: row["images_per_s"] / flat for k, row in results.items()
                      if k != "flat" and flat and row.get("images_per_s")}
    part["best_dhnn"] = max(part["ratios"], key=part["ratios"].get) if part["ratios"] else None


# -- beam search -----------------------------------------------------------------------------------

def timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> list[float]:
    """Seconds of each of ``repeats`` calls after one warm-up call, synchronised."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def beam(part: dict, mode: dict, device: torch.device) -> None:
    b = mode["beam_search"]
    tree = random_tree(0)
    n, k = b["samples"], b["beam_width"]
    part["settings"] = {"device": str(device), "samples": n, "beam_width": k, "level_sizes": tree.level_sizes,
                        "leaves": len(tree.leaves), "depth": tree.num_levels, "dtype": "float32",
                        "repeats": b["repeats"], "tree": "benchmarks/beam_search.py random_tree(seed 0)",
                        "scores": "softmax(2 * N(0, 1) logits) per level, drawn on the device",
                        "timing": "one warm-up call, then each call synchronised"}
    g = torch.Generator(device=device).manual_seed(1)
    scores = [torch.softmax(2.0 * torch.randn(n, size, generator=g, device=device), dim=1)
              for size in tree.level_sizes]
    times = timed(lambda: beam_search_indices(scores, tree, k), b["repeats"], device)
    part.update(seconds=times, best_s=min(times), median_s=statistics.median(times),
                samples_per_s=n / statistics.median(times), best_samples_per_s=n / min(times))
    # the same search on CPU: a check of the device's answers, and its speed for comparison
    m = min(b["check_samples"], n)
    cpu_scores = [s[:m].cpu() for s in scores]
    dev_idx, dev_p = beam_search_indices([s[:m] for s in scores], tree, k)
    cpu_idx, cpu_p = beam_search_indices(cpu_scores, tree, k)
    dev_idx, dev_p = dev_idx.cpu(), dev_p.cpu()
    rel = ((dev_p - cpu_p).abs() / cpu_p.abs().clamp_min(1e-30)).max().item()
    part["check_against_cpu"] = {
        "samples": m, "same_paths_fraction": (dev_idx == cpu_idx).all(dim=2).float().mean().item(),
        "same_best_path_fraction": (dev_idx[:, 0] == cpu_idx[:, 0]).all(dim=1).float().mean().item(),
        "max_rel_prob_diff": rel, "all_paths_valid": bool(valid_paths(dev_idx, tree)),
        "ok": bool(rel < 1e-4 and valid_paths(dev_idx, tree)),
    }
    c = min(b["cpu_samples"], n)
    cpu_in = [s[:c].cpu() for s in scores]
    cpu_times = timed(lambda: beam_search_indices(cpu_in, tree, k), b["cpu_repeats"], torch.device("cpu"))
    part["cpu"] = {"samples": c, "threads": torch.get_num_threads(), "seconds": cpu_times,
                   "samples_per_s": c / statistics.median(cpu_times)}
    part["speedup_over_cpu"] = part["samples_per_s"] / part["cpu"]["samples_per_s"]


def valid_paths(indices: torch.Tensor, tree: Taxonomy) -> bool:
    """Every returned path [.., T] follows the tree's parent links (all leaves are at depth T here)."""
    if (indices == IGNORE_INDEX).any():
        return False
    for t in range(1, tree.num_levels):
        parent = tree.parent_index(t)[indices[..., t]]
        if not torch.equal(parent, indices[..., t - 1]):
            return False
    return True


# -- accuracy --------------------------------------------------------------------------------------

def ensure_dvclive() -> str:
    """dvclive's version; where it is not installed (the GPU machine's image), a stand-in that logs
    nothing, so that train_stage.train runs there too."""
    try:
        import dvclive
        return f"dvclive {getattr(dvclive, '__version__', '?')}"
    except ImportError:
        pass

    class Live:  # the part of dvclive.Live that train_stage.train uses
        def __init__(self, *args, **kwargs):
            self.summary: dict = {}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def log_metric(self, *args, **kwargs):
            pass

        def next_step(self):
            pass

    stub = types.ModuleType("dvclive")
    stub.Live = Live
    sys.modules["dvclive"] = stub
    return "not installed: a stand-in that logs nothing"


def accuracy(part: dict, mode: dict, device: torch.device, epochs: int | None) -> None:
    a = mode["accuracy"]
    logger = ensure_dvclive()
    try:
        from dhnn.params import load_params, validate
        from dhnn.pipeline import infer_stage, layout, taxonomy_stage, train_stage
    except ImportError as err:  # the GPU machine's image may lack pydantic: carry its wheels
        raise ImportError(f"the accuracy run needs the pipeline's dependencies ({err}); install them, or carry "
                          f"their wheels to the GPU machine") from err

    raw = load_params(DEMO_PARAMS).model_dump()
    raw["data"].update(limit_train=a["limit_train"], limit_val=a["limit_val"], limit_test=a["limit_test"])
    if a["image_size"] is not None:
        raw["data"]["image_size"] = a["image_size"]
    raw["train"].update(epochs=epochs or a["epochs"], device=str(device))
    raw["runtime"]["progress"] = a["progress"]
    if a["eval_batch_size"] is not None:
        raw["runtime"]["eval_batch_size"] = a["eval_batch_size"]
    variant, seed = raw["grid"]["variants"][0], raw["grid"]["seeds"][0]
    if a["backbone"] is not None:
        raw["variants"][variant]["backbone"] = a["backbone"]
    params = validate(raw, f"{DEMO_PARAMS} (patched by gpu_check)")
    part["settings"] = {"params": DEMO_PARAMS, "variant": variant, "seed": seed, "device": str(device),
                        "data": params.section("data"), "train": params.section("train"),
                        "runtime": params.section("runtime"), "beam_width": params.infer.beam_width,
                        "model": params.variant(variant), "dvclive": logger,
                        "stages": "build_taxonomy, save_taxonomy, prepare_training, train, load_trained, test"}
    results = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        start = time.perf_counter()
        tree = taxonomy_stage.build_taxonomy(params)
        taxonomy_file = taxonomy_stage.save_taxonomy(tree, results)
        run = train_stage.prepare_training(params, variant, seed, taxonomy_file)
        part.update(parameters=run.parameters, train_images=len(run.splits.train), val_images=len(run.splits.val),
                    test_images=len(run.splits.test), prepare_s=time.perf_counter() - start)
        t = time.perf_counter()
        history = train_stage.train(run, params, layout.train_dir(results, variant, seed))
        part["train_s"] = time.perf_counter() - t
        part["history"] = [{k: plain(v) for k, v in row.items()} for row in history.to_dict("records")]
        t = time.perf_counter()
        trained = infer_stage.load_trained(params, variant, seed, layout.train_dir(results, variant, seed) / "model.pt")
        metrics, _ = infer_stage.test(trained, params)
        part["test_s"] = time.perf_counter() - t
        part.update(best_epoch=trained.epoch, test_path_accuracy=float(metrics["path_accuracy"]),
                    test_node_accuracy=float(metrics["node_accuracy"]),
                    test_level_accuracy=[float(x) for x in metrics["level_accuracy"]],
                    run_s=time.perf_counter() - start)
    finally:
        shutil.rmtree(results, ignore_errors=True)


def plain(value: Any) -> Any:
    """A JSON-ready scalar (numpy numbers to Python's)."""
    return value.item() if hasattr(value, "item") else value


# -- the report ------------------------------------------------------------------------------------

def finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: Path, report: dict) -> None:
    report["total_wall_s"] = time.perf_counter() - T0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(finite(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def headline(report: dict) -> None:
    """The top-level speed numbers: the best DHNN's ratio over Flat and whether it meets the goal."""
    sp = report.get("speed") or {}
    best = sp.get("best_dhnn")
    ratio = sp.get("ratios", {}).get(best) if best else None
    report["best_dhnn"] = sp["variants"][best]["name"] if best else None
    report["ratio_dhnn_over_flat"] = ratio
    report["goal"] = {"ratio_dhnn_over_flat_at_least": GOAL_RATIO,
                      "met": None if ratio is None else ratio >= GOAL_RATIO}


def summary(report: dict, out: Path) -> str:
    lines = [f"gpu_check ({report['mode']}) on {report['device']['name']}, torch {report['torch_version']}: "
             f"{report['total_wall_s']:.1f} s of the {report['budget_s']:.0f} s budget"]
    sp = report["speed"]
    if sp.get("variants"):
        st = sp["settings"]
        parts = []
        for key, row in sp["variants"].items():
            if row.get("images_per_s"):
                ratio = sp["ratios"].get(key)
                parts.append(f"{row['name']} {row['images_per_s']:.0f} img/s" + (f" ({ratio:.2f}x)" if ratio else ""))
        goal = report["goal"]["met"]
        lines.append(f"speed ({st['backbone']}, {st['image_size']} px, batch {st['batch_size']}, "
                     f"{st['amp'] or 'fp32'}, channels-last): " + "; ".join(parts or ["no rounds timed"]) +
                     (f"; best DHNN/Flat {report['ratio_dhnn_over_flat']:.2f}x (goal >= {GOAL_RATIO}: "
                      f"{'met' if goal else 'NOT met'})" if report["ratio_dhnn_over_flat"] is not None else ""))
    if sp["status"] != "ok":
        lines.append(f"speed: {sp['status']}: {sp.get('reason') or sp.get('error')}")
    bs = report["beam_search"]
    if bs.get("samples_per_s"):
        st = bs["settings"]
        check = bs.get("check_against_cpu", {})
        lines.append(f"beam search ({st['leaves']} leaves, depth {st['depth']}, k={st['beam_width']}, "
                     f"{st['samples']} samples, {st['device']}): {bs['samples_per_s']:.3g} samples/s"
                     + (f"; CPU {bs['cpu']['samples_per_s']:.3g} samples/s" if "cpu" in bs else "")
                     + (f"; matches CPU: {'yes' if check.get('ok') else 'NO'}" if check else ""))
    if bs["status"] != "ok":
        lines.append(f"beam search: {bs['status']}: {bs.get('reason') or bs.get('error')}")
    ac = report["accuracy"]
    if "test_path_accuracy" in ac:
        st = ac["settings"]
        lines.append(f"accuracy (Fashion-MNIST, {st['model']['backbone']['name']}, {st['train']['epochs']} "
                     f"epoch(s), {ac['train_images']} training images): test path accuracy "
                     f"{ac['test_path_accuracy']:.4f} in {ac['wall_s']:.0f} s")
    if ac["status"] != "ok":
        lines.append(f"accuracy: {ac['status']}: {ac.get('reason') or ac.get('error')}")
    lines.append(f"wrote {out}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file to write (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="the tiny mode even where CUDA is present")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="wall seconds for the whole check, from the start of the process (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--accuracy-epochs", type=int, help="epochs of the accuracy run (default: 3, tiny: 1)")
    parser.add_argument("--skip", action="append", default=[], choices=PART_ORDER,
                        help="leave a part out (may be repeated)")
    args = parser.parse_args(argv)
    out = Path(args.out).expanduser().resolve()  # before the chdir below
    os.chdir(ROOT)  # params paths resolve against the folder holding dvc.yaml

    device = select(args.device)
    mode_name = "tiny" if args.tiny or device.type != "cuda" else "gpu"
    mode = MODES[mode_name]
    amp = device.type == "cuda"
    if mode_name == "tiny" and device.type == "cpu":
        # the tiny mode checks that everything runs, its numbers mean little: one thread keeps it fast on a
        # small, busy machine (there a 2-thread op waits for both threads, and the run took 4x longer)
        torch.set_num_threads(1)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "mode": mode_name, "complete": False,
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv), "budget_s": args.budget_s,
        "device": device_info(device), **versions(), "skipped": [],
        "speed": {"status": "pending"}, "beam_search": {"status": "pending"}, "accuracy": {"status": "pending"},
        "ratio_dhnn_over_flat": None, "best_dhnn": None,
        "goal": {"ratio_dhnn_over_flat_at_least": GOAL_RATIO, "met": None}, "total_wall_s": None,
    }
    budget = Budget(args.budget_s)

    def write() -> None:
        headline(report)
        write_json(out, report)

    print(f"gpu_check: {mode_name} mode on {report['device']['name']} ({device}), torch {torch.__version__}, "
          f"budget {args.budget_s:.0f} s", flush=True)
    parts = {"speed": lambda p: speed(p, mode, device, amp),
             "beam_search": lambda p: beam(p, mode, device),
             "accuracy": lambda p: accuracy(p, mode, device, args.accuracy_epochs)}
    for name in PART_ORDER:
        if name in args.skip:
            report[name] = {"status": "skipped", "wall_s": 0.0, "reason": "--skip"}
            report["skipped"].append(name)
            continue
        run_part(report, name, parts[name], mode["needs_s"][name], budget, write)
        print(f"gpu_check: {name}: {report[name]['status']} ({report[name]['wall_s']:.1f} s)", flush=True)
    report["complete"] = True
    write()
    print(summary(report, out), flush=True)
    return 1 if any(report[name]["status"] == "error" for name in PART_ORDER) else 0


if __name__ == "__main__":
    sys.exit(main())
