"""The ``data.fetch`` section of params.yaml (Open Images), apart so that dhnn/params.py stays short."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

SPLITS = ("train", "val", "test")
OI = "https://storage.googleapis.com/openimages/"  # the official files' published locations (the V6 download page)


class FetchParams(BaseModel):
    """The fetch stage: Open Images' metadata over HTTPS, then the tree's JPEGs from S3 (unsigned), resized."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: dict[Literal["hierarchy", "class_descriptions", "train", "val", "test"], str] = {
        "hierarchy": OI + "2018_04/bbox_labels_600_hierarchy.json", "class_descriptions": OI + "v5/class-descriptions-boxable.csv",
        **{s: f"{OI}v5/{f}-annotations-human-imagelabels-boxable.csv" for s, f in zip(SPLITS, ("train", "validation", "test"))}}
    bucket: str = "open-images-dataset"  # keys <prefixes[split]>/<ImageID>.jpg
    prefixes: dict[Literal["train", "val", "test"], str] = dict(zip(SPLITS, ("train", "validation", "test")))
    endpoint_url: str | None = None  # None: AWS S3 (region below); the tests point it at a loopback server
    region: str = "us-east-1"
    max_images_per_split: PositiveInt | None = None  # the first N of each split in a fixed hashed order; None: all
    workers: PositiveInt = 16
    resize_short_side: PositiveInt | None = 256  # None keeps the originals (hundreds of GB for all)
    quality: Annotated[int, Field(ge=1, le=95)] = 90  # JPEG quality of the resized files
    retries: NonNegativeInt = 3  # per file after the first try, waiting backoff, 2 x backoff, ... seconds
    backoff: NonNegativeFloat = 0.5
    timeout: PositiveFloat = 30.0  # seconds to connect, and between bytes
    est_kb_per_image: PositiveFloat = 25.0  # the disk check's size per image until 100 are fetched
    free_gb_after: NonNegativeFloat = 1.0  # the disk check keeps this much free after the estimate
