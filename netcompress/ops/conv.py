"""Stride-1 2-D convolution by NNPACK on the CPU (the FFT rule of the convolution layers, layers/vision.py)."""
from __future__ import annotations

import functools
from typing import Sequence

import torch

from ._common import ops as _ops

__all__ = ["nnpack_available", "nnpack_conv2d"]


@torch.library.register_fake("netcompress::nnpack_conv2d")
def _nnpack_conv2d_fake(x, weight, bias, padding):
    torch._check(x.dim() == 4 and weight.dim() == 4, lambda: "nnpack_conv2d: x and weight must be 4-D")
    out_h = x.shape[2] + 2 * padding[0] - weight.shape[2] + 1
    out_w = x.shape[3] + 2 * padding[1] - weight.shape[3] + 1
    return x.new_empty((x.shape[0], weight.shape[0], out_h, out_w))


@functools.lru_cache(maxsize=None)
def nnpack_available() -> bool:
    """Whether this PyTorch has NNPACK and it runs on this CPU (x86-64 needs AVX2). The call also initialises
    NNPACK, which ATen's convolution entry does not do itself."""
    return bool(torch._nnpack_available())


def nnpack_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  padding: Sequence[int]) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, stride=1, padding=padding)` for float32 CPU tensors (N, C, H, W), kernels of at
    most 16x16, each padding below the kernel's size, by NNPACK's FFT or Winograd tiles: NNPACK's rounding (a few
    float32 ulps of the output's scale, like oneDNN's, not the same bits), the same values on any number of
    threads; the batch is split over ATen's threads. An output channel whose kernel is all zeros is its bias
    exactly. Not differentiable (layers/vision.py wraps it)."""
    return _ops.nnpack_conv2d(x, weight, bias, [int(p) for p in padding])
