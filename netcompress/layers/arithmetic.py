"""Arithmetic layers with Caffe's definitions: Eltwise, Scale, Bias, Softmax, ArgMax, Reduction,
Embed."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..fillers import fill
from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, canonical_axis, register_layer, rows

__all__ = ["Eltwise", "Scale", "Bias", "Softmax", "ArgMax", "Reduction", "Embed"]


@register_layer("Eltwise")
class Eltwise(Layer):
    """Element-wise PROD, SUM (with one `coeff` per bottom) or MAX of two or more same-shape bottoms.

    MAX routes the gradient to one argmax per element, chosen as Caffe's GPU kernel chooses it
    (the project follows Caffe's GPU semantics): a later bottom wins ties (`a > b` keeps a, else
    b). Caffe's CPU code differs only on ties involving a third or later bottom, which it leaves
    with the earlier one. PROD's gradient is the product of the other bottoms (Caffe's default
    stable_prod_grad); with stable_prod_grad false Caffe divides top by bottom instead, which
    differs only where a bottom is 0 (there Caffe gives NaN/inf), not reproduced.
    """

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms = 2
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        ep = param.eltwise_param
        n = len(self.bottom_shapes)
        self.op = ep.operation
        if len(ep.coeff) not in (0, n):
            raise self.error(f"eltwise_param.coeff must be given once per bottom ({n}) or not at all, "
                             f"got {len(ep.coeff)}")
        if self.op == pb.EltwiseParameter.PROD and len(ep.coeff):
            raise self.error("eltwise_param.coeff is only allowed with operation SUM (this layer is PROD)")
        if self.op == pb.EltwiseParameter.MAX and len(ep.coeff):
            raise self.error("eltwise_param.coeff is only allowed with operation SUM (this layer is MAX)")
        self.coeffs = [float(c) for c in ep.coeff] if len(ep.coeff) else [1.0] * n
        for i, s in enumerate(self.bottom_shapes[1:], 1):
            if s != self.bottom_shapes[0]:
                raise self.error(f"all bottoms must have the same shape: bottom 0 is "
                                 f"{list(self.bottom_shapes[0])}, bottom {i} is {list(s)}")

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        for i, x in enumerate(xs[1:], 1):
            if x.shape != xs[0].shape:
                raise self.error(f"all bottoms must have the same shape: bottom 0 is "
                                 f"{list(xs[0].shape)}, bottom {i} is {list(x.shape)}")
        if self.op == pb.EltwiseParameter.PROD:
            y = xs[0] * xs[1]
            for x in xs[2:]:
                y = y * x
            return y
        if self.op == pb.EltwiseParameter.SUM:
            y = None
            for c, x in zip(self.coeffs, xs):
                term = x if c == 1.0 else x * c
                y = term if y is None else y + term
            return y
        # MAX: where() sends the gradient to exactly the branch it selected.
        y = torch.where(xs[0] > xs[1], xs[0], xs[1])
        for x in xs[2:]:
            y = torch.where(y > x, y, x)
        return y


def _axis_span(layer: Layer, shape: Shape, axis: int, num_axes: int, what: str) -> tuple[int, Shape]:
    """Caffe's Scale/Bias parameter geometry: shape[axis : axis + num_axes] (-1: to the end)."""
    axis = canonical_axis(axis, len(shape), layer)
    if num_axes < -1:
        raise layer.error(f"{what}.num_axes must be non-negative, or -1 to extend to the end of "
                          f"bottom[0], got {num_axes}")
    if num_axes >= 0 and len(shape) < axis + num_axes:
        raise layer.error(f"the {what} blob's shape extends past bottom[0]'s shape {list(shape)} "
                          f"when applied from axis {axis} over {num_axes} axes")
    end = len(shape) if num_axes == -1 else axis + num_axes
    return axis, tuple(shape[axis:end])


def _broadcast(layer: Layer, x: torch.Tensor, p: torch.Tensor, axis_param: int, what: str) -> torch.Tensor:
    """View p (shape = x.shape[axis : axis + p.dim()]) so that it broadcasts against x."""
    axis = 0 if p.dim() == 0 else canonical_axis(axis_param, x.dim(), layer)
    if x.dim() < axis + p.dim() or tuple(x.shape[axis:axis + p.dim()]) != tuple(p.shape):
        raise layer.error(f"{what} shape {list(p.shape)} does not match bottom[0] shape "
                          f"{list(x.shape)} from axis {axis}")
    return p.reshape(*p.shape, *([1] * (x.dim() - axis - p.dim())))


def _filler(f: pb.FillerParameter | None, default_value: float) -> pb.FillerParameter:
    out = pb.FillerParameter()
    if f is not None:
        out.CopyFrom(f)
    else:
        out.type, out.value = "constant", default_value
    return out


@register_layer("Bias")
class Bias(Layer):
    """y = x + b, b broadcast over bottom[0] from `axis` along `num_axes` axes.

    b is a learned blob (default filler constant 0), or the second bottom (which then receives a
    gradient). A scalar b (num_axes 0) applies to everything.
    """

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms, max_bottoms = 1, 2
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        bp = param.bias_param
        self.axis = int(bp.axis)
        shape = self.bottom_shapes[0]
        if len(self.bottom_shapes) == 1:
            _, bshape = _axis_span(self, shape, bp.axis, bp.num_axes, "bias")
            # An unset FillerParameter is Caffe's default filler: constant 0.
            self.add_blob("bias", fill(self.new_empty(*bshape), bp.filler, ctx.generator,
                                       f"layer '{self.name}': "))
        else:
            b = self.bottom_shapes[1]
            axis = 0 if len(b) == 0 else canonical_axis(bp.axis, len(shape), self)
            if tuple(shape[axis:axis + len(b)]) != tuple(b):
                raise self.error(f"bottom[1] shape {list(b)} does not match bottom[0] shape "
                                 f"{list(shape)} from axis {axis}")

    def forward(self, x: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        b = self.bias if b is None else b
        return x + _broadcast(self, x, b, self.axis, "bias")


@register_layer("Scale")
class Scale(Layer):
    """y = x * s (+ b), s broadcast over bottom[0] from `axis` along `num_axes` axes.

    s is a learned blob (default filler constant 1) or the second bottom (which then receives a
    gradient). With bias_term a bias blob follows (default filler constant 0), shaped like s, or
    for a second bottom like that bottom. Blob order: [scale, bias], or [bias] with two bottoms.
    """

    @classmethod
    def factory_children(cls, param: pb.LayerParameter) -> int:
        return int(param.scale_param.bias_term)  # its Bias layer

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms, max_bottoms = 1, 2
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        sp = param.scale_param
        self.axis = int(sp.axis)
        self.bias_term = bool(sp.bias_term)
        shape = self.bottom_shapes[0]
        where = f"layer '{self.name}': "
        if len(self.bottom_shapes) == 1:
            _, sshape = _axis_span(self, shape, sp.axis, sp.num_axes, "scale")
            self.add_blob("weight", fill(self.new_empty(*sshape),
                                         _filler(sp.filler if sp.HasField("filler") else None, 1.0),
                                         ctx.generator, where))
            bias_axes = sp.num_axes
        else:
            s = self.bottom_shapes[1]
            axis = 0 if len(s) == 0 else canonical_axis(sp.axis, len(shape), self)
            if tuple(shape[axis:axis + len(s)]) != tuple(s):
                raise self.error(f"bottom[1] (the scale) shape {list(s)} does not match bottom[0] "
                                 f"shape {list(shape)} from axis {axis}")
            bias_axes = len(s)
        if self.bias_term:
            _, bshape = _axis_span(self, shape, sp.axis, bias_axes, "bias")
            # Caffe's BiasParameter filler is bias_filler, whose proto default is constant 0.
            self.add_blob("bias", fill(self.new_empty(*bshape), sp.bias_filler, ctx.generator, where))

    def forward(self, x: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        s = self.weight if s is None else s
        y = x * _broadcast(self, x, s, self.axis, "scale")
        if self.bias_term:
            y = y + _broadcast(self, x, self.bias, self.axis, "bias")
        return y


@register_layer("Softmax")
class Softmax(Layer):
    """Softmax over `softmax_param.axis` (exp(x - max) / sum, as Caffe)."""

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        self.axis = canonical_axis(param.softmax_param.axis, len(self.bottom_shapes[0]), self,
                                   "softmax_param.axis")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=self.axis)


@register_layer("ArgMax")
class ArgMax(Layer):
    """Indices (or values) of the top_k largest entries, Caffe's output layout and tie order.

    Without `axis`: per sample over all other axes flattened; the top has shape
    (N, 1, top_k) -- (N, 2, top_k) with out_max_val, indices then values -- padded with trailing
    1s to the bottom's number of axes. With `axis`: the bottom's shape with that axis set to
    top_k, holding indices, or the values with out_max_val. Ties are ordered as Caffe's
    std::greater on (value, index) pairs: the larger index first. No gradient (Caffe has none).
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        ap = param.argmax_param
        shape = self.bottom_shapes[0]
        self.out_max_val = bool(ap.out_max_val)
        self.top_k = int(ap.top_k)
        if self.top_k < 1:
            raise self.error(f"argmax_param.top_k must be at least 1, got {self.top_k}")
        self.has_axis = ap.HasField("axis")
        if self.has_axis:
            self.axis = canonical_axis(ap.axis, len(shape), self, "argmax_param.axis")
            if self.top_k > shape[self.axis]:
                raise self.error(f"argmax_param.top_k ({self.top_k}) must be at most the size of axis "
                                 f"{self.axis} ({shape[self.axis]})")
        else:
            self.axis = None
            if len(shape) < 1:
                raise self.error("needs a bottom with at least one axis")
            if self.top_k > math.prod(shape[1:]):
                raise self.error(f"argmax_param.top_k ({self.top_k}) must be at most the number of "
                                 f"entries per sample ({math.prod(shape[1:])})")

    def _sorted(self, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Flip, then a stable descending sort: equal values keep the flipped order, which puts
        # the larger original index first, as std::greater on (value, index) pairs does.
        n = x.shape[dim]
        vals, idx = torch.sort(torch.flip(x, dims=[dim]), dim=dim, descending=True, stable=True)
        vals = vals.narrow(dim, 0, self.top_k)
        idx = (n - 1) - idx.narrow(dim, 0, self.top_k)
        return vals, idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if self.has_axis:
            vals, idx = self._sorted(x, self.axis)
            return vals if self.out_max_val else idx.to(x.dtype)
        N = x.shape[0]
        vals, idx = self._sorted(rows(x, N), 1)
        idx = idx.to(x.dtype)
        out = torch.stack([idx, vals], dim=1) if self.out_max_val else idx.unsqueeze(1)
        return out.reshape(self._top_shape(tuple(x.shape)))

    def _top_shape(self, s: Shape) -> Shape:
        if self.has_axis:
            out = list(s)
            out[self.axis] = self.top_k
            return tuple(out)
        out = [1] * max(len(s), 3)
        out[0] = s[0]
        out[1] = 2 if self.out_max_val else 1
        out[2] = self.top_k
        return tuple(out)

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [self._top_shape(tuple(bottom_shapes[0]))]


@register_layer("Reduction")
class Reduction(Layer):
    """Reduces all axes from `axis` on with SUM, ASUM (sum of |x|), SUMSQ or MEAN, times `coeff`.
    The top has the bottom's leading axes (shape () for axis 0)."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        rp = param.reduction_param
        self.op = rp.operation
        self.coeff = float(rp.coeff)
        self.axis = canonical_axis(rp.axis, len(self.bottom_shapes[0]), self, "reduction_param.axis")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = tuple(x.shape[:self.axis])
        x2 = x.reshape(math.prod(lead), -1)
        coeff = self.coeff
        if self.op in (pb.ReductionParameter.SUM, pb.ReductionParameter.MEAN):
            y = x2.sum(dim=1)
            if self.op == pb.ReductionParameter.MEAN:
                coeff = coeff / x2.shape[1]
        elif self.op == pb.ReductionParameter.ASUM:
            y = x2.abs().sum(dim=1)
        elif self.op == pb.ReductionParameter.SUMSQ:
            y = (x2 * x2).sum(dim=1)
        else:
            raise self.error(f"unknown reduction operation {self.op}")
        if coeff != 1.0:
            y = y * coeff
        return y.reshape(lead)


@register_layer("Embed")
class Embed(Layer):
    """Looks up rows of a (input_dim, num_output) weight by the integer values of the bottom
    (+ bias). The top has the bottom's shape plus a last axis of num_output. The bottom gets no
    gradient (Caffe refuses to backpropagate to it)."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        ep = param.embed_param
        self.num_output = int(ep.num_output)
        self.input_dim = int(ep.input_dim)
        if self.num_output <= 0:
            raise self.error(f"embed_param.num_output must be positive, got {self.num_output}")
        if self.input_dim <= 0:
            raise self.error(f"embed_param.input_dim must be positive, got {self.input_dim}")
        self.bias_term = bool(ep.bias_term)
        where = f"layer '{self.name}': "
        self.add_blob("weight", fill(self.new_empty(self.input_dim, self.num_output), ep.weight_filler,
                                     ctx.generator, where))
        if self.bias_term:
            self.add_blob("bias", fill(self.new_empty(self.num_output), ep.bias_filler, ctx.generator, where))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x.detach().long()
        if idx.numel() and (bool((idx < 0).any()) or bool((idx >= self.input_dim).any())):
            raise self.error(f"indices must lie in [0, {self.input_dim}), got "
                             f"{int(idx.min())}..{int(idx.max())}")
        y = self.weight.index_select(0, idx.reshape(-1)).reshape(*x.shape, self.num_output)
        if self.bias_term:
            y = y + self.bias
        return y

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [(*bottom_shapes[0], self.num_output)]
