"""Normalization layers with Caffe's definitions: LRN, BatchNorm, MVN."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, register_layer, rows

__all__ = ["LRN", "BatchNorm", "MVN"]


@register_layer("LRN")
class LRN(Layer):
    """Caffe local response normalization on (N, C, H, W) bottoms.

    ACROSS_CHANNELS: scale = k + alpha / local_size * sum of x^2 over the local_size channels
    centred on c (zero beyond the edges); y = x * scale^-beta.

    WITHIN_CHANNEL: Caffe builds it from sub-layers: x^2, AVE pooling over a local_size x
    local_size window with pad (local_size - 1) / 2 and stride 1, then Power(shift 1,
    scale alpha, power -beta) and a product with x. Every window lies within the padded image,
    so the AVE divisor is always local_size^2 (padding counts as zeros):
    y = x * (1 + alpha / local_size^2 * sum of x^2 over the window)^-beta. Note that `k` is not
    used in this mode (Caffe's Power sub-layer has shift 1), reproduced here.

    Caffe's backward is the true derivative in both modes, so autograd provides it.
    """

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        lp = param.lrn_param
        self.size = int(lp.local_size)
        if self.size % 2 != 1:
            raise self.error(f"lrn_param.local_size must be odd, got {self.size}")
        self.pre_pad = (self.size - 1) // 2
        self.alpha, self.beta, self.k = float(lp.alpha), float(lp.beta), float(lp.k)
        self.region = lp.norm_region
        if len(self.bottom_shapes[0]) != 4:
            raise self.error(f"needs a 4-D bottom (N, C, H, W), got shape {list(self.bottom_shapes[0])}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise self.error(f"needs a 4-D bottom (N, C, H, W), got shape {list(x.shape)}")
        sq = x * x
        if self.region == pb.LRNParameter.ACROSS_CHANNELS:
            # Window sum over channels (zero padding), then k + alpha/n * sum, as Caffe's GPU
            # kernel does (the CPU one adds alpha/n * x^2 terms one by one onto k).
            # A window wider than the channels on each side adds only zeros past them: cut it to the channels
            # (a local_size of 2^31 - 1 asked for terabytes of padding; the sums keep the same terms).
            pad = max(0, min(self.pre_pad, x.shape[1] - 1))
            padded = F.pad(sq, (0, 0, 0, 0, pad, pad))
            window = padded.unfold(1, 2 * pad + 1, 1).sum(dim=-1)
            scale = window * (self.alpha / self.size) + self.k
            return x * torch.pow(scale, -self.beta)
        pooled = F.avg_pool2d(sq, self.size, stride=1, padding=self.pre_pad, ceil_mode=True,
                              count_include_pad=True)
        return x * torch.pow(pooled * self.alpha + 1.0, -self.beta)

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])]


@register_layer("BatchNorm")
class BatchNorm(Layer):
    """Caffe BatchNorm: normalizes each channel (axis 1) with no affine part (that is Scale).

    Blobs (buffers, never learned): mean and variance, shape (C,), and scale_factor, shape (1,).
    They are stored unnormalized: the statistics used are blob / scale_factor (0 when the factor
    is 0). With batch statistics (TRAIN unless use_global_stats is set) the forward also updates
    the blobs, as Caffe does inside Forward: scale_factor = maf * scale_factor + 1,
    mean_blob = maf * mean_blob + batch_mean, var_blob = maf * var_blob + m/(m-1) * batch_var,
    with m = count / C. This state change is the documented exception to pure forwards; it runs
    under no_grad. Set-up and shape inference never update them.

    The variance used to normalize is the biased batch variance; y = (x - mean) / sqrt(var + eps).
    Caffe's backward is the true derivative of that, so autograd provides it.
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        bp = param.batch_norm_param
        shape = self.bottom_shapes[0]
        self.maf = float(bp.moving_average_fraction)
        self.use_global_stats = bool(bp.use_global_stats) if bp.HasField("use_global_stats") \
            else self.phase == pb.TEST
        self.eps = float(bp.eps)
        if len(shape) == 0:
            raise self.error("needs a bottom with at least 1 axis")
        self.channels = 1 if len(shape) == 1 else shape[1]
        for i, spec in enumerate(param.param):
            if i < 3 and spec.lr_mult != 0:
                raise self.error(f"param {i} has lr_mult {spec.lr_mult}: batch normalization "
                                 "statistics cannot be configured as layer parameters (lr_mult must be 0)")
        # As Caffe's LayerSetUp: the statistics get lr_mult 0 specs in this layer's own copy of its
        # parameter (which the Net records and to_proto writes).
        while len(param.param) < 3:
            param.param.add().lr_mult = 0.0
        zeros = torch.zeros
        self.add_blob("mean", zeros(self.channels), learnable=False)
        self.add_blob("variance", zeros(self.channels), learnable=False)
        self.add_blob("scale_factor", zeros(1), learnable=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = self.channels
        if x.dim() >= 2 and x.shape[1] != C:
            raise self.error(f"bottom has {x.shape[1]} channels, the statistics were made for {C}")
        bshape = (1, C) + (1,) * (x.dim() - 2) if x.dim() >= 2 else (1,)
        dims = [d for d in range(x.dim()) if d != 1] if x.dim() >= 2 else [0]
        if self.use_global_stats:
            sf = self.scale_factor[0]
            factor = torch.where(sf == 0, torch.zeros_like(sf), 1.0 / sf)
            mean = self.mean * factor
            var = self.variance * factor
        else:
            mean = x.mean(dim=dims)
            centered = x - mean.reshape(bshape)
            var = (centered * centered).mean(dim=dims)
            with torch.no_grad():
                m = x.numel() // C
                correction = m / (m - 1) if m > 1 else 1.0
                self.scale_factor.mul_(self.maf).add_(1.0)
                self.mean.mul_(self.maf).add_(mean.detach().to(self.mean.dtype))
                self.variance.mul_(self.maf).add_(var.detach().to(self.variance.dtype) * correction)
            return centered / torch.sqrt(var + self.eps).reshape(bshape)
        return (x - mean.reshape(bshape)) / torch.sqrt(var + self.eps).reshape(bshape)

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])]


class _MVNFunction(torch.autograd.Function):
    """MVN with normalize_variance: y = (x - mean) / (std + eps) per row of a (rows, dim) view.

    Caffe's backward is (g - mean(g) - y * mean(g * y)) / (std + eps), which drops a factor
    (std + eps) / std from the variance term: it is the true derivative only when eps = 0.
    This Function reproduces Caffe's backward.
    """

    @staticmethod
    def forward(ctx, x2: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        mean = x2.mean(dim=1, keepdim=True)
        centered = x2 - mean
        std = torch.sqrt((centered * centered).mean(dim=1, keepdim=True))
        denom = std + eps
        y = centered / denom
        ctx.save_for_backward(y, denom)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        y, denom = ctx.saved_tensors
        dim = y.shape[1]
        gx = g - (g.sum(dim=1, keepdim=True) + y * (g * y).sum(dim=1, keepdim=True)) / dim
        return gx / denom, None


@register_layer("MVN")
class MVN(Layer):
    """Caffe mean-variance normalization per (sample, channel), or per sample with
    across_channels. y = x - mean, and with normalize_variance y = (x - mean) / (std + eps), where
    std is the biased standard deviation and eps is added after the square root (Caffe's order).
    Caffe's backward for the variance case is not the true derivative (see _MVNFunction) and is
    reproduced; without normalize_variance it is."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        mp = param.mvn_param
        self.normalize_variance = bool(mp.normalize_variance)
        self.across_channels = bool(mp.across_channels)
        self.eps = float(mp.eps)
        if len(self.bottom_shapes[0]) > 4:
            raise self.error(f"works on blobs of at most 4 axes (N, C, H, W), got shape "
                             f"{list(self.bottom_shapes[0])}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num = x.shape[0] if x.dim() else 1
        if not self.across_channels and x.dim() >= 2:
            num *= x.shape[1]
        x2 = rows(x, num)
        if self.normalize_variance:
            y = _MVNFunction.apply(x2, self.eps)
        else:
            y = x2 - x2.mean(dim=1, keepdim=True)
        return y.reshape(x.shape)

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])]
