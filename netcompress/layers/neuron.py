"""Element-wise ("neuron") layers with Caffe's definitions.

Each layer reproduces Caffe's formula, its branch points (`x > 0` versus `x <= 0`), constants and
clamps. Where Caffe's backward is the true derivative of its forward, autograd provides it; the
branches are written with `torch.where` so that the derivative at a branch point is the one Caffe
uses (for example ReLU/PReLU/ELU take the `x <= 0` side at 0). Rounding may differ from Caffe's by
an ulp (different summation and transcendental implementations).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..fillers import fill
from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, register_layer

__all__ = ["NeuronLayer", "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "Power", "Exp", "Log",
           "BNLL", "Threshold", "Dropout"]


class NeuronLayer(Layer):
    """One bottom, one top of the same shape (in-place allowed)."""

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])]


@register_layer("ReLU")
class ReLU(NeuronLayer):
    """max(x, 0) + negative_slope * min(x, 0); the gradient at 0 is negative_slope (Caffe)."""

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        self.negative_slope = float(param.relu_param.negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.negative_slope == 0.0:
            return F.relu(x)
        return F.leaky_relu(x, self.negative_slope)


@register_layer("PReLU")
class PReLU(NeuronLayer):
    """Caffe PReLU: y = max(x, 0) + a_c * min(x, 0), one slope per channel (axis 1) or one shared.

    Blob 0 is the slope: shape (C,), or a scalar (shape ()) with `channel_shared`. Without a
    filler the slopes start at 0.25, as in Caffe.
    """

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        pp = param.prelu_param
        shape = self.bottom_shapes[0]
        if len(shape) < 2:
            raise self.error(f"needs a bottom with at least 2 axes (N, C, ...), got shape {list(shape)}")
        self.channels = shape[1]
        self.channel_shared = bool(pp.channel_shared)
        filler = pb.FillerParameter()
        if pp.HasField("filler"):
            filler.CopyFrom(pp.filler)
        else:
            filler.type, filler.value = "constant", 0.25
        wshape: tuple[int, ...] = () if self.channel_shared else (self.channels,)
        self.add_blob("weight", fill(self.new_empty(*wshape), filler, ctx.generator,
                                     f"layer '{self.name}': "))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or (not self.channel_shared and x.shape[1] != self.channels):
            raise self.error(f"bottom shape {list(x.shape)} does not match the {self.channels} "
                             "channels the slopes were made for")
        a = self.weight if self.channel_shared else \
            self.weight.reshape(1, self.channels, *([1] * (x.dim() - 2)))
        # Caffe: dy/dx = 1 if x > 0 else a; dy/da = x if x <= 0 else 0; where() gives exactly that.
        return torch.where(x > 0, x, a * x)


@register_layer("ELU")
class ELU(NeuronLayer):
    """max(x, 0) + alpha * (exp(min(x, 0)) - 1); the gradient at 0 is alpha, as in Caffe."""

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        self.alpha = float(param.elu_param.alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # exp(.) - 1 rather than expm1, as Caffe computes it. min(x, 0) by `where`, not clamp_max: the gradient
        # must reach x at 0 (Caffe's alpha there), and clamp's gradient at its bound is 1 up to torch 2.13, 0 after.
        pos = x > 0
        neg = torch.where(pos, 0.0, x)
        return torch.where(pos, x, self.alpha * (torch.exp(neg) - 1.0))


@register_layer("Sigmoid")
class Sigmoid(NeuronLayer):
    """Caffe's sigmoid, 0.5 * tanh(0.5 x) + 0.5, evaluated in double as Caffe's code does (its
    0.5 literals are doubles), so the tails round to exactly 0 and 1 where Caffe's do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.to(torch.float64)
        return (0.5 * torch.tanh(0.5 * wide) + 0.5).to(x.dtype)


@register_layer("TanH")
class TanH(NeuronLayer):
    """tanh(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


@register_layer("AbsVal")
class AbsVal(NeuronLayer):
    """|x|; the gradient is sign(x) (0 at 0), as Caffe's caffe_cpu_sign."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


@register_layer("Power")
class Power(NeuronLayer):
    """y = (shift + scale * x) ^ power.

    As in Caffe, when scale or power is 0 the output is the constant (1 if power == 0, else
    shift^power) and the gradient is 0.
    """

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        pp = param.power_param
        self.power, self.scale, self.shift = float(pp.power), float(pp.scale), float(pp.shift)
        self.diff_scale = self.power * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.diff_scale == 0.0:
            value = 1.0 if self.power == 0.0 else self.shift ** self.power
            # where() keeps the bottom in the graph with a zero gradient (Caffe writes a zero
            # diff) without computing 0 * x, which would turn an inf input into NaN.
            return torch.where(torch.ones_like(x, dtype=torch.bool), torch.full_like(x, value), x)
        y = x
        if self.scale != 1.0:
            y = y * self.scale
        if self.shift != 0.0:
            y = y + self.shift
        if self.power != 1.0:
            y = torch.pow(y, self.power)
        return y


@register_layer("Exp")
class Exp(NeuronLayer):
    """y = base ^ (shift + scale * x); base -1 means e. Computed as Caffe does:
    exp(log(base) * scale * x) * base^shift."""

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        ep = param.exp_param
        base, scale, shift = float(ep.base), float(ep.scale), float(ep.shift)
        if base != -1.0 and not base > 0:
            raise self.error(f"exp_param.base must be strictly positive (or -1 for e), got {base}")
        log_base = 1.0 if base == -1.0 else math.log(base)
        self.inner_scale = log_base * scale
        try:
            self.outer_scale = 1.0 if shift == 0.0 else (math.exp(shift) if base == -1.0 else base ** shift)
        except OverflowError:
            raise self.error(f"exp_param: base^shift overflows (base {base:g}{' (e)' if base == -1.0 else ''}, shift "
                             f"{shift:g}), so every output would be infinite; expected a smaller shift") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(x if self.inner_scale == 1.0 else x * self.inner_scale)
        return y if self.outer_scale == 1.0 else y * self.outer_scale


@register_layer("Log")
class Log(NeuronLayer):
    """y = log_base(shift + scale * x); base -1 means e. Computed as Caffe does:
    ln(shift + scale * x) * (1 / ln(base))."""

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        lp = param.log_param
        base = float(lp.base)
        if base != -1.0 and not base > 0:
            raise self.error(f"log_param.base must be strictly positive (or -1 for e), got {base}")
        log_base = 1.0 if base == -1.0 else math.log(base)
        if log_base == 0.0:
            raise self.error("log_param.base must not be 1 (1/log(base) is infinite)")
        self.base_scale = 1.0 / log_base
        self.scale, self.shift = float(lp.scale), float(lp.shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.scale != 1.0:
            y = y * self.scale
        if self.shift != 0.0:
            y = y + self.shift
        y = torch.log(y)
        return y if self.base_scale == 1.0 else y * self.base_scale


@register_layer("BNLL")
class BNLL(NeuronLayer):
    """Binomial normal log likelihood, log(1 + exp(x)), in Caffe's stable split form:
    x + log(1 + exp(-x)) for x > 0, log(1 + exp(x)) otherwise. The gradient is the logistic
    function; each branch only sees inputs on its own side, so no branch overflows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = x > 0
        xp = torch.where(pos, x, torch.zeros_like(x))
        xn = torch.where(pos, torch.zeros_like(x), x)
        return torch.where(pos, xp + torch.log1p(torch.exp(-xp)), torch.log1p(torch.exp(xn)))


@register_layer("Clip")
class Clip(NeuronLayer):
    """BVLC Caffe's Clip: min(max(x, clip_param.min), clip_param.max); the gradient passes where
    min <= x <= max, bounds included, as Caffe's backward. A NaN stays NaN (Caffe's CPU code would give min,
    its GPU code max; the solver's non-finite check must see it). `where`, not clamp: clamp's gradient at its
    bounds differs between torch versions."""

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        cp = param.clip_param
        if not (param.HasField("clip_param") and cp.HasField("min") and cp.HasField("max")):
            raise self.error("clip_param needs both min and max (BVLC Caffe requires them)")
        self.min, self.max = float(cp.min), float(cp.max)
        if not self.min <= self.max:
            raise self.error(f"clip_param.min ({self.min:g}) must not exceed clip_param.max ({self.max:g})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.where(x < self.min, self.min, x)
        return torch.where(x > self.max, self.max, y)


@register_layer("Swish")
class Swish(NeuronLayer):
    """BVLC Caffe's Swish: x * sigmoid(beta x), with `swish_param.beta` (default 1); beta x is rounded to x's
    dtype first and the sigmoid is Caffe's Sigmoid layer's (0.5 tanh(0.5 z) + 0.5 in double), as Caffe's layer
    runs its inner Sigmoid. The gradient, Caffe's beta y + s (1 - beta y), is the true derivative."""

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        self.beta = float(param.swish_param.beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x * self.beta).to(torch.float64)
        return x * (0.5 * torch.tanh(0.5 * z) + 0.5).to(x.dtype)


@register_layer("Threshold")
class Threshold(NeuronLayer):
    """1 where x > threshold, else 0. Caffe has no backward for it: the top carries no gradient."""

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        self.threshold = float(param.threshold_param.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.detach() > self.threshold).to(x.dtype)


@register_layer("Dropout")
class Dropout(NeuronLayer):
    """Caffe dropout: in TRAIN, keep each unit with probability 1 - dropout_ratio and scale the
    kept ones by 1 / (1 - dropout_ratio); in TEST, the identity.

    The phase is the net's (`ctx.phase`), not nn.Module.train(). Masks are drawn from this
    layer's own generator (see `Layer._init_rng`), whose state `rng_state()` /
    `set_rng_state()` save and restore for a bit-identical resume. A unit is kept when its
    uniform draw exceeds the ratio, as Caffe's GPU code does (u > UINT_MAX * ratio).
    """

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        self.ratio = float(param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_param.dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)
        self._init_rng()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.phase != pb.TRAIN or self.ratio == 0.0:
            return x
        gen = self._rng
        u = torch.rand(x.shape, generator=gen, device=gen.device, dtype=torch.float32)
        keep = (u > self.ratio).to(device=x.device, dtype=x.dtype)
        return x * (keep * self.scale)
