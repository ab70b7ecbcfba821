"""Every kind of data set through `dvc repro`, on fixtures written in the official formats."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from test_datasets import INAT, PATHS, write_images  # noqa: E402
from test_openimages import HIERARCHY, NAMES  # noqa: E402
from test_pipeline import ROOT, TINY_BACKBONE, _dvc, copy_project  # noqa: E402

SMALL = {"resize": 36, "crop": 32}
# The CIFAR fixture can't match the official files' md5, which torchvision checks: every process
# of the pipeline (papermill kernels included) imports this sitecustomize, which skips that check.
SITECUSTOMIZE = """import torchvision.datasets.cifar as c
c.check_integrity = lambda *args, **kwargs: True
"""


def _image_folder(root: Path) -> tuple[dict, dict]:
    for k, name in enumerate(["Sneaker", "Bag", "Dress"]):
        write_images(root / "data" / "images" / name, 8, seed=k)
    (root / "taxonomies" / "tree.csv").write_text("parent,child\n" + "".join(
        f"{a},{b}\n" for a, b in sorted({(a, b) for p in PATHS for a, b in zip(p, p[1:])})))
    data = {"name": "image_folder", "root": "data/images", "val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0,
            "transform": SMALL}
    return data, {"source": "taxonomies/tree.csv"}


def _inaturalist(root: Path) -> tuple[dict, dict]:
    for i, name in enumerate(INAT):
        write_images(root / "data" / "inat" / "train" / name, 6, seed=i)
        write_images(root / "data" / "inat" / "val" / name, 2, seed=10 + i)
    data = {"name": "inaturalist", "root": "data/inat", "folders": {"val": None, "test": "val"}, "val_fraction": 0.25,
            "depth": 3, "split_seed": 0, "transform": SMALL}
    return data, {"source": None}


def _cifar100(root: Path) -> tuple[dict, dict]:
    folder = root / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in [("train", 40), ("test", 16)]:
        fine = [i % 4 for i in range(n)]
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": fine,
                 "coarse_labels": [f // 2 for f in fine], "filenames": [f"{i}.png" for i in range(n)],
                 "batch_label": split}
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": ["aquarium_fish", "flatfish", "orchid", "poppy"],
                                                "coarse_label_names": ["fish", "flowers"]}, protocol=2))
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {"name": "cifar100", "root": "data", "val_fraction": 0.2, "split_seed": 0}, {"source": None}


def _open_images(root: Path) -> tuple[dict, dict]:
    oi = root / "data" / "oi"
    oi.mkdir(parents=True)
    (oi / "hierarchy.json").write_text(json.dumps(HIERARCHY))
    (oi / "class-descriptions.csv").write_text("".join(f"{k},{v}\n" for k, v in NAMES.items()))
    pool = ["/m/dog", "/m/cat", "/m/eagle", "/m/apple", "/m/carrot", "/m/car", "/m/bird", "/m/jaguar_cat", "/m/food"]
    rng = np.random.default_rng(0)
    for split, n in [("train", 24), ("validation", 8), ("test", 8)]:
        rows = ["ImageID,Source,LabelName,Confidence"]
        (oi / split).mkdir()
        for i in range(n):
            image_id = f"{split}{i:03d}"
            for label in rng.choice(pool, size=1 + i % 2, replace=False):  # one or two paths per image
                rows.append(f"{image_id},verification,{label},1")
            rows.append(f"{image_id},verification,/m/vehicle,0")  # a verified negative
            Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(oi / split / f"{image_id}.jpg")
        (oi / f"{split}-labels.csv").write_text("\n".join(rows) + "\n")
    data = {"name": "open_images", "root": "data/oi", "hierarchy": "hierarchy.json",
            "class_descriptions": "class-descriptions.csv", "max_depth": 3, "multi_parent": "first",
            "labels": {"train": "train-labels.csv", "val": "validation-labels.csv", "test": "test-labels.csv"},
            "images": {"train": "train", "val": "validation", "test": "test"}, "split_seed": 0,
            "transform": SMALL}
    return data, {"source": None}


KINDS = {"image_folder": (_image_folder, 3), "inaturalist": (_inaturalist, 3), "cifar100": (_cifar100, 2),
         "open_images": (_open_images, 3)}
LAYERS = {2: [["layer4"], ["layer3", "layer2"]], 3: [["layer4"], ["layer3"], ["layer2", "layer1"]]}


@pytest.mark.parametrize("kind", list(KINDS))
def test_dvc_repro_on_each_kind_of_data(kind: str, tmp_path: Path) -> None:
    write, depth = KINDS[kind]
    project = copy_project(tmp_path / "project", real_data=False)
    data, taxonomy = write(project)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"] = {**data, "limit_train": None, "limit_test": None}
    params["taxonomy"] = taxonomy
    params["train"].update(epochs=1, batch_size=8, progress=False, level_weights=[1.0] * depth)
    params["infer"].update(batch_size=16)
    # the flat baseline's own multi-label head is new on Open Images; elsewhere one model keeps the test short
    variants = ["Flat", "RNN-Pool-Resi"] if kind == "open_images" else ["RNN-Pool-Resi"]
    params["grid"] = {"variants": variants, "seeds": [0]}
    for name in params["grid"]["variants"]:
        params["variants"][name]["backbone"] = TINY_BACKBONE
    params["variants"]["RNN-Pool-Resi"]["level_layers"] = LAYERS[depth]
    params["variants"]["RNN-Pool-Resi"]["rnn"]["hidden_size"] = 16
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"PYTHONPATH": str(project / "site")} if kind == "cifar100" else {}
    _dvc(project, "repro", env=env)

    table = (project / "results" / "report" / "results.md").read_text()
    assert all(name in table for name in variants)
    metrics = json.loads((project / "results" / "infer" / "RNN-Pool-Resi-seed0" / "metrics.json").read_text())
    if kind == "open_images":  # the paper's F1 scores, thresholds chosen on validation
        assert 0.0 <= metrics["path_f1"] <= 1.0 and 0.0 <= metrics["node_f1"] <= 1.0
        assert metrics["path_targets"] == "original"
    else:
        assert len(metrics["level_accuracy"]) == depth and 0.0 <= metrics["path_accuracy"] <= 1.0
    assert "up to date" in _dvc(project, "status", env=env).stdout
