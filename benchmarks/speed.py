"""What a training run costs besides learning, and what the hierarchical heads cost per step.

    python benchmarks/speed.py [--params params.yaml] [--rounds 5] [--skip-fixed] [--profile]

1. **Step cost.** One training step (forward, loss, backward, AdamW) of every variant of the
   params' grid on the same batch size and backbone, measured in interleaved rounds so that a
   machine busy with something else slows all of them alike; the median per variant, and its ratio
   to Flat's. The issue's goals: a CNN-RNN at most 1.10x Flat, a CNN-S2S at most 1.20x.
   ``--profile`` adds torch.profiler's top operators of each model's step.
2. **Fixed cost per run.** Everything a train stage spends before and around real work (dvc,
   papermill, the kernel, imports, reading the data), measured by running the real stage command
   (``dvc repro -s -f train@Flat``) in a scratch copy of the project on a tiny config, once with one
   seed and once with three. Its wall time is F + n*w for n seeds, so F = (3*T1 - T3) / 2, and a
   variant's three seeds share it: F / 3 per run. The goal: at most 4 s per run on the slower
   (AVX2) machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dhnn.models.registry import create_model, resolve_config  # noqa: E402
from dhnn.params import load_params  # noqa: E402
from dhnn.taxonomy import IGNORE_INDEX  # noqa: E402
from dhnn.taxonomy.files import load_taxonomy_file  # noqa: E402


def _batch(tree, batch: int, image_size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and random root-to-leaf paths (per-level indices) of ``tree``."""
    g = torch.Generator().manual_seed(0)
    leaves = torch.randint(len(tree.leaves), (batch,), generator=g)
    rows = [[tree.index(n) for n in tree.path(tree.leaves[i])] for i in leaves.tolist()]
    paths = torch.tensor([r + [IGNORE_INDEX] * (tree.num_levels - len(r)) for r in rows])  # short paths end early
    return torch.randn(batch, 1, image_size, image_size, generator=g).contiguous(memory_format=torch.channels_last), paths


def step_costs(params_file: str, rounds: int, steps: int, profile: bool) -> dict[str, float]:
    """Median seconds per training step of each variant in the grid (same batch, interleaved rounds)."""
    params = load_params(params_file)
    full = load_taxonomy_file(ROOT / params.taxonomy.source)
    models, batches = {}, {}
    for name in params.grid.variants:
        cfg = params.variant(name)
        tree = full.collapse_chains() if cfg.get("collapse_chains") else full
        cfg = resolve_config(cfg, tree, set(tree.leaves), name)  # every path of the batch ends at a leaf
        torch.manual_seed(0)
        model = create_model(cfg, tree, 1, 28).to(memory_format=torch.channels_last).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        models[name] = (model, opt)
        batches[name] = _batch(tree, params.train.batch_size)
    weights = params.section("train")["level_weights"]

    def step(name: str) -> None:
        model, opt = models[name]
        x, y = batches[name]
        loss = model.loss(model(x, y), y, weights, label_smoothing=params.train.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for name in models:  # warm-up: oneDNN picks its kernels on the first calls
        for _ in range(3):
            step(name)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name in models:
            start = time.perf_counter()
            for _ in range(steps):
                step(name)
            times[name].append((time.perf_counter() - start) / steps)
    if profile:
        for name in models:
            with torch.profiler.profile() as prof:
                for _ in range(steps):
                    step(name)
            print(f"\n{name}: top operators over {steps} steps")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return {name: statistics.median(t) for name, t in times.items()}


def _stage_seconds(project: Path, seeds: list[int], env: dict) -> float:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["grid"]["seeds"] = seeds
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-s", "-f", "-q", "train@Flat"], cwd=project, env=env,
                   check=True, capture_output=True)
    return time.perf_counter() - start


def fixed_cost(params_file: str, repeats: int) -> tuple[float, float, float, float]:
    """(F, w, T1, T3): a train stage's fixed seconds, seconds per tiny run, and the two medians measured."""
    params = yaml.safe_load((ROOT / params_file).read_text())
    params["data"].update(limit_train=256, limit_test=256)
    params["train"].update(epochs=1)
    params["runtime"].update(progress=False, eval_batch_size=256)
    params["grid"] = {"variants": ["Flat"], "seeds": [0]}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with tempfile.TemporaryDirectory(prefix="dhnn-speed-") as tmp:
        project = Path(tmp)
        for name in ["dvc.yaml", "notebooks", "taxonomies", "dhnn", "configs"]:
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
        (project / "data").symlink_to(ROOT / "data", target_is_directory=True)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for args in (["init", "--no-scm", "-q"], ["config", "core.analytics", "false"], ["repro", "-q", "taxonomy"]):
            subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, check=True, capture_output=True)
        t1, t3 = [], []
        for _ in range(repeats):
            t1.append(_stage_seconds(project, [0], env))
            t3.append(_stage_seconds(project, [0, 1, 2], env))
    T1, T3 = statistics.median(t1), statistics.median(t3)
    return (3 * T1 - T3) / 2, (T3 - T1) / 2, T1, T3


def main() -> None:
    """Print the step-cost ratios and the fixed cost per run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="stage runs per seed count (fixed cost)")
    parser.add_argument("--skip-fixed", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    costs = step_costs(args.params, args.rounds, args.steps, args.profile)
    flat = costs.get("Flat")
    print(f"\nStep cost ({args.params}; median of {args.rounds} interleaved rounds of {args.steps} steps)")
    print(f"{'variant':<20} {'s/step':>8} {'x Flat':>8}")
    for name, seconds in costs.items():
        print(f"{name:<20} {seconds:8.4f} {seconds / flat if flat else float('nan'):8.2f}")
    if not args.skip_fixed:
        F, w, T1, T3 = fixed_cost(args.params, args.repeats)
        print(f"\nFixed cost of a train stage (dvc repro -s -f train@Flat, tiny config; medians of {args.repeats})")
        print(f"1 seed: {T1:.1f} s, 3 seeds: {T3:.1f} s  ->  fixed F = {F:.1f} s per stage, {w:.1f} s per tiny run")
        print(f"fixed cost per run, 3 seeds per stage: {F / 3:.2f} s  (goal on the slower machine: <= 4 s; "
              f"{F / 3 / 4:.2f} of it here)")


if __name__ == "__main__":
    main()
