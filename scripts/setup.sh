#!/usr/bin/env bash
# Set up dhnn on a fresh clone: a virtual environment in .venv with dhnn and its tools, and the
# Fashion-MNIST files in data/ (tracked by data.dvc). Safe to run again: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"

# 1. The virtual environment. The stamp records what was installed, so a re-run is instant
#    unless pyproject.toml changed.
stamp="$VENV/.dhnn-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # torch first and pinned: these wheels install offline on the project's machines
    "$VENV/bin/python" -m pip install --quiet $TORCH_PINS
    "$VENV/bin/python" -m pip install --quiet -e ".[test]" $TORCH_PINS
    echo "$want" > "$stamp"
fi

# 2. Fashion-MNIST. Debian ships it as the package dataset-fashion-mnist; elsewhere torchvision
#    downloads it from the official mirror. Either way data/ ends up with the same decompressed
#    files, so data.dvc matches.
DEB_DIR=/usr/share/datasets/fashion-mnist
if [ ! -d data/FashionMNIST/raw ] && [ ! -d "$DEB_DIR" ] && command -v apt-get >/dev/null; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
        { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } ||
        echo "setup: apt-get could not install dataset-fashion-mnist; downloading instead" >&2
fi
"$VENV/bin/python" -m dhnn.data.fashion_mnist data --source "$DEB_DIR" >/dev/null

# 3. The files were checked against the official MD5s above; caching them must give exactly the
#    hash data.dvc records, so that `dvc status` has nothing to do for data.
if ! "$VENV/bin/dvc" status --quiet data.dvc 2>/dev/null; then
    cp data.dvc "$VENV/.data.dvc.expected"
    "$VENV/bin/dvc" commit --force --quiet data.dvc
    if ! cmp -s data.dvc "$VENV/.data.dvc.expected"; then
        echo "setup: data/ does not match data.dvc:" >&2
        diff "$VENV/.data.dvc.expected" data.dvc >&2 || true
        cp "$VENV/.data.dvc.expected" data.dvc
        exit 1
    fi
fi
echo "setup: ready (.venv, data/)"
