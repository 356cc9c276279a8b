"""Caffe's weight fillers, with Caffe's fan computations (not PyTorch's init defaults).

fan_in = count / shape[0] and fan_out = count / shape[1], as in Caffe, whatever the blob's rank.
"""
from __future__ import annotations

import math

import torch

from .errors import NetDefinitionError
from .proto import caffe_pb2 as pb

__all__ = ["fill", "FILLER_TYPES"]

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


def fill(tensor: torch.Tensor, filler: pb.FillerParameter, generator: torch.Generator | None = None,
         where: str = "") -> torch.Tensor:
    """Fill `tensor` in place according to `filler` and return it.

    Random draws come from `generator` (a CPU generator) so builds are reproducible; `where`
    names the layer for error messages.
    """
    t = filler.type
    shape = tensor.shape
    cpu = torch.empty(shape, dtype=torch.float64 if tensor.dtype == torch.float64 else torch.float32)
    if t == "constant":
        cpu.fill_(filler.value)
    elif t == "uniform":
        cpu.uniform_(filler.min, filler.max, generator=generator)
    elif t == "gaussian":
        cpu.normal_(filler.mean, filler.std, generator=generator)
        if filler.sparse >= 0:
            if len(shape) < 1 or shape[0] == 0:
                raise NetDefinitionError(f"{where}gaussian filler with sparse needs a blob with a "
                                         f"first axis, got shape {list(shape)}")
            p = filler.sparse / shape[0]
            keep = torch.rand(shape, generator=generator) < p
            cpu.mul_(keep)
    elif t == "positive_unitball":
        cpu.uniform_(0.0, 1.0, generator=generator)
        num = shape[0] if len(shape) else 1
        rows = cpu.reshape(num, -1)
        rows.div_(rows.sum(dim=1, keepdim=True))
    elif t == "xavier":
        n = _norm_n(filler, shape)
        scale = math.sqrt(3.0 / n)
        cpu.uniform_(-scale, scale, generator=generator)
    elif t == "msra":
        n = _norm_n(filler, shape)
        cpu.normal_(0.0, math.sqrt(2.0 / n), generator=generator)
    elif t == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise NetDefinitionError(f"{where}bilinear filler needs a 4-D blob with square kernels, "
                                     f"got shape {list(shape)}")
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        idx = torch.arange(k, dtype=cpu.dtype)
        w = 1 - (idx / f - c).abs()
        cpu.copy_((w[:, None] * w[None, :]).expand(shape))
    else:
        raise NetDefinitionError(f"{where}unknown filler type '{t}' (known: {', '.join(FILLER_TYPES)})")
    with torch.no_grad():
        tensor.copy_(cpu)
    return tensor
