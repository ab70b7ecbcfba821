"""A trained model in one file: weights, variant config, taxonomy and preprocessing, loadable without params.yaml.

``python -m dhnn.serving.bundle --checkpoint results/train/X-seed0/model.pt --params params.yaml
--out results/bundles/X-seed0.dhnn`` exports a run's ``model.pt``. Like the checkpoint, a bundle
holds only tensors and plain data and is read with ``weights_only=True``, so a crafted file cannot
run code. It also records how the training images were prepared (see dhnn.serving.images), so
prediction needs nothing else.
"""
from __future__ import annotations

import argparse
import io
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from packaging.version import InvalidVersion, Version

from .. import __version__
from ..data.base import data_settings
from ..data.images import IMAGENET_MEAN, IMAGENET_STD, transform_settings
from ..data.registry import get_source
from ..io import atomic_path
from ..models.registry import create_model
from ..taxonomy import Taxonomy
from ..tasks import get_task
from ..training.checkpoint import load_checkpoint, load_plain

BUNDLE_FORMAT = 1
EXPORT_HINT = "export one with `python -m dhnn.serving.bundle --checkpoint MODEL.pt --params params.yaml --out FILE`"


class BundleError(ValueError):
    """A bundle that can't be read or used here; the message names the file."""


@dataclass
class Bundle:
    """A loaded bundle: the model (eval mode, CPU), its tree, its preprocessing, and everything else recorded."""

    model: nn.Module
    taxonomy: Taxonomy
    preprocessing: dict
    meta: dict  # bundle_format, dhnn_version, variant, seed, epoch, val, config, task, temperatures

    @property
    def multilabel(self) -> bool:
        """Whether the model scores node sets (Open Images) rather than paths."""
        return get_task(self.meta["task"]).multilabel

    @property
    def temperatures(self) -> torch.Tensor | None:
        """The temperatures the infer stage fitted on validation (calibrated probabilities), or None."""
        temps = self.meta.get("temperatures")
        return None if temps is None else torch.tensor(temps, dtype=torch.float32)


def preprocessing_for(data_cfg: dict) -> dict:
    """How the training images of ``data_cfg`` were prepared, as plain data (see dhnn.serving.images)."""
    cfg = data_settings(data_cfg)
    name = cfg["name"]
    if name == "fashion_mnist":
        from ..data.fashion_mnist import MEAN, STD

        return {"kind": "tensor", "mode": "L", "in_chans": 1, "image_size": cfg.get("image_size") or 28,
                "mean": [MEAN], "std": [STD]}
    if name == "fashion_scenes":
        from ..data.fashion_scenes import MEAN, SIZE, STD

        return {"kind": "tensor", "mode": "L", "in_chans": 1, "image_size": SIZE, "mean": [MEAN], "std": [STD]}
    stats: tuple = (IMAGENET_MEAN, IMAGENET_STD)
    if name == "cifar100":
        from ..data.cifar100 import CIFAR100_MEAN, CIFAR100_STD

        stats = (CIFAR100_MEAN, CIFAR100_STD)
        if cfg.get("transform") is None:  # the native 32 px images, kept in memory as uint8
            return {"kind": "tensor", "mode": "RGB", "in_chans": 3, "image_size": 32,
                    "mean": list(CIFAR100_MEAN), "std": list(CIFAR100_STD)}
    t = transform_settings(cfg.get("transform"), *stats)
    return {"kind": "transform", "mode": "L" if t["grayscale"] else "RGB", "in_chans": t["in_chans"],
            "image_size": t["crop"], "resize": t["resize"], "crop": t["crop"],
            "mean": [float(v) for v in t["mean"]], "std": [float(v) for v in t["std"]]}


def _build(config: dict, tree: Taxonomy, preprocessing: dict, task: str, state_dict: dict, where: Path) -> nn.Module:
    """The model of ``config`` with ``state_dict`` loaded, on CPU in eval mode."""
    try:
        # the weights come from the file: never fetch pretrained ones to overwrite them
        cfg = {**config, "backbone": {**config["backbone"], "pretrained": False}}
        model = create_model(cfg, tree, preprocessing["in_chans"], preprocessing["image_size"],
                             get_task(task).multilabel)
        model.load_state_dict(state_dict)
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        images = f"{preprocessing['in_chans']}-channel {preprocessing['image_size']} px images"
        raise BundleError(f"{where}: the weights do not fit a {config.get('kind')!r} model for {images} ({first})"
                          ) from None
    return model.eval()


def export_bundle(checkpoint_path: str | Path, data_cfg: dict, out_path: str | Path,
                  temperatures: list[float] | None = None) -> Path:
    """Write a run's checkpoint (model.pt), its taxonomy, its preprocessing and the temperatures that
    calibrate its probabilities (dhnn.evaluation.calibration) as one bundle file; return its path."""
    checkpoint_path, out_path = Path(checkpoint_path), Path(out_path)
    state = load_checkpoint(checkpoint_path)
    missing = [k for k in ("model", "variant", "seed", "config", "taxonomy") if k not in state]
    if missing:
        raise BundleError(f"{checkpoint_path}: no {', '.join(missing)} in this checkpoint; export the model.pt "
                          f"that a train stage wrote")
    tree = Taxonomy.from_dict(state["taxonomy"])
    preprocessing = preprocessing_for(data_cfg)
    task = get_source(data_cfg["name"]).task
    _build(state["config"], tree, preprocessing, task, state["model"], checkpoint_path)  # fail here, not at use
    bundle = {"bundle_format": BUNDLE_FORMAT, "dhnn_version": __version__, "variant": state["variant"],
              "seed": state["seed"], "epoch": state.get("epoch"), "val": state.get("val"),
              "config": state["config"], "taxonomy": tree.to_dict(), "task": task,
              "temperatures": None if temperatures is None else [float(t) for t in temperatures],
              "preprocessing": preprocessing, "model": dict(state["model"])}
    # through a buffer, like save_checkpoint: equal bundles give equal bytes
    buffer = io.BytesIO()
    torch.save(bundle, buffer)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return out_path


def _read(path: Path) -> Any:
    """torch.load with weights_only=True; a missing, damaged or code-carrying file raises BundleError."""
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle file; {EXPORT_HINT}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else would reach the old unpickler
        raise BundleError(f"{path}: not a readable dhnn bundle (not a torch archive); it may be truncated or not "
                          f"a bundle at all")
    return load_plain(path, "bundle", BundleError)


def _check(state: Any, path: Path) -> None:
    """Refuse a file that is not a bundle this dhnn can read."""
    if not isinstance(state, dict) or "bundle_format" not in state:
        if isinstance(state, dict) and "format" in state and "model" in state:
            raise BundleError(f"{path}: a training checkpoint, not a bundle; {EXPORT_HINT}")
        raise BundleError(f"{path}: not a dhnn bundle; {EXPORT_HINT}")
    made_by = state.get("dhnn_version")
    try:
        newer = Version(str(made_by)) > Version(__version__)
    except InvalidVersion:
        raise BundleError(f"{path}: names an invalid dhnn version {made_by!r}; re-export it") from None
    if newer:
        raise BundleError(f"{path}: made by dhnn {made_by}, newer than this dhnn {__version__}; "
                          f"upgrade dhnn to use it")
    if state["bundle_format"] != BUNDLE_FORMAT:
        raise BundleError(f"{path}: a dhnn bundle of format {state['bundle_format']!r}; this dhnn "
                          f"{__version__} reads format {BUNDLE_FORMAT}; re-export it")
    missing = [k for k in ("model", "config", "taxonomy", "task", "preprocessing") if k not in state]
    if missing:
        raise BundleError(f"{path}: a damaged bundle, without {', '.join(missing)}; re-export it")


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle (weights_only) and rebuild its model on CPU in eval mode; BundleError naming the file otherwise."""
    path = Path(path)
    state = _read(path)
    _check(state, path)
    try:
        tree = Taxonomy.from_dict(state["taxonomy"])
        get_task(state["task"])
    except ValueError as err:
        raise BundleError(f"{path}: a damaged bundle ({err}); re-export it") from None
    model = _build(state["config"], tree, state["preprocessing"], state["task"], state["model"], path)
    meta = {k: v for k, v in state.items() if k not in ("model", "taxonomy", "preprocessing")}
    return Bundle(model, tree, state["preprocessing"], meta)


def main(argv: list[str] | None = None) -> int:
    """``python -m dhnn.serving.bundle``: export a run's model.pt as a bundle for ``dhnn predict``."""
    from ..params import ParamsError, load_params

    parser = argparse.ArgumentParser(prog="python -m dhnn.serving.bundle", description=main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="a run's model.pt, e.g. results/train/Flat-seed0/model.pt")
    parser.add_argument("--params", default="params.yaml",
                        help="the params file the run was trained with (its data section is read)")
    parser.add_argument("--out", required=True, help="the bundle to write, e.g. results/bundles/Flat-seed0.dhnn")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        out = export_bundle(args.checkpoint, params.section("data"), args.out)
    except (OSError, ValueError, ParamsError) as err:  # CheckpointError and BundleError are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{out}: bundle of {args.checkpoint} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
