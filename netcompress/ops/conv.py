"""Stride-1 2-D convolutions of the CPU fast paths of the convolution layers (layers/vision.py): by NNPACK (the FFT
rule) and as a direct sum over a pruned kernel's nonzero weights (the sparse rule)."""
from __future__ import annotations

import functools
from typing import Sequence

import torch

from ._common import ops as _ops

__all__ = ["direct_conv2d_weight", "nnpack_available", "nnpack_conv2d", "sparse_conv2d", "sparse_conv2d_input"]


def _conv2d_fake(name: str):
    def fake(x, weight, bias, padding):
        torch._check(x.dim() == 4 and weight.dim() == 4, lambda: f"{name}: x and weight must be 4-D")
        out_h = x.shape[2] + 2 * padding[0] - weight.shape[2] + 1
        out_w = x.shape[3] + 2 * padding[1] - weight.shape[3] + 1
        return x.new_empty((x.shape[0], weight.shape[0], out_h, out_w))
    return fake


torch.library.register_fake("netcompress::nnpack_conv2d")(_conv2d_fake("nnpack_conv2d"))
torch.library.register_fake("netcompress::sparse_conv2d")(_conv2d_fake("sparse_conv2d"))


@torch.library.register_fake("netcompress::sparse_conv2d_input")
def _sparse_conv2d_input_fake(grad_out, weight, input_size, padding):
    torch._check(grad_out.dim() == 4 and weight.dim() == 4,
                 lambda: "sparse_conv2d_input: grad_out and weight must be 4-D")
    return grad_out.new_empty((grad_out.shape[0], weight.shape[1], input_size[0], input_size[1]))


@torch.library.register_fake("netcompress::direct_conv2d_weight")
def _direct_conv2d_weight_fake(x, grad_out, kernel_size, padding):
    torch._check(x.dim() == 4 and grad_out.dim() == 4, lambda: "direct_conv2d_weight: x and grad_out must be 4-D")
    return (x.new_empty((grad_out.shape[1], x.shape[1], kernel_size[0], kernel_size[1])),
            x.new_empty((grad_out.shape[1],)))


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


def sparse_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  padding: Sequence[int]) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, stride=1, padding=padding)` for float32 CPU tensors (N, C, H, W) as a direct sum
    over the kernel's nonzero weights only: time in proportion to them, and windows that agree wherever the kernel
    is nonzero give the same bits (each output is its weights' products added in (input channel, kernel row,
    kernel column) order, then the bias). Rounding like a direct convolution's (a few float32 ulps of the output's
    scale); the same values on any machine and any number of threads (the batch is split over ATen's threads).
    A zero weight's products are skipped, so an infinite input under it gives no NaN. Not differentiable
    (layers/vision.py wraps it)."""
    return _ops.sparse_conv2d(x, weight, bias, [int(p) for p in padding])


def sparse_conv2d_input(grad_out: torch.Tensor, weight: torch.Tensor, input_size: Sequence[int],
                        padding: Sequence[int]) -> torch.Tensor:
    """The data gradient of sparse_conv2d: the gradient of x (N, C, *input_size) of `F.conv2d(x, weight, stride=1,
    padding=padding)` for the output gradient grad_out (float32 CPU), over the kernel's nonzero weights only (time
    in proportion to them). Rounding like a direct convolution's; the same values on any machine and any number
    of threads."""
    return _ops.sparse_conv2d_input(grad_out, weight, [int(s) for s in input_size], [int(p) for p in padding])


def direct_conv2d_weight(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: Sequence[int],
                         padding: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias gradients of `F.conv2d(x, weight, bias, stride=1, padding=padding)` for the output
    gradient grad_out (float32 CPU): (O, C, *kernel_size) and (O,), every weight's as a direct dot product over the
    batch and the output positions. The batch's sums are added in fixed groups of samples, in order, so the values
    are the same on any machine and any number of threads."""
    return _ops.direct_conv2d_weight(x, grad_out, [int(k) for k in kernel_size], [int(p) for p in padding])
