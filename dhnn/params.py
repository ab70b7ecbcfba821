"""The parameter schema: every key of params.yaml, typed, with its default, checked before any work.

``load_params`` reads a params file and returns validated :class:`Params`; an unknown key, a wrong
type, a value out of range or a variant in ``grid`` that ``variants`` lacks raises
:class:`ParamsError`, whose message names the file, the key and, for a typo, the closest valid key.
The section models (``DataParams`` ...) also fill in defaults for code that is handed a partial
dict (tests, notebooks run on their own) through :func:`settings`.

This module imports neither torch nor the data code, so ``python -m dhnn.params`` checks a file
in well under a second: the pipeline's first stage.
"""
from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                      PrivateAttr, ValidationError, field_validator, model_validator)
from .params_base import ParamsError, Strict
from .params_fetch import FetchParams
from .params_models import Variant

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"  # variant names become folder names


# -- data ------------------------------------------------------------------------------------------

class Transform(Strict):
    """PIL transforms of decoded images: resize, random (train) or center crop, flip, normalise."""

    resize: PositiveInt | list[PositiveInt] | None = 256
    crop: PositiveInt = 224
    flip: bool = False
    mean: list[float] | None = None  # None: ImageNet's (or the data set's own statistics)
    std: list[PositiveFloat] | None = None
    grayscale: bool = False


class DataBase(Strict):
    root: str = "data"
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    split_seed: NonNegativeInt = 0
    limit_train: PositiveInt | None = None  # seeded subsets for quick runs; None = all
    limit_val: PositiveInt | None = None    # None: limit_test
    limit_test: PositiveInt | None = None
    augment: bool = False


class FashionMNISTData(DataBase):
    name: Literal["fashion_mnist"]
    image_size: PositiveInt | None = None  # None: 28; larger sizes upsample for ImageNet-sized backbones


class FolderData(DataBase):
    name: Literal["image_folder", "inaturalist"]
    test_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    folders: dict[Literal["train", "val", "test"], str | None] = {}
    verify_images: bool = True
    depth: Annotated[int, Field(ge=1, le=7)] | None = None  # inaturalist: kingdom (1) .. species (7)
    transform: Transform | None = None


class Cifar100Data(DataBase):
    name: Literal["cifar100"]
    download: bool = False
    transform: Transform | None = None


class OpenImagesData(DataBase):
    name: Literal["open_images"]
    hierarchy: str
    class_descriptions: str | None = None
    labels: dict[Literal["train", "val", "test"], str]
    images: dict[Literal["train", "val", "test"], str]
    fetch: FetchParams | None = None  # None: nothing fetched (the files are there); the fetch stage writes under root
    tree: str | None = None  # a label-path CSV of the nodes to keep (taxonomies/open_images_paper.csv)
    subtree: str | None = None
    max_depth: PositiveInt | None = None
    min_images: PositiveInt | None = None
    multi_parent: Literal["first", "error"] = "first"
    skip_missing: bool = False
    verify_images: bool = True
    transform: Transform | None = None


class FashionScenesData(Strict):  # dhnn.data.fashion_scenes: 2x2 canvases of items, multi-label, some partial
    name: Literal["fashion_scenes"]
    root: str = "data"
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1  # official train images held out for val scenes
    split_seed: NonNegativeInt = 0
    seed: NonNegativeInt = 0  # the scenes: items, cells and which labels are partial
    train_scenes: PositiveInt = 20000
    val_scenes: PositiveInt = 4000
    test_scenes: PositiveInt = 10000
    max_items: Annotated[int, Field(ge=1, le=4)] = 4  # 1 to max_items items per scene, uniformly
    partial_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2  # items labelled only to level 1 or 2
    augment: bool = False


DataParams = Annotated[Union[FashionMNISTData, FolderData, Cifar100Data, OpenImagesData, FashionScenesData],
                       Field(discriminator="name")]


class TaxonomyParams(Strict):
    source: str | None = None  # a CSV of label paths or parent,child edges, or JSON; None: built from the data
    format: Literal["auto", "paths", "edges", "json"] = "auto"


# -- training ------------------------------------------------------------------------------------

class WeightSchedule(Strict):
    start: list[NonNegativeFloat]
    end: list[NonNegativeFloat]

    @model_validator(mode="after")
    def _same_length(self) -> "WeightSchedule":
        if len(self.start) != len(self.end):
            raise ValueError(f"start has {len(self.start)} weights, end has {len(self.end)}")
        return self


class TrainParams(Strict):
    epochs: PositiveInt = 2
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 0.006
    weight_decay: NonNegativeFloat = 0.05
    optimizer: Literal["adam", "adamw"] = "adamw"
    schedule: Literal["onecycle", "constant"] = "onecycle"
    level_weights: list[NonNegativeFloat] | WeightSchedule = [1.0, 1.0, 1.0]  # w_t of sum_t w_t CE(y_t, o_t)
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # per level, over that level's nodes
    device: str = "auto"  # auto: CUDA when present, else CPU
    amp: bool = True      # bf16 autocast on CUDA
    nproc: PositiveInt = 1  # processes per machine for DDP (one per GPU under CUDA); 1 = no DDP

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {v!r}")
        return v


class RuntimeParams(Strict):
    """Knobs that change how fast a stage runs, never its results: no stage reruns when they change."""

    progress: bool = True          # one line per training epoch
    num_workers: NonNegativeInt = 0
    eval_batch_size: PositiveInt = 1000


class InferParams(Strict):
    beam_width: PositiveInt = 2  # the authors' k; 1 is greedy
    backoff_precision: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95  # back-off's tau reaches it on validation
    calibrate: bool = True  # temperature scaling of path probabilities, fitted on validation (evaluation/calibration.py)


class GridParams(Strict):
    variants: Annotated[list[str], Field(min_length=1)]
    seeds: Annotated[list[NonNegativeInt], Field(min_length=1)]

    @field_validator("variants", "seeds")
    @classmethod
    def _unique(cls, v: list) -> list:
        seen = [x for i, x in enumerate(v) if x in v[:i]]
        if seen:
            raise ValueError(f"listed twice: {seen}")
        return v


# -- the whole file ------------------------------------------------------------------------------

class Params(Strict):
    data: DataParams
    taxonomy: TaxonomyParams = TaxonomyParams()
    train: TrainParams = TrainParams()
    runtime: RuntimeParams = RuntimeParams()
    infer: InferParams = InferParams()
    grid: GridParams
    variants: dict[Annotated[str, Field(pattern=NAME)], Variant]
    blocks: dict[str, Any] = {}  # YAML anchors the variants share; read by nothing else
    _source: str = PrivateAttr(default="params")

    @property
    def source(self) -> str:
        """The file these params were read from, for error messages."""
        return self._source

    @model_validator(mode="after")
    def _grid_in_variants(self) -> "Params":
        for name in self.grid.variants:
            if name not in self.variants:
                close = difflib.get_close_matches(name, list(self.variants), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else f"; defined: {', '.join(self.variants)}"
                raise ValueError(f"grid.variants: {name!r} is not defined under variants{hint}")
        return self

    def variant(self, name: str) -> dict:
        """One variant's entry as a plain dict, defaults filled in."""
        if name not in self.variants:
            raise KeyError(f"variant {name!r} is not defined; defined: {', '.join(self.variants)}")
        return self.variants[name].model_dump()

    def section(self, name: str) -> dict:
        """One section as a plain dict, defaults filled in."""
        return getattr(self, name).model_dump()


def _where(loc: tuple, raw: Any) -> str:
    """A dotted key path from a pydantic error location, without the union tags pydantic inserts."""
    parts, node = [], raw
    for i, item in enumerate(loc):
        if isinstance(node, dict) and item in (node.get("name"), node.get("kind")) and (
                i + 1 == len(loc) or loc[i + 1] in node or item not in node):
            continue  # the discriminator's tag (a variant of kind rnn also has a key rnn)
        parts.append(str(item))
        node = node.get(item) if isinstance(node, dict) else node[item] if (
            isinstance(node, list) and isinstance(item, int) and item < len(node)) else None
    return ".".join(parts)


def _explain(err: ValidationError, raw: Any, where: str) -> ParamsError:
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown {e['ctx']['discriminator'].strip(chr(39))} {e['ctx']['tag']!r}; expected one of {e['ctx']['expected_tags']}"
        key = _where(e["loc"], raw)
        lines.append(f"{where}: {key}: {msg}" if key else f"{where}: {msg}")
    return ParamsError("\n".join(dict.fromkeys(lines)))


def validate(raw: Any, where: str = "params") -> Params:
    """Validate a params mapping; errors name ``where`` and the key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise _explain(err, raw, where) from None
    params._source = where
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file (relative paths resolve against the project root)."""
    from .paths import resolve

    path = resolve(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such parameter file; restore it with `git checkout {path.name}`, or start "
                          f"from a profile: `cp configs/demo.yaml {path.name}` (configs/ holds the others)") from None
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path}: not UTF-8 text ({err})") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return validate(raw, str(path))


def settings(model: Any, cfg: dict | None, where: str = "params") -> dict:
    """``cfg`` checked against one section model (or a union such as DataParams), defaults filled in."""
    from pydantic import TypeAdapter

    try:
        return TypeAdapter(model).validate_python(cfg or {}).model_dump()
    except ValidationError as err:
        raise _explain(err, cfg, where) from None


def main(argv: list[str] | None = None) -> int:
    """``python -m dhnn.params [FILE]``: check a params file; exit 1 with the reasons when it is wrong."""
    path = (sys.argv[1:] if argv is None else argv) or ["params.yaml"]
    try:
        params = load_params(path[0])
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    runs = len(params.grid.variants) * len(params.grid.seeds)
    print(f"{path[0]}: valid ({len(params.grid.variants)} variants x {len(params.grid.seeds)} seeds = {runs} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
