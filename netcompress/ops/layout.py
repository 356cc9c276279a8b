"""NCHW <-> NHWC copies of 4-D tensors (the channels-last edges of the CPU convolutions; ATen's copy on CUDA)."""
from __future__ import annotations

import torch

from ._common import is_compiling as _is_compiling, lean as _lean, ops as _ops

__all__ = ["to_channels_last", "to_contiguous"]


@torch.library.register_fake("netcompress::to_channels_last")
def _to_channels_last_fake(x):
    return torch.empty_like(x, memory_format=torch.channels_last)


@torch.library.register_fake("netcompress::to_contiguous")
def _to_contiguous_fake(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A new tensor with x's values (N, C, H, W) in channels-last memory order, as
    `x.contiguous(memory_format=torch.channels_last)`. On a CPU with AVX2, float32 NCHW input is transposed
    sample by sample in 8x8 register tiles, about 3x faster than ATen's element-wise copy; anything else is
    ATen's copy. Not differentiable (layers/vision.py wraps it)."""
    if _is_compiling():
        return _ops.to_channels_last(x)
    return _lean.to_channels_last(x)


def to_contiguous(x: torch.Tensor) -> torch.Tensor:
    """A new tensor with x's values in contiguous (NCHW) memory order, as `x.contiguous()`; the inverse
    transpose of `to_channels_last` for channels-last float32 input. Not differentiable."""
    if _is_compiling():
        return _ops.to_contiguous(x)
    return _lean.to_contiguous(x)
