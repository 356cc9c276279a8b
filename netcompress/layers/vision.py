"""Convolution, Deconvolution, InnerProduct and Pooling with Caffe's geometry and numerics."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..fillers import fill
from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, register_layer

__all__ = ["Convolution", "Deconvolution", "InnerProduct", "Pooling", "canonical_axis"]


def canonical_axis(axis: int, ndim: int, layer: Layer, what: str = "axis") -> int:
    if not -ndim <= axis < ndim:
        raise layer.error(f"{what} {axis} is out of range for a {ndim}-D bottom")
    return axis % ndim


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


class _ConvBase(Layer):
    """Shared set-up of Convolution and Deconvolution (and their DNS/INQ variants)."""

    min_bottoms, min_tops = 1, 1
    transposed = False

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
        opt = lambda f: getattr(cp, f) if cp.HasField(f) else None  # noqa: E731
        self.kernel = _per_axis(self, cp.kernel_size, opt("kernel_h"), opt("kernel_w"), n, 0, "kernel")
        if any(k <= 0 for k in self.kernel):
            raise self.error(f"kernel size must be specified and positive, got {list(self.kernel)}")
        pad_h = cp.pad_h if (cp.HasField("pad_h") or cp.HasField("pad_w")) else None
        pad_w = cp.pad_w if (cp.HasField("pad_h") or cp.HasField("pad_w")) else None
        self.pad = _per_axis(self, cp.pad, pad_h, pad_w, n, 0, "pad")
        self.stride = _per_axis(self, cp.stride, opt("stride_h"), opt("stride_w"), n, 1, "stride")
        if any(s <= 0 for s in self.stride):
            raise self.error(f"stride must be positive, got {list(self.stride)}")
        self.dilation = _per_axis(self, cp.dilation, None, None, n, 1, "dilation")
        self.group = int(cp.group)
        self.num_output = int(cp.num_output)
        if self.num_output <= 0:
            raise self.error("convolution_param.num_output must be positive")
        self.channels = shape0[self.axis]
        if self.channels % self.group or self.num_output % self.group:
            raise self.error(f"channels ({self.channels}) and num_output ({self.num_output}) must be "
                             f"multiples of group ({self.group})")
        self.bias_term = bool(cp.bias_term)
        if self.transposed:
            wshape = (self.channels, self.num_output // self.group, *self.kernel)
        else:
            wshape = (self.num_output, self.channels // self.group, *self.kernel)
        where = f"layer '{self.name}': "
        self.add_blob("weight", fill(self.new_empty(*wshape), cp.weight_filler, ctx.generator, where))
        if self.bias_term:
            self.add_blob("bias", fill(self.new_empty(self.num_output), cp.bias_filler, ctx.generator, where))
        self._fn = [None, F.conv1d, F.conv2d, F.conv3d][n] if not self.transposed else \
            [None, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d][n]

    # DNS/INQ variants override these two.
    def effective_weight(self) -> torch.Tensor:
        return self.weight

    def effective_bias(self) -> torch.Tensor | None:
        return self.bias if self.bias_term else None

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        outer = x.shape[:self.axis]
        if self.axis != 1:
            x = x.reshape(-1, *x.shape[self.axis:])
        if self.transposed:
            y = self._fn(x, w, b, stride=self.stride, padding=self.pad, groups=self.group,
                         dilation=self.dilation)
        else:
            y = self._fn(x, w, b, stride=self.stride, padding=self.pad, dilation=self.dilation,
                         groups=self.group)
        if self.axis != 1:
            y = y.reshape(*outer, *y.shape[1:])
        return y

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
                out = (size + 2 * p - ext) // s + 1
            if out <= 0:
                raise self.error(f"output size {out} along spatial axis {i} is not positive "
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


@register_layer("InnerProduct")
class InnerProduct(Layer):
    """Caffe InnerProduct: flattens from `axis`, weight [N, K] (or [K, N] with `transpose`)."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

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
        wshape = (self.K, self.num_output) if self.transpose else (self.num_output, self.K)
        where = f"layer '{self.name}': "
        self.add_blob("weight", fill(self.new_empty(*wshape), ip.weight_filler, ctx.generator, where))
        if self.bias_term:
            self.add_blob("bias", fill(self.new_empty(self.num_output), ip.bias_filler, ctx.generator, where))

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


@register_layer("Pooling")
class Pooling(Layer):
    """Caffe Pooling (MAX, AVE, STOCHASTIC, global) on 4-D blobs.

    Caffe rounds the output size up, and drops the last window if it would start in the
    padding; PyTorch's ceil_mode does the same. Caffe's AVE divides by the window clipped to
    the padded image (not the overhang), which is `count_include_pad=True` with ceil_mode.
    """

    min_bottoms = max_bottoms = 1
    min_tops, max_tops = 1, 2

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        pp = param.pooling_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"needs a 4-D bottom (N, C, H, W), got shape {list(shape)}")
        H, W = shape[2], shape[3]
        self.method = pp.pool
        self.global_pooling = bool(pp.global_pooling)
        if self.global_pooling:
            if pp.HasField("kernel_size") or pp.HasField("kernel_h") or pp.HasField("kernel_w"):
                raise self.error("with global_pooling the kernel size cannot be specified")
            self.kernel = (H, W)
        elif pp.HasField("kernel_size"):
            if pp.HasField("kernel_h") or pp.HasField("kernel_w"):
                raise self.error("kernel_size and kernel_h/kernel_w are mutually exclusive")
            self.kernel = (pp.kernel_size, pp.kernel_size)
        elif pp.HasField("kernel_h") and pp.HasField("kernel_w"):
            self.kernel = (pp.kernel_h, pp.kernel_w)
        else:
            raise self.error("pooling_param needs kernel_size, or kernel_h and kernel_w")
        if pp.HasField("pad_h") or pp.HasField("pad_w"):
            if pp.HasField("pad"):
                raise self.error("pad and pad_h/pad_w are mutually exclusive")
            self.pad = (pp.pad_h, pp.pad_w)
        else:
            self.pad = (pp.pad, pp.pad)
        if pp.HasField("stride_h") or pp.HasField("stride_w"):
            if not (pp.HasField("stride_h") and pp.HasField("stride_w")):
                raise self.error("both stride_h and stride_w are required when either is set")
            self.stride = (pp.stride_h, pp.stride_w)
        else:
            self.stride = (pp.stride, pp.stride)
        if self.global_pooling:
            self.pad, self.stride = (0, 0), (1, 1)
        if any(k <= 0 for k in self.kernel) or any(s <= 0 for s in self.stride):
            raise self.error(f"kernel {list(self.kernel)} and stride {list(self.stride)} must be positive")
        if any(p > 0 for p in self.pad):
            if self.method not in (pb.PoolingParameter.AVE, pb.PoolingParameter.MAX):
                raise self.error("padding is implemented only for AVE and MAX pooling")
            if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
                raise self.error(f"pad {list(self.pad)} must be smaller than the kernel {list(self.kernel)}")
        if len(param.top) == 2 and self.method != pb.PoolingParameter.MAX:
            raise self.error("a second top (the argmax mask) exists only for MAX pooling")
        self.out_hw = tuple(self._out(shape[2 + i], i) for i in range(2))

    def _out(self, size: int, i: int) -> int:
        k, p, s = self.kernel[i], self.pad[i], self.stride[i]
        out = int(math.ceil((size + 2 * p - k) / s)) + 1
        if p and (out - 1) * s >= size + p:
            out -= 1
        return out

    def forward(self, x: torch.Tensor):
        m = self.method
        if m == pb.PoolingParameter.MAX:
            if len(self.layer_param.top) == 2:
                y, idx = F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=True,
                                      return_indices=True)
                return y, idx.to(x.dtype)
            return F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=True)
        if m == pb.PoolingParameter.AVE:
            return F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=True,
                                count_include_pad=True)
        return self._stochastic(x)

    def _stochastic(self, x: torch.Tensor) -> torch.Tensor:
        # Caffe STOCHASTIC (no padding): TRAIN samples one activation per window with
        # probability proportional to its value; TEST returns sum(x^2)/sum(x) per window.
        N, C, H, W = x.shape
        kh, kw = self.kernel
        sh, sw = self.stride
        oh, ow = self.out_hw
        # ceil-mode windows may run past the image: pad with zeros (they weigh nothing).
        ph = max(0, (oh - 1) * sh + kh - H)
        pw = max(0, (ow - 1) * sw + kw - W)
        xp = F.pad(x, (0, pw, 0, ph))
        cols = F.unfold(xp, (kh, kw), stride=(sh, sw))  # N, C*kh*kw, L
        cols = cols.view(N, C, kh * kw, oh * ow)
        total = cols.sum(dim=2)
        if self.phase == pb.TRAIN:
            probs = cols / total.clamp_min(torch.finfo(x.dtype).tiny).unsqueeze(2)
            cum = probs.cumsum(dim=2)
            r = torch.rand(total.shape, dtype=x.dtype, device=x.device).unsqueeze(2)
            pick = (cum < r).sum(dim=2, keepdim=True).clamp_max(kh * kw - 1)
            y = cols.gather(2, pick).squeeze(2)
        else:
            y = (cols * cols).sum(dim=2) / total.clamp_min(torch.finfo(x.dtype).tiny)
        return y.view(N, C, oh, ow)

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        N, C, H, W = bottom_shapes[0]
        top = (N, C, self._out(H, 0), self._out(W, 1))
        return [top] * len(self.layer_param.top)
