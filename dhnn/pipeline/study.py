"""``python -m dhnn.pipeline.study NAME``: run a study and freeze its report into ``studies/NAME/``.

A study is a params profile, ``configs/study-NAME.yaml``, run by the real pipeline (``dvc repro``:
DVC, papermill, the same notebooks and report) in a workspace of its own, ``results/studies/NAME/``,
so that the project's own ``results/`` and ``params.yaml`` stay as they are. When it succeeds, the
report's tables and figures are copied into ``studies/NAME/`` (committed), beside ``run.json``: the
commit, the hash of the params, the machine (CPU model and torch's CPU capability, or the GPU),
the wall time and the peak memory of the largest process.

``python -m dhnn.pipeline.study --docs`` rewrites the generated blocks of README.md and docs/*.md
(``<!-- study NAME FILE -->`` ... ``<!-- end study -->``) from those records; tests/test_studies.py
fails when a block differs from its record, so no study number in the docs is typed by hand.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..io import atomic_write_json
from ..params import ParamsError, load_params
from ..paths import project_root

# what a workspace needs of the project (data is linked, not copied)
PROJECT_FILES = ("dvc.yaml", "notebooks", "taxonomies", "dhnn", "configs")
# what is frozen of the report, when the run wrote it
FROZEN = ("results.md", "results.csv", "comparisons.md", "comparisons.csv", "hierarchical.md", "hierarchical.csv",
          "backoff.md", "summary.csv", "variants.png", "level_accuracy.png", "learning_curves.png",
          "reliability.png", "selective.png", "severity.png")
BLOCK = re.compile(r"(<!-- study (?P<name>[\w.-]+) (?P<file>[\w.-]+\.md) -->\n)(?P<body>.*?)(<!-- end study -->)", re.S)


def profile_path(name: str) -> Path:
    """The params profile of study ``name``."""
    return project_root() / "configs" / f"study-{name}.yaml"


def study_dir(name: str) -> Path:
    """Where study ``name``'s record is committed."""
    return project_root() / "studies" / name


def machine() -> dict:
    """What ran the study: the CPU model and torch's CPU capability, and the GPU where there is one."""
    import torch

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0].strip() if names else cpu
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "forced_isa": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def commit() -> str:
    """The project's commit, with ``+dirty`` when tracked files differ from it."""
    root = project_root()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty else "")


def workspace(name: str, profile: Path) -> Path:
    """A fresh DVC project under results/studies/NAME with the profile as its params.yaml."""
    root, ws = project_root(), project_root() / "results" / "studies" / name
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    for item in PROJECT_FILES:
        (shutil.copytree if (root / item).is_dir() else shutil.copy)(root / item, ws / item)
    shutil.copy(profile, ws / "params.yaml")
    (ws / "data").symlink_to(root / "data", target_is_directory=True)
    for args in (["init", "--no-scm", "-q"], ["config", "core.analytics", "false"]):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, check=True)
    return ws


def run_study(name: str) -> Path:
    """Run study ``name`` with ``dvc repro`` in its workspace and freeze its report; the record's folder."""
    profile = profile_path(name)
    params = load_params(profile)  # a bad profile stops here, before any work
    ran = commit()  # the code the workspace copies now, whatever is committed while the study runs
    ws = workspace(name, profile)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=ws, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"study {name}: dvc repro failed (exit {done.returncode}) in {ws}; nothing was frozen")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest process of the run
    out = study_dir(name)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for f in FROZEN:
        if (ws / "results" / "report" / f).is_file():
            shutil.copy(ws / "results" / "report" / f, out / f)
    shutil.copy(profile, out / "params.yaml")
    atomic_write_json(out / "run.json", {
        "study": name, "command": f"python -m dhnn.pipeline.study {name}", "commit": ran,
        "params": str(profile.relative_to(project_root()) if profile.is_relative_to(project_root()) else profile),
        "params_sha256": hashlib.sha256(profile.read_bytes()).hexdigest(),
        "variants": params.grid.variants, "seeds": params.grid.seeds,
        "machine": machine(), "wall_seconds": round(wall, 1), "peak_memory_mib": round(peak_kib / 1024, 1),
        "date": time.strftime("%Y-%m-%d", time.gmtime())})
    return out


def generated(text: str) -> str:
    """``text`` with every study block's body replaced by its record file (studies/NAME/FILE)."""
    def fill(m: re.Match) -> str:
        record = study_dir(m["name"]) / m["file"]
        if not record.is_file():
            raise FileNotFoundError(f"{record}: no such study record; run `python -m dhnn.pipeline.study {m['name']}`")
        return m.group(1) + record.read_text(encoding="utf-8").rstrip("\n") + "\n" + m.group(5)
    return BLOCK.sub(fill, text)


def doc_pages() -> list[Path]:
    """The pages that may quote studies: README.md and docs/*.md."""
    root = project_root()
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    """Run a study, or with --docs regenerate the study blocks of the docs."""
    parser = argparse.ArgumentParser(prog="python -m dhnn.pipeline.study", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="the study: configs/study-NAME.yaml")
    parser.add_argument("--docs", action="store_true", help="rewrite the docs' study blocks from studies/*/")
    args = parser.parse_args(argv)
    if args.docs:
        for page in doc_pages():
            text = page.read_text(encoding="utf-8")
            if (new := generated(text)) != text:
                page.write_text(new, encoding="utf-8")
                print(f"updated {page.relative_to(project_root())}")
        return 0
    if not args.name:
        parser.error("name a study, or give --docs")
    if not profile_path(args.name).is_file():
        print(f"error: {profile_path(args.name)}: no such study profile", file=sys.stderr)
        return 1
    try:
        out = run_study(args.name)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"study {args.name}: frozen into {out.relative_to(project_root())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
