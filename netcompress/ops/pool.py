"""Max pooling with ATen's results and indices (a faster CPU kernel; ATen's on CUDA)."""
from __future__ import annotations

import torch

from ._common import ops as _ops

__all__ = ["max_pool2d"]


def _pooled(size: int, k: int, pad: int, stride: int, ceil_mode: bool) -> int:
    # aten's pooling_output_shape, dilation 1
    out = (size + 2 * pad - k + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@torch.library.register_fake("netcompress::max_pool2d")
def _max_pool2d_fake(x, kernel_size, stride, padding, ceil_mode):
    shape = (*x.shape[:-2], _pooled(x.shape[-2], kernel_size[0], padding[0], stride[0], ceil_mode),
             _pooled(x.shape[-1], kernel_size[1], padding[1], stride[1], ceil_mode))
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.long)


@torch.library.register_fake("netcompress::_max_pool2d_backward")
def _max_pool2d_backward_fake(grad, x, indices, kernel_size, stride, padding, ceil_mode):
    return torch.empty_like(x)


# Autograd (csrc/autograd.cpp, in C++): ATen's gradient of max_pool2d_with_indices, with the same indices, so
# the same scatter, by `_max_pool2d_backward` (on the CPU one pass where the windows tile the input, bit for bit
# ATen's result); the indices output is not differentiable.


def max_pool2d(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int] = (0, 0), ceil_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`F.max_pool2d(x, ..., return_indices=True)` with dilation 1: the same values and int64 indices.

    x: (N, C, H, W) or (C, H, W), floating. The first maximum of a window in row-major order wins; NaN
    propagates. The CPU kernel is several times faster than ATen's for NCHW tensors; on CUDA this is ATen's.
    Differentiable in x (ATen's max_pool2d_with_indices_backward).
    """
    return _ops.max_pool2d(x, list(kernel_size), list(stride), list(padding), bool(ceil_mode))
