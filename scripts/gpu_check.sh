#!/usr/bin/env bash
# The GPU check, as one command: training speed (Flat vs DHNN on ResNet-50, bf16, channels-last), a
# short Fashion-MNIST accuracy run, and beam search on the GPU; writes one JSON file (at most 8
# minutes on one GPU; without CUDA, or with --tiny, a tiny mode of a few seconds).
#
#   scripts/gpu_check.sh [OUT.json] [--tiny] [--budget-s 420] [--device auto|cpu|cuda]
#
# OUT.json (default gpu_check.json) is relative to the current folder. The work is done by
# benchmarks/gpu_check.py, run with the project's .venv python where there is one, else python3.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="gpu_check.json"
if [[ $# -gt 0 && "$1" != -* ]]; then
  out="$1"
  shift
fi
python="$root/.venv/bin/python"
[[ -x "$python" ]] || python="python3"
exec "$python" "$root/benchmarks/gpu_check.py" --out "$out" "$@"
