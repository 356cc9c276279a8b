"""Convolution, Deconvolution, Im2col, InnerProduct, Pooling and SPP with Caffe's geometry and numerics."""
from __future__ import annotations

import contextlib
import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import ops
from ..errors import NetDefinitionError, SettingError
from ..fillers import fill
from ..proto import caffe_pb2 as pb
from .base import INT_MAX, Layer, LayerContext, Shape, canonical_axis, register_layer

__all__ = ["Convolution", "Deconvolution", "Im2col", "InnerProduct", "Pooling", "SPP", "canonical_axis"]


def _per_axis(layer: Layer, values: Sequence[int], h: int | None, w: int | None, n: int,
              default: int, what: str) -> tuple[int, ...]:
    """Caffe's rule for kernel/pad/stride/dilation: x_h/x_w (2-D only) or 1 or n repeated values."""
    if h is not None or w is not None:
        if n != 2:
            raise layer.error(f"{what}_h/{what}_w can only be used for 2-D {layer.type_name}, "
                              f"this one has {n} spatial axes")
        if h is None or w is None:
            raise layer.error(f"both {what}_h and {what}_w are required when either is set")
        if len(values):
            raise layer.error(f"either {what} or {what}_h/{what}_w should be given, not both")
        return (int(h), int(w))
    if len(values) == 0:
        return (default,) * n
    if len(values) == 1:
        return (int(values[0]),) * n
    if len(values) != n:
        raise layer.error(f"{what} must be given once or once per spatial axis ({n}), "
                          f"got {len(values)} values")
    return tuple(int(v) for v in values)


def _conv_geometry(layer: Layer, cp: pb.ConvolutionParameter, n: int
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(kernel, pad, stride, dilation) of a convolution_param with `n` spatial axes, by Caffe's
    BaseConvolutionLayer/Im2colLayer rules (`_per_axis`); pad_h or pad_w alone is allowed (the other is 0)."""
    opt = lambda f: getattr(cp, f) if cp.HasField(f) else None  # noqa: E731
    kernel = _per_axis(layer, cp.kernel_size, opt("kernel_h"), opt("kernel_w"), n, 0, "kernel")
    if any(k <= 0 for k in kernel):
        raise layer.error(f"kernel size must be specified and positive, got {list(kernel)}")
    pad_h = cp.pad_h if (cp.HasField("pad_h") or cp.HasField("pad_w")) else None
    pad_w = cp.pad_w if (cp.HasField("pad_h") or cp.HasField("pad_w")) else None
    pad = _per_axis(layer, cp.pad, pad_h, pad_w, n, 0, "pad")
    stride = _per_axis(layer, cp.stride, opt("stride_h"), opt("stride_w"), n, 1, "stride")
    if any(s <= 0 for s in stride):
        raise layer.error(f"stride must be positive, got {list(stride)}")
    dilation = _per_axis(layer, cp.dilation, None, None, n, 1, "dilation")
    if any(d <= 0 for d in dilation):
        raise layer.error(f"convolution_param.dilation must be positive, got {list(dilation)}")
    return kernel, pad, stride, dilation


CONV_LAYOUT_ENV = "NETCOMPRESS_CONV_LAYOUT"
# Below this many output positions (batch x output height x width) a call stays NCHW: the two layout conversions
# then cost more than the unpadded kernel saves (LeNet's conv2 fwd+bwd, 1 thread: batch 1 0.73x, 2-4 0.9-1.1x,
# 8 and up 1.2-1.45x; benchmarks/RESULTS.md).
CHANNELS_LAST_MIN_POSITIONS = 512


def _simd_channels() -> int:
    """The channel block of oneDNN's blocked layouts on this CPU: 16 floats with AVX-512, 8 otherwise."""
    try:
        return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8
    except (AttributeError, RuntimeError):  # torch without get_cpu_capability
        return 8


SIMD_ENV = "NETCOMPRESS_SIMD"  # read by the direct-sum kernels at each call (csrc/cpu/sparse_conv_kernel.cpp)
SIMD_CAPS = ("avx512", "avx2", "baseline")


def _rule_off(env: str, off: str, missing: str | None) -> str | None:
    """Why a rule of the CPU layers is off: the switch `env` set to `off`, or `missing` (what this PyTorch lacks
    for it); None when it applies. Any other value than `off`, "auto" or none is an error (a misspelt switch was
    silently the default)."""
    value = os.environ.get(env, "").strip().lower()
    if value == off:
        return f"{env}={off}"
    if value not in ("", "auto"):
        raise SettingError(f"{env} must be '{off}' (the rule off) or 'auto' (the default), got "
                           f"'{os.environ[env]}'")
    # The direct-sum kernels (chosen under CONV_ALGO's rules) read NETCOMPRESS_SIMD at each call and raise a
    # RuntimeError, reported as a bug, for a bad one: checked here, at set-up, instead.
    if env == CONV_ALGO_ENV and os.environ.get(SIMD_ENV, "") not in ("",) + SIMD_CAPS:
        raise SettingError(f"{SIMD_ENV} must be {', '.join(SIMD_CAPS)} or unset, got '{os.environ[SIMD_ENV]}'")
    return missing


def _onednn_missing() -> str | None:
    """Why PyTorch's oneDNN cannot serve the CPU layers' oneDNN rules, or None."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return "PyTorch's oneDNN backend is not available"
    return None


def _nchw_only() -> str | None:
    """Why every CPU convolution stays NCHW, or None when the layout rule applies."""
    return _rule_off(CONV_LAYOUT_ENV, "nchw", _onednn_missing())


def cpu_conv_layout() -> str:
    """The CPU convolution layout rule in force, in words (`netcompress info`)."""
    why = _nchw_only()
    if why:
        return f"NCHW for every convolution ({why})"
    return (f"channels-last where a channel count is not a multiple of {_simd_channels()} (ungrouped 2-D, "
            f">= 8 input channels, calls of >= {CHANNELS_LAST_MIN_POSITIONS} output positions), else NCHW; "
            f"{CONV_LAYOUT_ENV}=nchw for NCHW everywhere")


def cpu_channels_last(channels: int, num_output: int, group: int, num_spatial: int) -> bool:
    """Whether a 2-D convolution runs on the CPU with its input in channels-last (NHWC) memory order.

    PyTorch's CPU convolution is oneDNN's. For an NCHW input it uses oneDNN's blocked layout, which pads both
    channel axes to a multiple of the SIMD width (16 floats with AVX-512): LeNet's conv2 (20 -> 50 channels)
    then computes 32 -> 64, 2.0x the arithmetic. For a channels-last input oneDNN uses its brgemm kernels,
    which need no padding. So: channels-last where a channel count is not a multiple of the block, for
    ungrouped convolutions past the first layer (with 1-3 input channels, oneDNN's NCHW first-layer kernel is
    faster). Measured fwd+bwd on one AVX-512 core (benchmarks/RESULTS.md): 1.1-1.5x on such shapes, 0.8-0.9x on
    aligned ones, which therefore stay NCHW; and a call with fewer than CHANNELS_LAST_MIN_POSITIONS output
    positions (a batch of one) stays NCHW too. A rule on the shapes, not a timing, so that a net's numerics do not
    depend on the machine's load. `NETCOMPRESS_CONV_LAYOUT=nchw` turns it off (bit-identical to earlier runs).
    """
    if num_spatial != 2 or group != 1 or channels < 8 or _nchw_only():
        return False
    block = _simd_channels()
    return channels % block != 0 or num_output % block != 0


class _Relayout(torch.autograd.Function):
    """A CPU channels-last convolution's edges: x in the other memory order (`to_channels_last`: NCHW -> NHWC for
    its input; else NHWC -> NCHW for its output), the gradient converted back the other way.

    So the layers around the convolution (pooling, ReLU) see NCHW tensors and gradients, and oneDNN sees its
    input and its output's gradient channels-last (plain `x.contiguous(memory_format=...)` would hand on the
    gradient in the permuted order). Every copy is `ops.to_channels_last` / `ops.to_contiguous` (a tiled transpose
    per sample: LeNet's conv2 input at batch 64, 110 -> 31 us on one core against ATen's element-wise copy), with
    ATen's values.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, to_channels_last: bool) -> torch.Tensor:
        ctx.to_channels_last = to_channels_last
        return ops.to_channels_last(x) if to_channels_last else ops.to_contiguous(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (ops.to_contiguous(grad) if ctx.to_channels_last else ops.to_channels_last(grad)), None


CONV_ALGO_ENV = "NETCOMPRESS_CONV_ALGO"
# NNPACK's FFT tiles are 8x8 (a kernel of 5-8 leaves a 1x1-4x4 output block per tile; 3x3 kernels get Winograd tiles,
# measured slower than oneDNN on ResNet-sized layers; 4x4 ones gained 1.24x on 1 core and lost 7 % on 2) and 16x16;
# the weight gradient is computed as a convolution whose kernel is the layer's output, which one 16x16 tile covers
# when the padded input is at most 16 wide.
FFT_KERNELS = range(5, 9)
FFT_MAX_PADDED_INPUT = 16
# Inputs of 8x8 (CIFAR-10's conv3: 32 -> 64 channels, padded by 2) lost to oneDNN, 0.7-0.93x; 12x12 gained 1.5-2x.
FFT_MIN_INPUT = 12


def _fft_off() -> str | None:
    """Why no CPU convolution takes NNPACK's transform algorithms (the switch, or no NNPACK), or None."""
    return _rule_off(CONV_ALGO_ENV, "aten",
                     None if ops.nnpack_available() else "this PyTorch has no NNPACK for this CPU")


def cpu_fft_conv(channels: int, group: int, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int],
                 dilation: Sequence[int], input_size: Sequence[int]) -> bool:
    """Whether a 2-D convolution runs on the CPU (float32) by NNPACK's FFT tiles (`ops.nnpack_conv2d`), its data and
    weight gradients as convolutions of the same op.

    oneDNN computes a convolution as a direct product, bounded by the core's multiply-add rate (LeNet's conv2,
    20 -> 50 channels, runs at ~70 % of it); NNPACK's 8x8 FFT tiles do a 5x5 kernel's 4x4 output block with a
    fraction of the multiplications. Measured fwd+bwd against this package's oneDNN path (benchmarks/bench_conv.py,
    benchmarks/RESULTS.md): LeNet's conv2 1.8-2.0x faster on 1 core, 1.6x on 2; 1.4-2.4x on 1 core and 1.1-2.1x on 2
    for other 5x5-8x8 kernels with 8-64 input channels and inputs of 12-16 (padded up to 16); slower on 8x8 inputs
    (CIFAR-10's conv3: 0.7-0.9x), where the padded input is wider than 16 (the weight gradient's kernel no longer
    fits one 16x16 tile: 0.5x), on 4x4 kernels on 2 cores and on 3x3 kernels of 64 channels. So: ungrouped, stride
    1, undilated, >= 8 input channels, kernel sides in FFT_KERNELS, each padding below the kernel (NNPACK's limit),
    input sides >= FFT_MIN_INPUT and padded input sides <= FFT_MAX_PADDED_INPUT.
    A rule on the shapes (not a timing) and NNPACK's values do not depend on the thread count, so a net computes
    the same on any machine with NNPACK and any number of threads. The rounding is NNPACK's, not oneDNN's (both a
    few float32 ulps of the output's scale), and a NaN or infinity in the input spreads over its FFT tile (a direct
    convolution keeps it to the windows that hold it; either way the loss is NaN). `NETCOMPRESS_CONV_ALGO=aten`
    turns it off (the values of earlier runs).
    """
    if len(kernel) != 2 or group != 1 or channels < 8 or any(s != 1 for s in stride) or any(d != 1 for d in dilation):
        return False
    if any(k not in FFT_KERNELS or p >= k for k, p in zip(kernel, pad)) or not fft_input_fits(input_size, pad):
        return False
    return _fft_off() is None


def fft_input_fits(input_size: Sequence[int], pad: Sequence[int]) -> bool:
    """The input-size part of cpu_fft_conv, which a layer checks again at every call (a net reshaped to larger
    inputs falls back to ATen: NNPACK's weight gradient takes kernels, here the output, of at most 16)."""
    return all(FFT_MIN_INPUT <= size and size + 2 * p <= FFT_MAX_PADDED_INPUT for size, p in zip(input_size, pad))


# The sparse rule (layers with the FFT rule whose kernel has zeros: DNS, INQ, a pruned model): the direct sum over the
# nonzero weights (ops.sparse_conv2d) where at most this fraction of the weights is nonzero and a sample's shifted
# input (channels x kernel width x padded height x output width floats) fits the core's L1/L2 caches comfortably.
# LeNet's conv2 on one core (batch 64, benchmarks/bench_conv.py, with its data gradient): forward+backward 1.76x
# faster than oneDNN's forward and NNPACK's gradients at 10 % nonzero, 1.41x at 20 %, 1.11x at 40 %; the forward
# alone 0.67 / 0.97 / 1.61 ms against 1.7-1.8 whatever the zeros, and slower from about 50 %. On inputs whose
# shifted copy outgrows the L1 cache (CIFAR-10's conv2) it lost at every density measured.
SPARSE_MAX_DENSITY = 0.4
SPARSE_MAX_SHIFTED = 16 * 1024


def sparse_conv_fits(channels: int, kernel: Sequence[int], pad: Sequence[int], input_size: Sequence[int]) -> bool:
    """The shape part of the sparse rule: a sample's shifted input copy (ops.sparse_conv2d) is at most
    SPARSE_MAX_SHIFTED floats."""
    padded_h = input_size[0] + 2 * pad[0]
    out_w = input_size[1] + 2 * pad[1] - kernel[1] + 1
    return channels * kernel[1] * padded_h * out_w <= SPARSE_MAX_SHIFTED


def cpu_direct_conv(channels: int, group: int, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int],
                    dilation: Sequence[int], input_size: Sequence[int]) -> bool:
    """Whether a 2-D convolution of a single-channel input (a grayscale net's first layer: LeNet's conv1) runs on the
    CPU (float32) as direct sums: the forward by `ops.sparse_conv2d` (over the nonzero weights: all of a dense
    kernel), the weight and bias gradients by `ops.direct_conv2d_weight` and a data gradient, where one is needed,
    by `ops.sparse_conv2d_input`.

    oneDNN's kernels for a single input channel pad the output channels to its SIMD block and run 3x3 kernels
    poorly; its weight gradient's sum over the batch also depends on the thread count. Measured fwd+bwd on one
    AVX-512 core without a data gradient (benchmarks/bench_conv.py): LeNet's conv1 (5x5, 20 outputs, unpadded)
    1.26x faster on 1 thread, 1.27x on 2; 3x3 with 8-32 outputs 1.3-1.9x (with 8 outputs up to 8x on 2, where
    oneDNN's weight gradient stalls); 5x5 padded by 2 slower (0.67-0.93x: oneDNN's kernel suits it). With AVX2
    only (simulated) the margins are wider: LeNet's conv1 2.2-2.5x. So:
    ungrouped, stride 1, undilated, one input channel, kernel sides <= 3 or no padding, a sample's shifted input
    (kernel width x padded height x output width) at most SPARSE_MAX_SHIFTED floats. The values are the same on
    any number of threads (the batch's sums are added in fixed groups of samples, in order).
    `NETCOMPRESS_CONV_ALGO=aten` turns it off (ATen's convolution, the values of earlier runs).
    """
    if len(kernel) != 2 or group != 1 or channels != 1 or any(s != 1 for s in stride) or any(d != 1 for d in dilation):
        return False
    if max(kernel) > 3 and any(pad):
        return False
    if not sparse_conv_fits(channels, kernel, pad, input_size):
        return False
    return _rule_off(CONV_ALGO_ENV, "aten", None) is None


class _DirectConv(torch.autograd.Function):
    """A stride-1 2-D convolution as direct sums (cpu_direct_conv): forward ops.sparse_conv2d, data gradient
    ops.sparse_conv2d_input, weight and bias gradients ops.direct_conv2d_weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, pad: tuple[int, int]):
        ctx.save_for_backward(x, w)
        ctx.pad = pad
        ctx.has_bias = b is not None
        return ops.sparse_conv2d(x, w, b, pad)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: torch.Tensor):
        x, w = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = ops.sparse_conv2d_input(gy, w, x.shape[2:], ctx.pad)
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            gw, gb = ops.direct_conv2d_weight(x, gy, w.shape[2:], ctx.pad)
        return gx, gw, (gb if ctx.has_bias else None), None


# oneDNN, ATen's CPU convolution for float32, reads or writes out of bounds when a stride is very large: its
# data gradient crashed the process (SIGSEGV or SIGFPE; torch 2.13) in a sweep of 1-3-D shapes from a stride of
# 5,874 with 64 channels, 2,048 with 512 and 1,449 with 1,024 (the limit falls as the channels grow); a stride
# past the input, which Caffe accepts, meets it first. Above this stride a CPU convolution runs ATen's own kernels
# (_PlainConv); no usual net has a stride near it.
ONEDNN_MAX_STRIDE = 64


@contextlib.contextmanager
def _onednn_off():
    """ATen without oneDNN for the calls inside (torch.backends.mkldnn.flags would also reset its precision
    settings, with a warning)."""
    was = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(was)


class _PlainConv(torch.autograd.Function):
    """ATen's convolution (or transposed convolution) with oneDNN switched off for its forward and backward: the
    path of a CPU convolution whose stride exceeds ONEDNN_MAX_STRIDE (same values up to rounding)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: tuple[int, ...],
                pad: tuple[int, ...], dilation: tuple[int, ...], groups: int, transposed: bool):
        ctx.save_for_backward(x, w)
        ctx.geometry = (list(stride), list(pad), list(dilation), transposed, [0] * len(stride), groups)
        ctx.bias_sizes = list(b.shape) if b is not None else None
        with _onednn_off():
            return torch.ops.aten.convolution(x, w, b, *ctx.geometry)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: torch.Tensor):
        x, w = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                ctx.bias_sizes is not None and ctx.needs_input_grad[2]]
        with _onednn_off():
            gx, gw, gb = torch.ops.aten.convolution_backward(gy.contiguous(), x, w, ctx.bias_sizes, *ctx.geometry,
                                                             mask)
        return gx, gw, gb, None, None, None, None, None


def cpu_conv_algorithm() -> str:
    """The CPU convolution algorithm rule in force, in words (`netcompress info`)."""
    why = _fft_off()
    if why:
        return f"ATen's convolution (oneDNN) for every convolution ({why})"
    return (f"NNPACK's FFT tiles for float32 2-D convolutions with {FFT_KERNELS.start}-{FFT_KERNELS.stop - 1} "
            f"kernels, stride 1, >= 8 input channels and inputs {FFT_MIN_INPUT}-{FFT_MAX_PADDED_INPUT} wide with "
            f"their padding; their forward with a pruned kernel a direct sum over its nonzero weights (at most "
            f"{SPARSE_MAX_DENSITY:.0%} of them, small inputs) or ATen's; single-channel inputs (small, stride 1, "
            f"3x3 or unpadded) by direct sums; ATen's (oneDNN) for the others; {CONV_ALGO_ENV}=aten for ATen's "
            f"everywhere")


class _FftConv(torch.autograd.Function):
    """A stride-1 2-D convolution by `ops.nnpack_conv2d`, and its gradients as convolutions of the same op:
    the data gradient is the output's gradient, padded by kernel - 1 - pad, correlated with the kernel flipped and
    its channel axes swapped; the weight gradient is the input (channels as the batch, the batch as the channels)
    correlated with the output's gradient as the kernel; the bias gradient the output's gradient summed.

    Except the forward of a kernel with a zero in it (DNS and INQ kernels, a pruned model), which is a direct sum:
    where every product under a window is zero, a direct sum is exactly zero and FFT tiles leave rounding noise
    (~1e-8), which decides the exact ties that max pooling resolves to the first element, and with them which
    positions' inputs a pruned weight's (spliced) gradient sees (tests/test_dns_oracle.py compares with real
    Caffe's). With every weight nonzero such ties come from identical windows, whose gradients are the same
    whichever wins. The direct sum is `ops.sparse_conv2d` (over the nonzero weights only) where `sparse` allows it
    and at most SPARSE_MAX_DENSITY of the weights are nonzero, else `aten`'s (the layer's ATen convolution, the
    values of NETCOMPRESS_CONV_ALGO=aten). Where the forward took ops.sparse_conv2d the data gradient is
    `ops.sparse_conv2d_input`, also over the nonzero weights only; the weight gradient is NNPACK's always (DNS
    splices: a pruned weight gets its gradient too)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, pad: tuple[int, int], aten,
                sparse: bool):
        ctx.save_for_backward(x, w)
        ctx.pad = pad
        ctx.has_bias = b is not None
        nonzero = int(torch.count_nonzero(w))
        ctx.sparse = sparse and nonzero <= SPARSE_MAX_DENSITY * w.numel()
        if nonzero == w.numel():
            return ops.nnpack_conv2d(x, w, b, pad)
        if ctx.sparse:
            return ops.sparse_conv2d(x, w, b, pad)
        return aten(x, w, b)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: torch.Tensor):
        x, w = ctx.saved_tensors
        pad = ctx.pad
        gy = gy.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0] and ctx.sparse:
            gx = ops.sparse_conv2d_input(gy, w, x.shape[2:], pad)
        elif ctx.needs_input_grad[0]:
            gx = ops.nnpack_conv2d(gy, w.flip(2, 3).transpose(0, 1), None,
                                   (w.shape[2] - 1 - pad[0], w.shape[3] - 1 - pad[1]))
        if ctx.needs_input_grad[1]:
            gw = ops.nnpack_conv2d(x.transpose(0, 1), gy.transpose(0, 1), None, pad).transpose(0, 1).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None, None, None


def short_input_pad(kernel: Sequence[int], pad: Sequence[int], dilation: Sequence[int],
                    spatial: Sequence[int]) -> list[int] | None:
    """F.pad widths for an input shorter than one (dilated) kernel window along some axis, or None.

    Caffe divides `size + 2*pad - extent` by the stride in C, truncating toward zero, so a numerator in
    (-stride, 0) still gives one output, whose window runs past the padded input and reads zeros there
    (im2col). PyTorch refuses such an input; the zeros are appended here instead.
    """
    widths: list[int] = []
    for i in reversed(range(len(kernel))):
        short = dilation[i] * (kernel[i] - 1) + 1 - spatial[i] - 2 * pad[i]
        widths += [0, max(0, short)]
    return widths if any(widths) else None


def conv_output_size(size: int, kernel: int, pad: int, stride: int, dilation: int) -> int:
    """Caffe's convolution (and im2col) output size: (size + 2 pad - extent) / stride + 1, the division
    C's, truncating toward zero."""
    num = size + 2 * pad - (dilation * (kernel - 1) + 1)
    return (num // stride if num >= 0 else -(-num // stride)) + 1


class _ConvBase(Layer):
    """Shared set-up of Convolution and Deconvolution (and their DNS/INQ variants)."""

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms, min_tops = 1, 1
    transposed = False
    weight_param = "convolution_param"

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        if len(param.top) != len(param.bottom):
            raise self.error(f"needs as many tops as bottoms, got {len(param.bottom)} bottoms "
                             f"and {len(param.top)} tops")
        cp = param.convolution_param
        shape0 = self.bottom_shapes[0]
        self.axis = canonical_axis(cp.axis, len(shape0), self)
        self.num_spatial = len(shape0) - self.axis - 1
        if self.num_spatial < 1:
            raise self.error(f"bottom shape {list(shape0)} has no spatial axes after the channel axis {self.axis}")
        if self.num_spatial > 3:
            raise self.error(f"{self.num_spatial} spatial axes are not supported (1 to 3 are)")
        for s in self.bottom_shapes[1:]:
            if s != shape0:
                raise self.error(f"all bottoms must have the same shape, got {list(shape0)} and {list(s)}")
        n = self.num_spatial
        self.kernel, self.pad, self.stride, self.dilation = _conv_geometry(self, cp, n)
        self.group = int(cp.group)
        if self.group < 1:
            raise self.error(f"convolution_param.group must be at least 1, got {self.group}")
        self.num_output = int(cp.num_output)
        if self.num_output <= 0:
            raise self.error("convolution_param.num_output must be positive")
        self.channels = shape0[self.axis]
        if self.channels <= 0:  # (a 0-channel bottom gave a 0-channel top at run time, not the shape set up)
            raise self.error(f"the bottom has no channels (shape {list(shape0)}, channel axis {self.axis})")
        if self.channels % self.group or self.num_output % self.group:
            raise self.error(f"channels ({self.channels}) and num_output ({self.num_output}) must be "
                             f"multiples of group ({self.group})")
        self.bias_term = bool(cp.bias_term)
        if self.transposed:
            wshape = (self.channels, self.num_output // self.group, *self.kernel)
        else:
            wshape = (self.num_output, self.channels // self.group, *self.kernel)
        where = f"layer '{self.name}': "
        self.add_blob("weight", fill(self.new_empty(*wshape, what="the weight blob"), cp.weight_filler,
                                     ctx.generator, where))
        if self.bias_term:
            self.add_blob("bias", fill(self.new_empty(self.num_output, what="the bias blob"), cp.bias_filler,
                                       ctx.generator, where))
        self._fft = not self.transposed and cpu_fft_conv(self.channels, self.group, self.kernel, self.stride,
                                                         self.pad, self.dilation, shape0[self.axis + 1:])
        # (an FFT layer's forward still takes ATen's path for a kernel with zeros: _FftConv)
        self._direct = not self.transposed and cpu_direct_conv(self.channels, self.group, self.kernel, self.stride,
                                                               self.pad, self.dilation, shape0[self.axis + 1:])
        self._channels_last = not self.transposed and cpu_channels_last(self.channels, self.num_output,
                                                                        self.group, n)
        if self._channels_last:  # output positions per sample, for CHANNELS_LAST_MIN_POSITIONS
            self._positions = math.prod(self.top_shapes([shape0])[0][self.axis + 1:])
        self._plain_cpu = max(self.stride) > ONEDNN_MAX_STRIDE  # _PlainConv on the CPU
        self._fn = [None, F.conv1d, F.conv2d, F.conv3d][n] if not self.transposed else \
            [None, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d][n]

    # DNS/INQ variants override these two.
    def effective_weight(self) -> torch.Tensor:
        return self.weight

    def effective_bias(self) -> torch.Tensor | None:
        return self.bias if self.bias_term else None

    def _short_input_pad(self, spatial: Sequence[int]) -> list[int] | None:
        """F.pad widths for an input shorter than one (dilated) kernel window (`short_input_pad`)."""
        return short_input_pad(self.kernel, self.pad, self.dilation, spatial)

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        outer = x.shape[:self.axis]
        if self.axis != 1:
            x = x.reshape(-1, *x.shape[self.axis:])
        if not self.transposed:
            widths = self._short_input_pad(x.shape[2:])
            if widths is not None:
                x = F.pad(x, widths)
        if (self._direct and x.device.type == "cpu" and x.dtype == torch.float32
                and sparse_conv_fits(self.channels, self.kernel, self.pad, x.shape[2:])):
            y = _DirectConv.apply(x, w, b, tuple(self.pad))  # cpu_direct_conv
        elif (self._fft and x.device.type == "cpu" and x.dtype == torch.float32
                and fft_input_fits(x.shape[2:], self.pad)):
            y = _FftConv.apply(x, w, b, tuple(self.pad), self._aten_conv,  # cpu_fft_conv
                               sparse_conv_fits(self.channels, self.kernel, self.pad, x.shape[2:]))
        else:
            y = self._aten_conv(x, w, b)
        if self.axis != 1:
            y = y.reshape(*outer, *y.shape[1:])
        return y

    def _aten_conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """ATen's convolution of x (N, C, *spatial), channels-last where cpu_channels_last says."""
        if self._plain_cpu and x.device.type == "cpu":
            return _PlainConv.apply(x, w, b, self.stride, self.pad, self.dilation, self.group, self.transposed)
        if self.transposed:
            return self._fn(x, w, b, stride=self.stride, padding=self.pad, groups=self.group, dilation=self.dilation)
        if (self._channels_last and x.device.type == "cpu" and x.dtype == torch.float32
                and x.shape[0] * self._positions >= CHANNELS_LAST_MIN_POSITIONS):
            # cpu_channels_last: NHWC in, the result back in NCHW for the layers after it.
            y = self._fn(_Relayout.apply(x, True), w, b, stride=self.stride, padding=self.pad,
                         dilation=self.dilation, groups=self.group)
            return _Relayout.apply(y, False)
        return self._fn(x, w, b, stride=self.stride, padding=self.pad, dilation=self.dilation, groups=self.group)

    def forward(self, *bottoms: torch.Tensor):
        w, b = self.effective_weight(), self.effective_bias()
        tops = tuple(self._conv(x, w, b) for x in bottoms)
        return tops[0] if len(tops) == 1 else tops

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape0 = tuple(bottom_shapes[0])
        spatial = []
        for i in range(self.num_spatial):
            size = shape0[self.axis + 1 + i]
            k, p, s, d = self.kernel[i], self.pad[i], self.stride[i], self.dilation[i]
            ext = d * (k - 1) + 1
            if self.transposed:
                out = s * (size - 1) + ext - 2 * p
            else:
                out = conv_output_size(size, k, p, s, d)
            if out <= 0 or out > INT_MAX:
                raise self.error(f"output size {out} along spatial axis {i} is "
                                 f"{'not positive' if out <= 0 else 'larger than a blob can hold'} "
                                 f"(input {size}, kernel {k}, pad {p}, stride {s}, dilation {d})")
            spatial.append(out)
        top = (*shape0[:self.axis], self.num_output, *spatial)
        return [top for _ in bottom_shapes]


@register_layer("Convolution")
class Convolution(_ConvBase):
    """Caffe Convolution: N-D (1 to 3 spatial axes), groups, dilation, per-axis geometry."""


@register_layer("Deconvolution")
class Deconvolution(_ConvBase):
    """Caffe Deconvolution: the transposed convolution, weight [C_in, num_output/group, *k]."""

    transposed = True


@register_layer("Im2col")
class Im2col(Layer):
    """Caffe Im2col: the columns a convolution would multiply, as a blob.

    `convolution_param` gives the axis, kernel, pad, stride and dilation by Convolution's rules (num_output,
    group, bias and fillers are not read). The top keeps the axes before the channel axis and has
    C * prod(kernel) channels, ordered channel-major then kernel offset in row-major order
    (c * kh * kw + i * kw + j in 2-D), over Convolution's output positions; a tap in the padding or past
    the input reads 0. The gradient sums the columns back onto the input (col2im). Caffe's
    `force_nd_im2col` chooses its N-D kernel over the 2-D one; both give the same values, and so do the
    two paths here (F.unfold for 2-D, index gathers otherwise).
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        cp = param.convolution_param
        shape = self.bottom_shapes[0]
        self.axis = canonical_axis(cp.axis, len(shape), self, "convolution_param.axis")
        self.num_spatial = len(shape) - self.axis - 1
        if self.num_spatial < 1:
            raise self.error(f"bottom shape {list(shape)} has no spatial axes after the channel axis {self.axis}")
        self.kernel, self.pad, self.stride, self.dilation = _conv_geometry(self, cp, self.num_spatial)
        self.force_nd = bool(cp.force_nd_im2col)
        self._top_shape(shape)  # validate now

    def _top_shape(self, s: Shape) -> Shape:
        if len(s) != self.axis + 1 + self.num_spatial:
            raise self.error(f"needs a {self.axis + 1 + self.num_spatial}-D bottom (channel axis {self.axis} and "
                             f"{self.num_spatial} spatial axes), got shape {list(s)}")
        out = []
        for i in range(self.num_spatial):
            size = s[self.axis + 1 + i]
            o = conv_output_size(size, self.kernel[i], self.pad[i], self.stride[i], self.dilation[i])
            if o <= 0:
                # Caffe would make an empty top here (or fail on a negative size); Convolution refuses it too.
                raise self.error(f"output size {o} along spatial axis {i} is not positive (input {size}, kernel "
                                 f"{self.kernel[i]}, pad {self.pad[i]}, stride {self.stride[i]}, dilation "
                                 f"{self.dilation[i]})")
            out.append(o)
        return (*s[:self.axis], s[self.axis] * math.prod(self.kernel), *out)

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [self._top_shape(tuple(bottom_shapes[0]))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = self._top_shape(tuple(x.shape))
        out = top[self.axis + 1:]
        x = x.reshape(-1, *x.shape[self.axis:])  # Caffe's num_: the axes before the channel axis
        widths = short_input_pad(self.kernel, self.pad, self.dilation, x.shape[2:])
        if widths is not None:
            x = F.pad(x, widths)
        if self.num_spatial == 2 and not self.force_nd and x.shape[0] > 0:
            cols = F.unfold(x, self.kernel, dilation=self.dilation, padding=self.pad, stride=self.stride)
        else:
            cols = self._gather(x, out)
        return cols.reshape(top)

    def _gather(self, x: torch.Tensor, out: Sequence[int]) -> torch.Tensor:
        """im2col for any number of spatial axes: per axis, the padded input at
        o * stride + k * dilation for every (kernel offset k, output position o).

        The padding is not built: a position in it reads one zero appended to its axis (padding the input
        itself, a pad of 2^30 with a stride to match overflowed a size)."""
        n = self.num_spatial
        cols = F.pad(x, [0, 1] * n)
        for i in range(n):
            size = x.shape[2 + i]
            taps = torch.arange(self.kernel[i], device=x.device) * self.dilation[i]
            starts = torch.arange(out[i], device=x.device) * self.stride[i]
            at = (taps[:, None] + starts[None, :]).reshape(-1) - self.pad[i]
            at = torch.where((at >= 0) & (at < size), at, size)
            dim = 2 + 2 * i  # the axes before it are already (kernel, output) pairs
            cols = cols.index_select(dim, at)
            cols = cols.unflatten(dim, (self.kernel[i], out[i]))
        # (N, C, k0, o0, k1, o1, ...) -> (N, C, k0, k1, ..., o0, o1, ...)
        order = [0, 1] + [2 + 2 * i for i in range(n)] + [3 + 2 * i for i in range(n)]
        return cols.permute(order)


MATMUL_ENV = "NETCOMPRESS_CPU_MATMUL"
# The fewest multiply-adds (rows x inputs x outputs) for which an InnerProduct's CPU products go to oneDNN: below
# it the fixed cost of a oneDNN call (12-15 us) is more than its kernels save over the BLAS (MKL) ones.
ONEDNN_MATMUL_MIN_MACS = 1 << 20


def _blas_only() -> str | None:
    """Why every CPU InnerProduct product stays PyTorch's BLAS, or None when the oneDNN rule applies."""
    why = _rule_off(MATMUL_ENV, "blas", _onednn_missing())
    if why:
        return why
    try:
        torch.ops.mkldnn._linear_pointwise.default  # noqa: B018 (PyTorch 2.0 on)
    except (AttributeError, RuntimeError):
        return "this PyTorch has no oneDNN matrix product (mkldnn::_linear_pointwise)"
    return None


def cpu_matmul() -> str:
    """The CPU InnerProduct rule in force, in words (`netcompress info`)."""
    why = _blas_only()
    if why:
        return f"BLAS for every product ({why})"
    return (f"oneDNN for float32 products of >= {ONEDNN_MATMUL_MIN_MACS:,} multiply-adds, else BLAS; "
            f"{MATMUL_ENV}=blas for BLAS everywhere")


def _dnn(a: torch.Tensor, bt: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ bt.T (+ bias, added to each finished sum: the same as adding it after) by oneDNN."""
    return torch.ops.mkldnn._linear_pointwise.default(a, bt, bias, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """InnerProduct's y = x @ w.T + b (w [N, K]; `transpose`: w [K, N] and y = x @ w + b) with the forward and
    both gradient products by oneDNN.

    On one AVX-512 core oneDNN's products of LeNet's ip1 shapes (64 x 800 x 500) run at 95-110 GFLOP/s where
    MKL's run at 85-97, and on two cores at 135-165 against 95-120 (MKL splits these small products poorly);
    its results do not depend on the thread count. The bias gradient is the batch sum, as autograd's. Not
    twice differentiable (Caffe has no second derivatives).
    """

    @staticmethod
    def forward(ctx, x, w, b, transpose):
        ctx.save_for_backward(x, w)
        ctx.transpose, ctx.has_bias = transpose, b is not None
        return _dnn(x, w.t() if transpose else w, b)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        gy = gy.contiguous()  # an expanded gradient (of a sum) has zero strides
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # gy @ w (gy @ w.T when transposed)
            gx = _dnn(gy, w if ctx.transpose else w.t())
        if ctx.needs_input_grad[1]:  # gy.T @ x (x.T @ gy when transposed)
            gw = _dnn(x.t(), gy.t()) if ctx.transpose else _dnn(gy.t(), x.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum(0)
        return gx, gw, gb, None


@register_layer("InnerProduct")
class InnerProduct(Layer):
    """Caffe InnerProduct: flattens from `axis`, weight [N, K] (or [K, N] with `transpose`)."""

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1
    weight_param = "inner_product_param"

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        ip = param.inner_product_param
        shape = self.bottom_shapes[0]
        self.axis = canonical_axis(ip.axis, len(shape), self)
        self.num_output = int(ip.num_output)
        if self.num_output <= 0:
            raise self.error("inner_product_param.num_output must be positive")
        self.K = math.prod(shape[self.axis:])
        self.transpose = bool(ip.transpose)
        self.bias_term = bool(ip.bias_term)
        # the CPU products' library, decided once as the convolution layout is (_blas_only)
        self._onednn = _blas_only() is None
        wshape = (self.K, self.num_output) if self.transpose else (self.num_output, self.K)
        where = f"layer '{self.name}': "
        self.add_blob("weight", fill(self.new_empty(*wshape, what="the weight blob"), ip.weight_filler,
                                     ctx.generator, where))
        if self.bias_term:
            self.add_blob("bias", fill(self.new_empty(self.num_output, what="the bias blob"), ip.bias_filler,
                                       ctx.generator, where))

    def effective_weight(self) -> torch.Tensor:
        return self.weight

    def effective_bias(self) -> torch.Tensor | None:
        return self.bias if self.bias_term else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if math.prod(x.shape[self.axis:]) != self.K:
            raise self.error(f"input has {math.prod(x.shape[self.axis:])} features from axis "
                             f"{self.axis} on, the weights expect {self.K}")
        lead = x.shape[:self.axis]
        x2 = x.reshape(math.prod(lead), self.K)
        w, b = self.effective_weight(), self.effective_bias()
        if (self._onednn and x2.device.type == "cpu" and x2.dtype == torch.float32 and w.dtype == torch.float32
                and x2.shape[0] * self.K * self.num_output >= ONEDNN_MATMUL_MIN_MACS):
            y = _OneDnnLinear.apply(x2.contiguous(), w.contiguous(), b, self.transpose)
            return y.reshape(*lead, self.num_output)
        y = x2 @ w if self.transpose else F.linear(x2, w)
        if b is not None:
            y = y + b
        return y.reshape(*lead, self.num_output)

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if math.prod(s[self.axis:]) != self.K:
            raise self.error(f"input has {math.prod(s[self.axis:])} features from axis {self.axis} "
                             f"on, the weights expect {self.K}")
        return [(*s[:self.axis], self.num_output)]


_FLT_MAX = float(torch.finfo(torch.float32).max)


def pooled_size(size: int, kernel: int, pad: int, stride: int, any_pad: bool) -> int:
    """Caffe's pooled size: ceil((size + 2 pad - kernel) / stride) + 1, then one less if the
    last window would start in the end padding -- a correction Caffe applies only when the
    layer has padding on either axis (`pad_h || pad_w`)."""
    out = -((kernel - size - 2 * pad) // stride) + 1
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@register_layer("Pooling")
class Pooling(Layer):
    """Caffe Pooling (MAX, AVE, STOCHASTIC, global) on 4-D blobs.

    Caffe rounds the output size up (see `pooled_size`). MAX ignores the padding and, on ties,
    keeps the first maximum in row-major order (PyTorch does the same); a window holding no
    input gives -FLT_MAX and no gradient. AVE divides by the window clipped to the padded
    image, (min(start + k, size + pad) - start) per axis: padding counts, overhang past the
    padding does not (`count_include_pad=True` with ceil_mode). The common cases run on
    PyTorch's pooling directly; geometries PyTorch refuses or sizes differently (pad > kernel/2,
    which Caffe allows, and unpadded layers whose last window starts past the input, which Caffe
    keeps) run on an explicitly padded input with the same results (padded only as far as the windows
    that start inside the input reach; those past it are empty: `_padded`).

    STOCHASTIC (Caffe implements it on GPU only; no padding): in TRAIN, one activation per
    window is drawn with probability proportional to its value (the first whose running sum
    reaches u * window sum, u uniform from this layer's generator) and receives the gradient;
    in TEST, sum(x^2) / sum(x) per window (0 where the sum is not positive). Global pooling
    takes the kernel from the bottom's actual H x W at every forward.
    """

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms = max_bottoms = 1
    min_tops, max_tops = 1, 2

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        pp = param.pooling_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"needs a 4-D bottom (N, C, H, W), got shape {list(shape)}")
        self.method = pp.pool
        self.global_pooling = bool(pp.global_pooling)
        if self.global_pooling:
            if pp.HasField("kernel_size") or pp.HasField("kernel_h") or pp.HasField("kernel_w"):
                raise self.error("with global_pooling: true the kernel size cannot be specified")
            self.kernel = (shape[2], shape[3])
        elif pp.HasField("kernel_size"):
            if pp.HasField("kernel_h") or pp.HasField("kernel_w"):
                raise self.error("the kernel size is kernel_size OR kernel_h and kernel_w, not both")
            self.kernel = (pp.kernel_size, pp.kernel_size)
        elif pp.HasField("kernel_h") and pp.HasField("kernel_w"):
            self.kernel = (pp.kernel_h, pp.kernel_w)
        else:
            raise self.error("pooling_param needs kernel_size, or both kernel_h and kernel_w")
        if pp.HasField("pad_h") or pp.HasField("pad_w"):
            if pp.HasField("pad") or not (pp.HasField("pad_h") and pp.HasField("pad_w")):
                raise self.error("padding is pad OR both pad_h and pad_w")
            self.pad = (pp.pad_h, pp.pad_w)
        else:
            self.pad = (pp.pad, pp.pad)
        if pp.HasField("stride_h") or pp.HasField("stride_w"):
            if pp.HasField("stride") or not (pp.HasField("stride_h") and pp.HasField("stride_w")):
                raise self.error("the stride is stride OR both stride_h and stride_w")
            self.stride = (pp.stride_h, pp.stride_w)
        else:
            self.stride = (pp.stride, pp.stride)
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error(f"with global_pooling: true only pad 0 and stride 1 are allowed, got "
                             f"pad {list(self.pad)} and stride {list(self.stride)}")
        if any(k <= 0 for k in self.kernel):
            raise self.error(f"kernel dimensions must be positive, got {list(self.kernel)}")
        if any(s <= 0 for s in self.stride):
            raise self.error(f"stride dimensions must be positive, got {list(self.stride)}")
        if self.method not in (pb.PoolingParameter.MAX, pb.PoolingParameter.AVE,
                               pb.PoolingParameter.STOCHASTIC):
            raise self.error(f"unknown pooling method {self.method}")
        if any(p > 0 for p in self.pad):
            if self.method not in (pb.PoolingParameter.AVE, pb.PoolingParameter.MAX):
                raise self.error("padding is implemented only for AVE and MAX pooling")
            if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
                raise self.error(f"pad {list(self.pad)} must be smaller than the kernel {list(self.kernel)}")
        if len(param.top) == 2 and self.method != pb.PoolingParameter.MAX:
            raise self.error("a second top (the argmax mask) exists only for MAX pooling")
        self.two_tops = len(param.top) == 2
        self._geometry(shape[2], shape[3])  # validate now
        if self.method == pb.PoolingParameter.STOCHASTIC:
            self._init_rng()

    def _geometry(self, H: int, W: int) -> tuple[tuple[int, int], tuple[int, int]]:
        kernel = (H, W) if self.global_pooling else self.kernel
        any_pad = any(p > 0 for p in self.pad)
        out = (pooled_size(H, kernel[0], self.pad[0], self.stride[0], any_pad),
               pooled_size(W, kernel[1], self.pad[1], self.stride[1], any_pad))
        if out[0] <= 0 or out[1] <= 0:
            raise self.error(f"the pooled output {list(out)} is empty: kernel {list(kernel)} does not "
                             f"fit the {H}x{W} input with pad {list(self.pad)}")
        for i in range(2):
            span = (out[i] - 1) * self.stride[i] + kernel[i]
            if span > INT_MAX:
                raise self.error(f"the pooling windows span {span:,} positions along spatial axis {i} (stride "
                                 f"{self.stride[i]}, kernel {kernel[i]}, {out[i]} outputs): more than a blob "
                                 "can hold")
        return kernel, out

    def _torch_compatible(self, H: int, W: int, kernel, out) -> bool:
        """Whether PyTorch's pooling (ceil_mode, implicit padding) has Caffe's geometry here."""
        for size, k, p, s, o in zip((H, W), kernel, self.pad, self.stride, out):
            if 2 * p > k or pooled_size(size, k, p, s, True) != o:
                return False
        return True

    @staticmethod
    def _beyond(y: torch.Tensor, out, value: float) -> torch.Tensor:
        """y of the windows `_padded` keeps with the windows past the input appended, each `value`."""
        extra_h, extra_w = out[0] - y.shape[2], out[1] - y.shape[3]
        return F.pad(y, (0, extra_w, 0, extra_h), value=value) if extra_h or extra_w else y

    def _padded(self, x: torch.Tensor, kernel, out, value: float):
        """(x padded or cropped, kernel, out) such that plain strided windows of that kernel over it are exactly
        Caffe's windows that start inside the input (Caffe keeps the others, which hold nothing: -FLT_MAX for MAX,
        a sum of 0 for AVE and STOCHASTIC; `_beyond` appends them), `out` counting those; the kernel is cut to the
        padded input, so the padded input spans at most H + pad + kernel, however far the stride and the kernel
        reach past the input (padded to span every window, a stride of 2^30 made it 2^30 x 2^30)."""
        H, W = x.shape[2], x.shape[3]
        kernel_live, out_live, widths = [], [], []
        for size, k, p, s, o in zip((H, W), kernel, self.pad, self.stride, out):
            o = min(o, (size + p - 1) // s + 1)  # window i starts at i*s - p
            k = min(k, size + p)  # (covers every input position of its window)
            kernel_live.append(k)
            out_live.append(o)
            widths.append((p, (o - 1) * s + k - size - p))
        (ph, bottom), (pw, right) = widths
        return F.pad(x, (pw, right, ph, bottom), value=value), tuple(kernel_live), tuple(out_live)

    def forward(self, x: torch.Tensor):
        if x.dim() != 4:
            raise self.error(f"needs a 4-D bottom (N, C, H, W), got shape {list(x.shape)}")
        H, W = x.shape[2], x.shape[3]
        kernel, out = self._geometry(H, W)
        m = self.method
        if m == pb.PoolingParameter.STOCHASTIC:
            return self._stochastic(x, kernel, out)
        fast = self._torch_compatible(H, W, kernel, out)
        if m == pb.PoolingParameter.AVE:
            if fast:
                return F.avg_pool2d(x, kernel, self.stride, self.pad, ceil_mode=True,
                                    count_include_pad=True)
            xp, kernel_live, _ = self._padded(x, kernel, out, 0.0)
            sums = F.avg_pool2d(xp, kernel_live, self.stride, divisor_override=1)
            return self._beyond(sums, out, 0.0) / self._ave_divisor(H, W, kernel, out, x)
        if fast:
            if x.device.type == "cpu":
                # netcompress's op: F.max_pool2d's values, indices and gradient; on the CPU several times
                # faster than ATen's NCHW kernel (LeNet's pool1 at batch 64: 0.9 ms instead of 3.5 ms on one core).
                y, idx = ops.max_pool2d(x, kernel, self.stride, self.pad, True)
            elif self.two_tops:  # elsewhere ATen's kernel is the one to call, with no wrapper around it
                y, idx = F.max_pool2d(x, kernel, self.stride, self.pad, ceil_mode=True, return_indices=True)
            else:
                return F.max_pool2d(x, kernel, self.stride, self.pad, ceil_mode=True)
            if self.two_tops:
                return y, idx.to(x.dtype)
            return y
        xp, kernel_live, _ = self._padded(x, kernel, out, float("-inf"))
        y, idx = F.max_pool2d(xp, kernel_live, self.stride, return_indices=True)
        # Caffe starts every window at -FLT_MAX and takes only strictly larger inputs, so a window of -FLT_MAX
        # and -inf passes no gradient (`where`: clamp's gradient at its bound differs between torch versions). A NaN
        # stays NaN, as in ATen's max pooling (the solver's non-finite check must see it).
        y_caffe = self._beyond(torch.where((y > -_FLT_MAX) | torch.isnan(y), y, -_FLT_MAX), out, -_FLT_MAX)
        if not self.two_tops:
            return y_caffe
        Wp = xp.shape[3]
        real = (idx // Wp - self.pad[0]) * W + (idx % Wp - self.pad[1])
        mask = torch.where(y.detach() == float("-inf"), torch.full_like(real, -1), real)
        return y_caffe, self._beyond(mask.to(x.dtype), out, -1.0)

    def _ave_divisor(self, H: int, W: int, kernel, out, like: torch.Tensor) -> torch.Tensor:
        sizes = []
        for size, k, p, s, o in zip((H, W), kernel, self.pad, self.stride, out):
            starts = [i * s - p for i in range(o)]
            sizes.append([min(st + k, size + p) - st for st in starts])
        dh = torch.tensor(sizes[0], dtype=like.dtype, device=like.device)
        dw = torch.tensor(sizes[1], dtype=like.dtype, device=like.device)
        return dh.reshape(-1, 1) * dw.reshape(1, -1)

    def _stochastic(self, x: torch.Tensor, kernel, out) -> torch.Tensor:
        N, C, H, W = x.shape
        # Windows are clipped to the image (no padding); zeros beyond it weigh nothing.
        xp, (kh, kw), (oh, ow) = self._padded(x, kernel, out, 0.0)
        cols = F.unfold(xp, (kh, kw), stride=self.stride).view(N, C, kh * kw, oh * ow)
        total = cols.sum(dim=2)
        if self.phase == pb.TRAIN:
            gen = self._rng
            u = torch.rand((N, C, *out), generator=gen, device=gen.device, dtype=torch.float32)  # every window's
            u = u[:, :, :oh, :ow].reshape(N, C, oh * ow)
            thres = u.to(device=x.device, dtype=x.dtype) * total.detach()
            cum = cols.detach().cumsum(dim=2)
            last = kh * kw - 1
            if (kh, kw) != tuple(kernel):  # a cut window: its last position, where rounding can leave the pick, is
                cols = F.pad(cols, (0, 0, 0, 1))  # past the input, in a slot of its own (0, no gradient)
                last += 1
            pick = (cum < thres.unsqueeze(2)).sum(dim=2, keepdim=True).clamp_max(last)
            y = cols.gather(2, pick).squeeze(2)
        else:
            positive = total > 0
            safe = torch.where(positive, total, torch.ones_like(total))
            y = torch.where(positive, (cols * cols).sum(dim=2) / safe, torch.zeros_like(total))
        return self._beyond(y.view(N, C, oh, ow), out, 0.0)

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        N, C, H, W = bottom_shapes[0]
        _, out = self._geometry(H, W)
        return [(N, C, *out)] * len(self.layer_param.top)


def spp_level_geometry(level: int, size: int) -> tuple[int, int]:
    """(kernel = stride, pad) of pyramid level `level` along an axis of `size` (Caffe's
    SPPLayer::GetPoolingParam): 2**level bins, kernel ceil(size / bins), and half the shortfall
    kernel * bins - size as padding, rounded up."""
    bins = 2 ** level
    kernel = -(-size // bins)
    return kernel, (kernel * bins - size + 1) // 2


_SPP_METHODS = {pb.SPPParameter.MAX: pb.PoolingParameter.MAX, pb.SPPParameter.AVE: pb.PoolingParameter.AVE,
                pb.SPPParameter.STOCHASTIC: pb.PoolingParameter.STOCHASTIC}


@register_layer("SPP")
class SPP(Layer):
    """Caffe SPP (spatial pyramid pooling) on a 4-D bottom.

    Level i (0 <= i < pyramid_height) is a Pooling layer with kernel = stride = ceil(size / 2**i) and pad
    (kernel * 2**i - size + 1) // 2 per axis (`spp_level_geometry`), with Pooling's geometry and numerics
    (the level's output is what Caffe's Pooling makes of those parameters, usually 2**i x 2**i bins). With
    pyramid_height 1 the top is that Pooling top, (N, C, h, w); otherwise each level's top is flattened to
    (N, C*h*w) (channel-major) and the levels are concatenated along axis 1, level 0 first. As in Caffe's
    Reshape, the levels follow the bottom's actual H x W at every forward. A level that Pooling refuses
    (pad >= kernel, which happens once 2**i exceeds the size; padding with STOCHASTIC) is an error naming
    this layer, at set-up or at the forward of a new input size.

    STOCHASTIC levels share this layer's generator (drawn in level order, saved with its snapshot state) and
    follow this layer's phase: in TEST they use the deterministic TEST rule. (Caffe builds its inner Pooling
    layers from a fresh LayerParameter, whose phase defaults to TRAIN, so they sample in TEST nets too.)
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        sp = param.spp_param
        self.pyramid_height = int(sp.pyramid_height)
        if self.pyramid_height < 1:
            raise self.error(f"spp_param.pyramid_height must be at least 1, got {self.pyramid_height}")
        if sp.pool not in _SPP_METHODS:
            raise self.error(f"unknown pooling method {sp.pool}")
        self.method = _SPP_METHODS[sp.pool]
        if self.method == pb.PoolingParameter.STOCHASTIC:
            self._init_rng()
        # The Pooling layer of every level for the last bottom size seen: a plain attribute, so that they
        # are no submodules (no state of their own; the net's module tree and state_dict stay Caffe's).
        self._pools_for: tuple[int, int] | None = None
        self._pools: list[Pooling] = []
        self._levels(self._spatial(self.bottom_shapes[0]))  # validate now

    def _spatial(self, shape: Sequence[int]) -> tuple[int, int]:
        if len(shape) != 4:
            raise self.error(f"needs a 4-D bottom (N, C, H, W), got shape {list(shape)}")
        H, W = int(shape[2]), int(shape[3])
        if H <= 0 or W <= 0:
            raise self.error(f"the input height and width must be positive, got shape {list(shape)}")
        return H, W

    def _levels(self, hw: tuple[int, int]) -> list[Pooling]:
        if self._pools_for == hw:
            return self._pools
        H, W = hw
        pools = []
        for i in range(self.pyramid_height):
            (kh, ph), (kw, pw) = spp_level_geometry(i, H), spp_level_geometry(i, W)
            lp = pb.LayerParameter(name=f"{self.name}/level{i}", type="Pooling", bottom=["x"], top=["y"])
            pp = lp.pooling_param
            pp.pool = self.method
            pp.kernel_h, pp.kernel_w, pp.stride_h, pp.stride_w, pp.pad_h, pp.pad_w = kh, kw, kh, kw, ph, pw
            try:
                pool = Pooling(lp, [(1, 1, H, W)], self.ctx)
            except NetDefinitionError as e:
                reason = str(e).removeprefix(f"layer '{lp.name}' (type Pooling): ")
                raise self.error(f"pyramid level {i} ({2 ** i}x{2 ** i} bins) on a {H}x{W} input takes pooling "
                                 f"kernel [{kh}, {kw}], stride [{kh}, {kw}], pad [{ph}, {pw}], which Pooling "
                                 f"refuses: {reason}") from None
            if self.method == pb.PoolingParameter.STOCHASTIC:
                pool._rng = self._rng
            pools.append(pool)
        self._pools_for, self._pools = hw, pools
        return pools

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pools = self._levels(self._spatial(x.shape))
        if self.pyramid_height == 1:
            return pools[0](x)
        return torch.cat([pool(x).flatten(1) for pool in pools], dim=1)

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        tops = [pool.top_shapes([shape])[0] for pool in self._levels(self._spatial(shape))]
        if self.pyramid_height == 1:
            return tops
        return [(shape[0], sum(math.prod(t[1:]) for t in tops))]
