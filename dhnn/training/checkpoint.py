"""Checkpoints that hold only tensors and plain data, load with ``weights_only=True``, and resume.

- ``model.pt``: the best validation epoch's weights plus what inference needs to rebuild the model
  (variant, seed, variant config, taxonomy, epoch, validation metrics). Loading never runs code.
- ``last.pt``: written atomically at the end of every epoch while a run trains: weights, optimizer
  and schedule state, every random-number state, the history so far and a fingerprint of the run's
  settings. A run killed mid-training resumes from it when its fingerprint matches; it is removed
  once the run finishes.
"""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_path

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that can't be read, or that belongs to another run."""


def save_checkpoint(path: str | Path, **state: Any) -> None:
    """torch.save ``state`` (tensors and plain data) atomically; equal states give equal bytes."""
    # torch names the archive inside the file after the file it writes to: saving through a buffer
    # keeps the temp file's random name out, so DVC sees an unchanged model as unchanged
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_plain(path: Path, kind: str, error: type[ValueError], hint: str = "",
               map_location: str | torch.device = "cpu") -> Any:
    """torch.load with ``weights_only=True``; a damaged file, or one that would run code, raises ``error`` naming it."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused an object: loading it would run code
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
        refused = next((line for line in lines if "Unsupported" in line), lines[-1] if lines else "")
        raise error(f"{path}: refused: it holds Python objects that loading would run ({refused}); "
                    f"dhnn {kind}s hold only tensors and plain data") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise error(f"{path}: not a readable dhnn {kind} ({first}); it may be truncated or not a {kind} "
                    f"at all{hint}") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; a missing or damaged file raises naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there; run the train stage first")
    state = load_plain(path, "checkpoint", CheckpointError, "; rerun its train stage", map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dhnn checkpoint of format {FORMAT}; rerun its train stage")
    return state


def check_run(state: dict, path: str | Path, variant: str, seed: int) -> None:
    """Refuse a checkpoint whose variant or seed is not the run's."""
    got = (state.get("variant"), state.get("seed"))
    if got != (variant, seed):
        raise CheckpointError(f"{path}: holds run {got[0]!r} seed {got[1]!r}, but this stage is for "
                              f"{variant!r} seed {seed}; rerun `dvc repro` for that run")


def fingerprint(settings: dict) -> str:
    """A stable hash of a run's settings and of the dhnn sources (resuming needs both unchanged)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for source in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):
        h.update(source.read_bytes())
    return h.hexdigest()


def rng_state() -> dict:
    """Every random-number state a training epoch draws from, as tensors and plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    """random.setstate wants the nested tuples that a save may have turned into lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
