"""The paper configurations, checked before any GPU time: schema, model names, and every model built and run.

configs/paper-openimages.yaml must name exactly the models of the slides' Open Images table, and each
must build, run forward and give a multi-label loss on the paper's tree shape (2 / 4 / 24 nodes). The
models are built from random weights (no network here) on thinned stand-ins of the same architectures,
so the 36 builds take about half a minute on two cores: ResNets keep their stages and strides with one
block per stage and 1/8 of the width; VGG-16 keeps its 13 convolutions and pools (so timm's layer
indices) at 1/16 of the width; the S2S and p are 1/16 of the config's. Also here: the per-variant
``epochs`` override, ``downsample``, VGG's conv5 layers and ``pre_logits``.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm.models.vgg
import torch
import yaml

from dhnn.models.backbone import Backbone
from dhnn.models.registry import create_model
from dhnn.params import load_params, validate
from dhnn.taxonomy import Taxonomy

OPEN_IMAGES = Path(__file__).resolve().parents[1] / "configs" / "paper-openimages.yaml"
OPEN_IMAGES_SMALL = OPEN_IMAGES.with_name("openimages-small.yaml")
# the models of the slides' Open Images table
TABLE = [f"{cnn}-50" if cnn != "VGG" else "VGG-16" for cnn in ("VGG", "Res", "SE-Res", "CBAM-Res")] + [
    f"{cnn}-S2S{alt}-{conv}" for cnn in ("VGG", "Res", "SE-Res", "CBAM-Res") for alt in ("", "-Alt")
    for conv in ("Linear", "Conv", "Pool", "Pool-L")]
# the smallest input at which two 2x2 poolings (pool_linear, repeats 2) still leave a map of pool5 / layer4
IMAGE_SIZE = 128


def _tree() -> Taxonomy:
    """The paper's Open Images tree shape: 2 / 4 / 24 nodes per level."""
    return Taxonomy.from_paths([f"L{a}", f"L{a}{b}", f"L{a}{b}{c}"] for a in range(2) for b in range(2)
                               for c in range(6))


def _thin(cfg: dict) -> dict:
    """The variant with random weights, ResNets at one bottleneck per stage and 1/8 of the width, a 1/16 S2S."""
    cfg = copy.deepcopy(cfg)
    backbone = cfg["backbone"]
    backbone["pretrained"] = False
    if backbone["name"] != "vgg16":
        backbone["kwargs"].update(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8)
    elif cfg.get("pre_logits"):
        backbone["kwargs"]["mlp_ratio"] = 1 / 64  # fc6/fc7: 64 hidden channels, not 4096
    if cfg["kind"] == "s2s":
        cfg["s2s"]["end_after"] = "any"  # what "auto" gives on Open Images, where paths may end at level 1 or 2
        # 1/16 of the S2S and of p: the -L S2S's orthogonal inits (QR of 8192 x 2048) take seconds on a CPU
        cfg["s2s"]["hidden_size"] //= 16
        conversion = cfg["conversion"]
        conversion["p" if "p" in conversion else "channels"] //= 16
    return cfg


@pytest.fixture
def thin_vgg(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's VGG-16 at 1/16 of the width: the same 31 feature modules, so features.25 is still conv5_1's ReLU."""
    cfg = [c // 16 if isinstance(c, int) else c for c in timm.models.vgg.cfgs["vgg16"]]
    monkeypatch.setitem(timm.models.vgg.cfgs, "vgg16", cfg)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tensors this small gain nothing from threads; on a shared machine idle OpenMP threads spin for ~8x the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _multi_hot(tree: Taxonomy, ends: list[str]) -> torch.Tensor:
    """Node-set targets with every ancestor switched on (a path may end above the leaves)."""
    y = torch.zeros(len(ends), len(tree))
    for i, node in enumerate(ends):
        y[i, [tree.nodes.index(n) for n in tree.path(node)]] = 1.0
    return y


def test_open_images_config_has_the_tables_models_and_training() -> None:
    params = load_params(OPEN_IMAGES)
    assert sorted(params.variants) == sorted(TABLE) and sorted(params.grid.variants) == sorted(TABLE)
    assert params.grid.seeds == [1234, 2468, 1357]
    t = params.train
    assert (t.optimizer, t.lr, t.batch_size, t.schedule, t.weight_decay) == ("adam", 1e-4, 32, "constant", 0.0)
    for name in TABLE:
        cfg = params.variant(name)
        assert (cfg["epochs"] or t.epochs) == (15 if cfg["kind"] == "flat" else 20), name
        if cfg["kind"] == "s2s":
            alt = cfg["alt"] and (cfg["alt"]["alt1"], cfg["alt"]["alt2"])
            assert alt == ((3, 6) if "-Alt-" in name else None), name
            assert cfg["s2s"]["hidden_size"] == (1024 if name.endswith("-L") else 512), name
            p = cfg["conversion"].get("p") or cfg["conversion"].get("channels")
            assert p == (2048 if name.endswith("-L") else 256), name
    assert params.data.max_depth == 3
    assert params.data.tree == "taxonomies/open_images_paper.csv" and params.data.fetch.resize_short_side == 256


def test_small_open_images_config_is_the_paper_config_on_fewer_images_and_seeds() -> None:
    paper, small = load_params(OPEN_IMAGES), load_params(OPEN_IMAGES_SMALL)
    assert small.variants == paper.variants and small.grid.variants == paper.grid.variants
    assert small.train == paper.train and small.grid.seeds == [1234, 2468]
    assert 1000 <= small.data.fetch.max_images_per_split <= 10000 and paper.data.fetch.max_images_per_split is None
    assert small.data.model_copy(update={"fetch": paper.data.fetch}) == paper.data  # the same tree and data


@pytest.mark.usefixtures("thin_vgg")
def test_every_open_images_model_builds_runs_and_gives_a_loss() -> None:
    params, tree = load_params(OPEN_IMAGES), _tree()
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    y = _multi_hot(tree, ["L000", "L1"])  # a leaf, and a path that ends at level 1
    torch.manual_seed(0)
    for name in params.grid.variants:
        model = create_model(_thin(params.variant(name)), tree, 3, IMAGE_SIZE, multilabel=True)
        out = model(x)
        loss = model.loss(out, y, [1.0, 1.0, 1.0])
        loss.backward()
        assert torch.isfinite(loss), name
        assert model.node_scores(out).shape == (2, len(tree)), name


def test_variant_epochs_override_train_epochs(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train_in_process hands fit a variant's own epochs, else train.epochs."""
    from dhnn.pipeline import train_stage

    asked = []
    monkeypatch.setattr(train_stage, "fit", lambda *args, epochs, **kwargs: asked.append(epochs) or [])
    monkeypatch.setattr(train_stage, "summarize_history", lambda history, select: {})
    raw = yaml.safe_load(Path(OPEN_IMAGES).read_text(encoding="utf-8"))
    raw["runtime"]["num_workers"] = 0
    params, tree = validate(raw), _tree()
    data = torch.utils.data.TensorDataset(torch.zeros(2, 3, 8, 8))
    for name, expected in [("Res-50", 15), ("Res-S2S-Pool", 20)]:
        run = SimpleNamespace(variant=name, seed=0, cfg=params.variant(name), tree=tree, full_tree=None,
                              splits=SimpleNamespace(train=data, val=data), model=None,
                              task=SimpleNamespace(select="loss"), parameters=0, conversion={})
        train_stage.train_in_process(run, params, tmp_path / name)
        assert asked[-1] == expected


def test_downsample_pools_the_named_layers_and_is_checked() -> None:
    layers = ["layer1", "layer2", "layer3", "layer4"]
    kwargs = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}
    plain = Backbone("resnet50", layers, **kwargs).feature_shapes(3, 224)
    assert [plain[k][1:] for k in layers] == [(56, 56), (28, 28), (14, 14), (7, 7)]  # timm's resolutions
    authors = Backbone("resnet50", layers, downsample={"layer1": 2, "layer2": 2, "layer3": 2}, **kwargs)
    shapes = authors.feature_shapes(3, 224)
    assert [shapes[k] for k in layers] == [(32, 28, 28), (64, 14, 14), (128, 7, 7), (256, 7, 7)]  # the authors'
    assert Backbone("resnet50", ["layer3"], downsample={"layer3": 2}, **kwargs).feature_shapes(3, 208)["layer3"] == (
        128, 7, 7)  # 13 px: ceil mode keeps the edge, as TF's SAME padding
    with pytest.raises(ValueError, match="downsample"):
        Backbone("resnet50", ["layer4"], downsample={"layer1": 2}, **kwargs)


@pytest.mark.usefixtures("thin_vgg")
def test_vgg_conv5_layers_and_pre_logits() -> None:
    backbone = Backbone("vgg16", ["features_30", "features.29", "features_27", "features.25"])
    shapes = backbone.feature_shapes(3, 224)
    assert shapes == {"features_30": (32, 7, 7), "features.29": (32, 14, 14), "features_27": (32, 14, 14),
                      "features.25": (32, 14, 14)}  # pool5 and conv5_3, conv5_2, conv5_1 at the authors' sizes
    assert backbone.channels == {"features_30": 32, "features.29": 32, "features_27": 32, "features.25": 32}
    twin = copy.deepcopy(backbone)  # the hooks live on the modules, so a copy reads its own maps
    assert twin(torch.zeros(1, 3, 64, 64))["features.25"].shape == (1, 32, 4, 4)
    with pytest.raises(ValueError, match="no feature layers"):
        Backbone("vgg16", ["features_31"])
    tree = _tree()
    cfg = {"kind": "flat", "backbone": {"name": "vgg16", "kwargs": {"mlp_ratio": 1 / 64}}, "pre_logits": True}
    flat = create_model(cfg, tree, 3, 64, multilabel=True)
    assert flat.fc.in_features == 4096  # fc7's output: the classifier sits on fc6/fc7, not on pooled pool5
    assert flat(torch.zeros(2, 3, 64, 64)).shape == (2, len(tree))
