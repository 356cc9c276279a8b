"""Caffe's weight fillers, with Caffe's fan computations (not PyTorch's init defaults).

fan_in = count / shape[0] and fan_out = count / shape[1], as in Caffe, whatever the blob's rank.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .errors import NetDefinitionError
from .proto import caffe_pb2 as pb
from .rng import CaffeRNG

__all__ = ["fill", "check_filler", "FILLER_TYPES"]

FILLER_TYPES = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")


def _fans(shape: torch.Size) -> tuple[float, float]:
    count = math.prod(shape)
    fan_in = count / shape[0] if len(shape) >= 1 and shape[0] else 0.0
    fan_out = count / shape[1] if len(shape) >= 2 and shape[1] else (count if len(shape) == 1 else 0.0)
    return fan_in, fan_out


def _norm_n(f: pb.FillerParameter, shape: torch.Size) -> float:
    fan_in, fan_out = _fans(shape)
    if f.variance_norm == pb.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if f.variance_norm == pb.FillerParameter.FAN_OUT:
        return fan_out
    return fan_in


class _TorchStream:
    """The CaffeRNG drawing interface over a torch.Generator (for layers that refill in forward
    from their own, snapshotted generator, e.g. DummyData)."""

    def __init__(self, gen: torch.Generator):
        self.gen = gen

    def uniform(self, n: int, a: float, b: float) -> np.ndarray:
        return torch.empty(n).uniform_(float(a), float(b), generator=self.gen).numpy()

    def normal(self, n: int, mean: float, std: float) -> np.ndarray:
        return torch.empty(n).normal_(float(mean), float(std), generator=self.gen).numpy()

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        return (torch.rand(n, generator=self.gen) < float(p)).float().numpy()


def check_filler(filler: pb.FillerParameter, where: str = "") -> None:
    """Caffe's filler CHECKs, made before any draw: finite parameters, min <= max for "uniform"
    (an inverted range would redraw forever), std >= 0 for "gaussian"."""
    t = filler.type
    used = {"constant": ("value",), "uniform": ("min", "max"), "gaussian": ("mean", "std")}.get(t, ())
    for f in used:
        v = getattr(filler, f)
        if not math.isfinite(v):
            raise NetDefinitionError(f"{where}{t} filler: {f} must be a finite number, got {v}")
    if t == "uniform":
        if filler.min > filler.max:
            raise NetDefinitionError(f"{where}uniform filler: min ({filler.min:g}) must not exceed max "
                                     f"({filler.max:g})")
        if not math.isfinite(float(np.float32(filler.max)) - float(np.float32(filler.min))):
            raise NetDefinitionError(f"{where}uniform filler: the range [{filler.min:g}, {filler.max:g}] is "
                                     "wider than float32 can hold")
    if t == "gaussian" and filler.std < 0:
        raise NetDefinitionError(f"{where}gaussian filler: std must be >= 0, got {filler.std:g}")


def fill(tensor: torch.Tensor, filler: pb.FillerParameter, rng: CaffeRNG | torch.Generator | None = None,
         where: str = "") -> torch.Tensor:
    """Fill `tensor` in place according to `filler` and return it.

    Random values come from `rng`, the net's Caffe-compatible stream (netcompress.rng), in the
    order Caffe draws them, so a seeded net starts from Caffe's own initial weights; `where`
    names the layer for error messages.
    """
    check_filler(filler, where)
    t = filler.type
    shape = tuple(tensor.shape)
    n = math.prod(shape)
    rng = CaffeRNG() if rng is None else _TorchStream(rng) if isinstance(rng, torch.Generator) else rng
    f32 = np.float32
    if t == "constant":
        vals = np.full(n, f32(filler.value), np.float32)
    elif t == "uniform":
        vals = rng.uniform(n, filler.min, filler.max)
    elif t == "gaussian":
        vals = rng.normal(n, filler.mean, filler.std)
        if filler.sparse >= 0:
            if len(shape) < 1 or shape[0] == 0:
                raise NetDefinitionError(f"{where}gaussian filler with sparse needs a blob with a "
                                         f"first axis, got shape {list(shape)}")
            vals *= rng.bernoulli(n, f32(filler.sparse) / f32(shape[0]))
    elif t == "positive_unitball":
        vals = rng.uniform(n, 0.0, 1.0)
        num = shape[0] if len(shape) else 1
        rows = vals.reshape(num, -1)
        for i in range(num):  # Caffe sums each row sequentially in float
            rows[i] /= np.add.accumulate(rows[i], dtype=np.float32)[-1] if rows.shape[1] else f32(1)
    elif t in ("xavier", "msra") and n == 0:
        vals = np.empty(0, np.float32)  # an empty blob: its fan is 0 and its scale infinite, but nothing is drawn
    elif t == "xavier":
        scale = np.sqrt(f32(3.0) / f32(_norm_n(filler, shape)), dtype=np.float32)
        vals = rng.uniform(n, -scale, scale)
    elif t == "msra":
        std = np.sqrt(f32(2.0) / f32(_norm_n(filler, shape)), dtype=np.float32)
        vals = rng.normal(n, 0.0, float(std))
    elif t == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise NetDefinitionError(f"{where}bilinear filler needs a 4-D blob with square kernels, "
                                     f"got shape {list(shape)}")
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        idx = np.arange(k, dtype=np.float32)
        w = f32(1) - np.abs(idx / f32(f) - f32(c))
        vals = np.broadcast_to(w[:, None] * w[None, :], shape).astype(np.float32).reshape(-1)
    else:
        raise NetDefinitionError(f"{where}unknown filler type '{t}' (known: {', '.join(FILLER_TYPES)})")
    with torch.no_grad():
        tensor.copy_(torch.from_numpy(np.ascontiguousarray(vals).reshape(shape)))
    return tensor
