"""Conversions g: R^{C x H x W} -> R^p that turn one CNN feature map into an RNN input (slides, "Conversion").

Every module maps a batch [B, C, H, W] to [B, p] and exposes ``out_features`` (= p):

- ``pool``:        vec(Pool(a)), adaptive pooling per channel to an (h, w) grid; no trainable weights (slides).
- ``pool_linear``: repeated 2x2 stride-2 pooling, then one dense matrix (the authors' code, option 3.1).
- ``linear``:      vec(a x1 U1 x2 U2 x3 U3), three small factor matrices (slides).
- ``dense``:       vec(a) times one dense matrix (the authors' code's "linear").
- ``conv``:        vec(Conv(a)), VALID padding; by default the kernel covers the whole map (slides).

``create_conversion`` builds one from a ``conversion`` entry of params.yaml; ``conversion_cost``
measures its parameter count and the activation memory it keeps for backward.
"""
from __future__ import annotations

import inspect
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

Shape = tuple[int, int, int]  # (C, H, W) of one sample's feature map


def _check_shape(shape: Sequence[int]) -> Shape:
    """``shape`` as a (C, H, W) tuple of positive ints, or a ValueError."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"a feature map shape must be three positive ints (C, H, W), got {shape}")
    return shape


def _check_positive(name: str, values: Sequence[int], length: int) -> tuple[int, ...]:
    """``values`` as a tuple of ``length`` positive ints, or a ValueError naming ``name``."""
    ok = isinstance(values, (list, tuple)) and len(values) == length
    if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be {length} positive ints, got {values!r}")
    return tuple(int(v) for v in values)


class PoolConversion(nn.Module):
    """g(a) = vec(Pool(a)): adaptive pooling of a [C, H, W] map to a fixed grid; no trainable weights.

    ``grid`` [h, w] pools each channel over space to h x w, as the slides' pooling does: channels are
    never mixed, and p = C*h*w depends on the layer (LevelInputs pads the shorter ones with zeros).
    ``grid`` [c, h, w] also pools across channels, to c groups, so that every layer gives the same
    p = c*h*w: only when a variant asks for it, as it averages unrelated channels together.
    """

    def __init__(self, shape: Sequence[int], grid: Sequence[int], mode: str = "max"):
        super().__init__()
        c = _check_shape(shape)[0]
        if mode not in ("max", "avg"):
            raise ValueError(f"pooling mode must be 'max' or 'avg', got {mode!r}")
        if not isinstance(grid, (list, tuple)) or len(grid) not in (2, 3):
            raise ValueError(f"grid must be [h, w] (per channel) or [c, h, w] (across channels too), got {grid!r}")
        self.grid, self.mode = _check_positive("grid", grid, len(grid)), mode
        self.out_features = math.prod(self.grid) * (c if len(self.grid) == 2 else 1)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if len(self.grid) == 2:
            pool = F.adaptive_max_pool2d if self.mode == "max" else F.adaptive_avg_pool2d
            return pool(a, self.grid).flatten(1)
        pool = F.adaptive_max_pool3d if self.mode == "max" else F.adaptive_avg_pool3d
        return pool(a.unsqueeze(1), self.grid).flatten(1)


class PoolLinearConversion(nn.Module):
    """The authors' option 3.1: 2x2 stride-2 pooling ``repeats`` times, then vec and a linear map (no bias) to p.

    ``repeats=None`` pools while H and W are both at least 2, so every layer arrives at a small map
    (7x7 -> 3x3 -> 1x1). Odd sizes are floored (VALID pooling).
    """

    def __init__(self, shape: Sequence[int], p: int, repeats: int | None = None, mode: str = "max"):
        super().__init__()
        c, h, w = _check_shape(shape)
        if mode not in ("max", "avg"):
            raise ValueError(f"pooling mode must be 'max' or 'avg', got {mode!r}")
        (p,) = _check_positive("p", [p], 1)
        if repeats is None:
            repeats = 0
            while min(h >> repeats, w >> repeats) >= 2:
                repeats += 1
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 0:
            raise ValueError(f"repeats must be a non-negative int or None, got {repeats!r}")
        if min(h, w) >> repeats < 1:
            raise ValueError(f"{repeats} 2x2 poolings shrink a {h}x{w} map to nothing; use at most "
                             f"{int(math.log2(min(h, w)))}")
        self.repeats, self.mode = int(repeats), mode
        self.pooled_shape = (c, h >> self.repeats, w >> self.repeats)  # floor(x / 2) applied repeats times
        self.linear = nn.Linear(math.prod(self.pooled_shape), p, bias=False)
        nn.init.normal_(self.linear.weight, std=self.linear.in_features ** -0.5)  # keeps the input's variance
        self.out_features = p

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d if self.mode == "max" else F.avg_pool2d
        for _ in range(self.repeats):
            a = pool(a, kernel_size=2, stride=2)
        return self.linear(a.flatten(1))


def _unit_rows(rows: int, cols: int) -> torch.Tensor:
    """A random [rows, cols] matrix whose rows have unit norm (directions uniform on the sphere)."""
    u = torch.randn(rows, cols)
    return u / u.norm(dim=1, keepdim=True)


class NModeLinear(nn.Module):
    """The slides' linear conversion g(a) = vec(a x1 U1 x2 U2 x3 U3), p = m*n*v.

    The slides write a as D x W x H (channels, width, height); here a sample is [C, H, W] as in
    PyTorch, so U1 in R^{m x C} acts on channels, U2 in R^{n x W} on width and U3 in R^{v x H} on
    height. The product b = a x1 U1 x2 U2 x3 U3 is an m x n x v tensor,
    b[i, j, k] = sum_{c, y, x} a[c, y, x] U1[i, c] U2[j, x] U3[k, y], and vec is row-major over
    (i, j, k): entry i*n*v + j*v + k. (Any fixed order serves, as the RNN's input weights follow.)

    Init: every row of each U_k is a random unit vector. For an input of independent entries,
    Var(b[i, j, k]) = |U1[i]|^2 |U2[j]|^2 |U3[k]|^2 Var(a) = Var(a): the output keeps the input's
    scale exactly, where N(0, 1/in_k) factors would only do so on average (three random norms
    multiply, so single draws stray by tens of percent). No bias, as in the slides.
    """

    def __init__(self, shape: Sequence[int], out: Sequence[int]):
        super().__init__()
        c, h, w = _check_shape(shape)
        m, n, v = _check_positive("out [m, n, v]", out, 3)
        self.u1 = nn.Parameter(_unit_rows(m, c))
        self.u2 = nn.Parameter(_unit_rows(n, w))
        self.u3 = nn.Parameter(_unit_rows(v, h))
        self.out_features = m * n * v

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bcyx,ic,jx,ky->bijk", a, self.u1, self.u2, self.u3).flatten(1)


class DenseLinear(nn.Module):
    """The authors' code's linear conversion: vec(a) times one dense (C*H*W) x p matrix, no bias.

    vec(a) is a.flatten() of the [C, H, W] sample; the weight is N(0, 1/(C*H*W)), which keeps the
    input's variance (LeCun init; with p*C*H*W entries the average is tight, unlike three small factors).
    """

    def __init__(self, shape: Sequence[int], p: int):
        super().__init__()
        (p,) = _check_positive("p", [p], 1)
        self.linear = nn.Linear(math.prod(_check_shape(shape)), p, bias=False)
        nn.init.normal_(self.linear.weight, std=self.linear.in_features ** -0.5)
        self.out_features = p

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.linear(a.flatten(1))


class ConvConversion(nn.Module):
    """g(a) = vec(Conv(a)) with VALID padding; by default the kernel covers the whole H x W (the slides).

    ``kernel=None`` gives a 1 x 1 x ``channels`` output, p = channels; a kernel (kh, kw) gives
    p = channels * (H-kh+1) * (W-kw+1), flattened channel-major. The convolution keeps its bias: the
    slides only name "trainable parameters", and a bias costs ``channels`` numbers.
    """

    def __init__(self, shape: Sequence[int], channels: int, kernel: int | Sequence[int] | None = None):
        super().__init__()
        c, h, w = _check_shape(shape)
        (channels,) = _check_positive("channels", [channels], 1)
        if kernel is None:
            kernel = (h, w)
        elif isinstance(kernel, int):
            kernel = (kernel, kernel)
        kh, kw = _check_positive("kernel", kernel, 2)
        if kh > h or kw > w:
            raise ValueError(f"kernel {kh}x{kw} is larger than the {h}x{w} feature map (VALID padding)")
        self.conv = nn.Conv2d(c, channels, (kh, kw), padding=0)
        self.out_features = channels * (h - kh + 1) * (w - kw + 1)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.conv(a).flatten(1)


# kind -> (class, whether it takes the feature map shape)
CONVERSIONS: dict[str, tuple[type[nn.Module], bool]] = {
    "pool": (PoolConversion, True),
    "pool_linear": (PoolLinearConversion, True),
    "linear": (NModeLinear, True),
    "dense": (DenseLinear, True),
    "conv": (ConvConversion, True),
}


def conversion_keys(kind: str) -> tuple[list[str], list[str]]:
    """(required, optional) config keys of a conversion kind."""
    if kind not in CONVERSIONS:
        raise ValueError(f"unknown conversion {kind!r}; expected one of {sorted(CONVERSIONS)}")
    cls, takes_shape = CONVERSIONS[kind]
    params = list(inspect.signature(cls.__init__).parameters.values())[1 + takes_shape:]  # drop self (and shape)
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    optional = [p.name for p in params if p.default is not inspect.Parameter.empty]
    return required, optional


def create_conversion(kind: str, shape: Sequence[int], **cfg) -> nn.Module:
    """The conversion g of ``kind`` for a feature map of ``shape`` (C, H, W); ``cfg`` holds the kind's keys."""
    required, optional = conversion_keys(kind)
    unknown = sorted(set(cfg) - set(required) - set(optional))
    missing = [k for k in required if k not in cfg]
    if unknown or missing:
        problem = "; ".join(filter(None, [f"unknown keys {unknown}" if unknown else "",
                                          f"missing keys {missing}" if missing else ""]))
        raise ValueError(f"conversion {kind!r}: {problem}. It takes {required} (required) and {optional} (optional)")
    cls, takes_shape = CONVERSIONS[kind]
    return cls(_check_shape(shape), **cfg) if takes_shape else cls(**cfg)


def conversion_cost(module: nn.Module, shape: Sequence[int]) -> dict[str, int]:
    """Trainable ``params``, and the ``activation_bytes`` and ``output_bytes`` of one training forward of one sample.

    activation_bytes sums the tensors autograd saves for backward (packed through
    ``saved_tensors_hooks``), each storage counted once; parameters saved for backward are left out,
    as they are the weights themselves (``params``), not per-sample memory. The input counts when it
    is saved, since the conversion then keeps it alive; ``input_saved_bytes`` is that share, which
    costs nothing extra when the next CNN block saves the same map anyway.
    """
    shape = _check_shape(shape)
    param = next(module.parameters(), None)
    a = torch.randn(1, *shape, device=param.device if param is not None else None, requires_grad=True)
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    input_ptr = a.untyped_storage().data_ptr()
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:  # a view of a saved tensor shares its storage: count the larger once
            saved[ptr] = max(saved.get(ptr, 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(a)
    return {
        "params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "activation_bytes": sum(saved.values()),
        "input_saved_bytes": saved.get(input_ptr, 0),
        "output_bytes": out.numel() * out.element_size(),
    }
