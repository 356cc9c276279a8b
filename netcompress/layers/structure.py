"""Layers that move data without arithmetic: Split, Concat, Slice, Flatten, Reshape, Crop, Tile,
Silence. Their gradients are plain routing, which autograd provides."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, canonical_axis, register_layer

__all__ = ["Split", "Concat", "Slice", "Flatten", "Reshape", "Crop", "Tile", "Silence"]


def _no_in_place(layer: Layer, param: pb.LayerParameter) -> None:
    for t in param.top:
        if t in param.bottom:
            raise layer.error(f"does not allow in-place computation (top '{t}' is also a bottom)")


@register_layer("Split")
class Split(Layer):
    """Copies its one bottom to every top (gradients from the tops are summed)."""

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms = max_bottoms = 1
    min_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        _no_in_place(self, param)
        self.num_tops = len(param.top)

    def forward(self, x: torch.Tensor):
        return x if self.num_tops == 1 else tuple(x for _ in range(self.num_tops))

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])] * self.num_tops


def _legacy_axis(layer: Layer, msg, new: str, old: str, ndim: int) -> int:
    """Concat/Slice: `axis` (may be negative) or the legacy unsigned `concat_dim`/`slice_dim`."""
    if msg.HasField(new) and msg.HasField(old):
        raise layer.error(f"either {new} or {old} should be specified, not both")
    if msg.HasField(old):
        a = int(getattr(msg, old))
        if not 0 <= a < ndim:
            raise layer.error(f"{old} {a} is out of range for a {ndim}-D bottom "
                              f"(expected 0 <= {old} < {ndim})")
        return a
    return canonical_axis(getattr(msg, new), ndim, layer)


@register_layer("Concat")
class Concat(Layer):
    """Concatenates its bottoms along `axis` (legacy `concat_dim`); one bottom passes through."""

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        shape0 = self.bottom_shapes[0]
        self.axis = _legacy_axis(self, param.concat_param, "axis", "concat_dim", len(shape0))
        for i, s in enumerate(self.bottom_shapes[1:], 1):
            if len(s) != len(shape0):
                raise self.error(f"all bottoms must have the same number of axes: bottom 0 is "
                                 f"{list(shape0)}, bottom {i} is {list(s)}")
            if any(a != b for j, (a, b) in enumerate(zip(s, shape0)) if j != self.axis):
                raise self.error(f"all bottoms must have the same shape except along axis {self.axis}: "
                                 f"bottom 0 is {list(shape0)}, bottom {i} is {list(s)}")

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=self.axis)


@register_layer("Slice")
class Slice(Layer):
    """Splits its bottom along `axis` (legacy `slice_dim`) at `slice_point`s, or into equal parts
    (one per top) when no slice_point is given."""

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms = max_bottoms = 1
    min_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        sp = param.slice_param
        shape = self.bottom_shapes[0]
        self.axis = _legacy_axis(self, sp, "axis", "slice_dim", len(shape))
        self.slice_points = [int(p) for p in sp.slice_point]
        self.num_tops = len(param.top)
        self.sizes = self._sizes(shape[self.axis])

    def _sizes(self, n: int) -> list[int]:
        ntop = self.num_tops
        if self.slice_points:
            if len(self.slice_points) != ntop - 1:
                raise self.error(f"needs one slice_point fewer than tops: {ntop} tops, "
                                 f"{len(self.slice_points)} slice points")
            if ntop > n:
                raise self.error(f"{ntop} tops cannot slice an axis of size {n}")
            sizes, prev = [], 0
            for p in self.slice_points:
                if p <= prev:
                    raise self.error(f"slice points must increase strictly from above 0, got "
                                     f"{self.slice_points}")
                sizes.append(p - prev)
                prev = p
            if prev > n:
                raise self.error(f"slice point {prev} is beyond the size {n} of axis {self.axis}")
            sizes.append(n - prev)
            return sizes
        if n % ntop:
            raise self.error(f"the number of tops ({ntop}) must evenly divide the size {n} of "
                             f"axis {self.axis}")
        return [n // ntop] * ntop

    def forward(self, x: torch.Tensor):
        sizes = self._sizes(x.shape[self.axis])
        if self.num_tops == 1:
            return x
        return tuple(torch.split(x, sizes, dim=self.axis))

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = list(bottom_shapes[0])
        out = []
        for s in self._sizes(shape[self.axis]):
            shape[self.axis] = s
            out.append(tuple(shape))
        return out


@register_layer("Flatten")
class Flatten(Layer):
    """Flattens axes `axis` .. `end_axis` (inclusive) into one."""

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        _no_in_place(self, param)
        fp = param.flatten_param
        self.axis_param, self.end_axis_param = int(fp.axis), int(fp.end_axis)
        self._top_shape(self.bottom_shapes[0])  # validate now

    def _top_shape(self, s: Shape) -> Shape:
        start = canonical_axis(self.axis_param, len(s), self, "flatten_param.axis")
        end = canonical_axis(self.end_axis_param, len(s), self, "flatten_param.end_axis")
        if end < start:
            raise self.error(f"flatten_param.end_axis ({self.end_axis_param} -> {end}) must not come "
                             f"before axis ({self.axis_param} -> {start}) for shape {list(s)}")
        return (*s[:start], math.prod(s[start:end + 1]), *s[end + 1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self._top_shape(tuple(x.shape)))

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [self._top_shape(tuple(bottom_shapes[0]))]


@register_layer("Reshape")
class Reshape(Layer):
    """Caffe Reshape: replaces axes [axis, axis + num_axes) with `shape`, where 0 copies the
    bottom's dimension at that position and one -1 is inferred from the count."""

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        _no_in_place(self, param)
        rp = param.reshape_param
        self.dims = [int(d) for d in rp.shape.dim]
        self.axis_param, self.num_axes = int(rp.axis), int(rp.num_axes)
        if sum(1 for d in self.dims if d == -1) > 1:
            raise self.error(f"reshape_param.shape {self.dims} contains more than one -1; at most one "
                             "dimension can be inferred")
        if any(d < -1 for d in self.dims):
            raise self.error(f"reshape_param.shape {self.dims} may hold only positive sizes, 0 (copy) "
                             "and one -1 (infer)")
        if self.num_axes < -1:
            raise self.error(f"reshape_param.num_axes must be >= 0, or -1 for all, got {self.num_axes}")
        self._top_shape(self.bottom_shapes[0])  # validate now

    def _top_shape(self, s: Shape) -> Shape:
        nd = len(s)
        start = self.axis_param if self.axis_param >= 0 else nd + self.axis_param + 1
        if not 0 <= start <= nd:
            raise self.error(f"reshape_param.axis {self.axis_param} is out of range for a {nd}-D bottom")
        end = nd if self.num_axes == -1 else start + self.num_axes
        if end > nd:
            raise self.error(f"reshape_param.axis + num_axes = {end} is out of range for a {nd}-D bottom")
        top = list(s[:start]) + list(self.dims) + list(s[end:])
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= nd:
                    raise self.error(f"reshape_param.shape has a 0 at position {i}, but the bottom "
                                     f"{list(s)} has no axis {start + i} to copy")
                top[start + i] = s[start + i]
        count = math.prod(s)
        if -1 in self.dims:
            i = self.dims.index(-1)
            known = math.prod(d for j, d in enumerate(top) if j != start + i)
            if known == 0 or count % known:
                raise self.error(f"bottom count ({count}, shape {list(s)}) must be divisible by the "
                                 f"product of the specified dimensions ({known})")
            top[start + i] = count // known
        if math.prod(top) != count:
            raise self.error(f"output count ({math.prod(top)}, shape {top}) must match the bottom "
                             f"count ({count}, shape {list(s)})")
        return tuple(top)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self._top_shape(tuple(x.shape)))

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [self._top_shape(tuple(bottom_shapes[0]))]


@register_layer("Crop")
class Crop(Layer):
    """Crops bottom[0] to the shape of bottom[1] on every axis from `axis` on, starting at
    `offset` (one value for all those axes, one per axis, or none for 0). bottom[1] only gives
    the shape and receives no gradient."""

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        cp = param.crop_param
        nd = len(self.bottom_shapes[0])
        self.axis = canonical_axis(cp.axis, nd, self, "crop_param.axis")
        self.offsets_param = [int(o) for o in cp.offset]
        if len(self.offsets_param) > 1 and self.axis + len(self.offsets_param) != nd:
            raise self.error(f"crop_param.offset must be given once or once per axis from axis "
                             f"{self.axis} on ({nd - self.axis}), got {len(self.offsets_param)}")
        self._geometry(self.bottom_shapes[0], self.bottom_shapes[1])  # validate now

    def _geometry(self, s: Shape, ref: Shape) -> list[tuple[int, int]]:
        if len(ref) != len(s):
            raise self.error(f"bottom[1] must have as many axes as bottom[0]: {list(s)} vs {list(ref)}")
        out = []
        for i, n in enumerate(s):
            if i < self.axis:
                out.append((0, n))
                continue
            off = 0
            if len(self.offsets_param) == 1:
                off = self.offsets_param[0]
            elif len(self.offsets_param) > 1:
                off = self.offsets_param[i - self.axis]
            if n - off < ref[i]:
                raise self.error(f"the crop for axis {i} is out of bounds: size {ref[i]} at offset "
                                 f"{off} does not fit in {n}")
            out.append((off, ref[i]))
        return out

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        geo = self._geometry(tuple(x.shape), tuple(ref.shape))
        return x[tuple(slice(o, o + n) for o, n in geo)]

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(n for _, n in self._geometry(tuple(bottom_shapes[0]), tuple(bottom_shapes[1])))]


@register_layer("Tile")
class Tile(Layer):
    """Repeats the bottom `tiles` times along `axis` (the whole block from `axis` on is repeated)."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        tp = param.tile_param
        self.axis = canonical_axis(tp.axis, len(self.bottom_shapes[0]), self, "tile_param.axis")
        if not tp.HasField("tiles"):
            raise self.error("tile_param.tiles must be specified")
        self.tiles = int(tp.tiles)
        if self.tiles <= 0:
            raise self.error(f"tile_param.tiles must be positive, got {self.tiles}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reps = [1] * x.dim()
        reps[self.axis] = self.tiles
        return x.repeat(*reps)


@register_layer("Silence")
class Silence(Layer):
    """Consumes its bottoms and produces nothing (so they are not net outputs); they get no
    gradient from it."""

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms = 1
    min_tops = max_tops = 0

    def forward(self, *xs: torch.Tensor):
        return ()

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return []
