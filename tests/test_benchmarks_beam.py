"""The beam-search throughput benchmark runs end to end (its --quick mode, a few seconds)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "beam_search.py"


def test_beam_search_benchmark_quick() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True,
                            timeout=120, cwd=SCRIPT.parents[1])
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^check: top-5 paths agree", out, re.M), out
    for name in ("Python floats", "torch ops"):
        assert re.search(rf"^ratio \(batched / reference, {name}\): [0-9.]+x$", out, re.M), out
    assert re.search(r"^batched beam_search_indices +20000 +[0-9.]+ +[0-9.e+]+$", out, re.M), out
