"""Layers that move data without arithmetic: Split, Concat, Slice, Flatten, Reshape, Crop, Tile,
Silence, BatchReindex, Filter. Their gradients are plain routing, which autograd provides."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, canonical_axis, register_layer

__all__ = ["Split", "Concat", "Slice", "Flatten", "Reshape", "Crop", "Tile", "Silence", "BatchReindex", "Filter"]


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


@register_layer("BatchReindex")
class BatchReindex(Layer):
    """Caffe BatchReindex: top = bottom[0][bottom[1]] along the first axis, (M, ...) for M indices.

    bottom[1] is a 1-D blob of indices, read as Caffe reads them (`static_cast<int>`: truncated toward zero,
    after checking the value itself against 0 <= index < N); indices may repeat, and the gradient of a row
    is the sum of the gradients of every top row taken from it. The indices get no gradient (Caffe aborts
    with "Cannot backprop to index" when asked for one; here they are simply not differentiated). An index
    out of range (or NaN) is an error naming the layer, the index and the batch size. Checking the indices
    reads them on the host at every forward.
    """

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        self._top_shape(*self.bottom_shapes)  # validate now

    def _top_shape(self, data: Shape, index: Shape) -> Shape:
        if len(index) != 1:
            raise self.error(f"bottom[1] (the indices) must be 1-D, got shape {list(index)}")
        if len(data) < 1:
            raise self.error("bottom[0] needs a first (batch) axis to index, got a 0-D blob")
        return (index[0], *data[1:])

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [self._top_shape(tuple(bottom_shapes[0]), tuple(bottom_shapes[1]))]

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        self._top_shape(tuple(x.shape), tuple(index.shape))
        index = index.detach()
        n = x.shape[0]
        if index.numel() and index.device.type != "meta":
            bad = ~((index >= 0) & (index < n))  # Caffe's CHECK_GE / CHECK_LT on the value (NaN fails both)
            if bool(bad.any()):
                i = int(torch.nonzero(bad)[0])
                raise self.error(f"index {float(index[i]):g} at position {i} of bottom[1] is out of range for a "
                                 f"batch of {n}: indices must satisfy 0 <= index < {n}")
        return x.index_select(0, index.to(device=x.device, dtype=torch.int64))


@register_layer("Filter")
class Filter(Layer):
    """Caffe Filter: keeps the items (along the first axis) whose selector is nonzero.

    Bottoms: K blobs to filter, then the selector, of shape (N,) or (N, 1, ...); every bottom has the
    selector's N items. Top k holds the selected items of bottom k, in order; its first axis is the number
    of selected items, which depends on the data (so finding them reads the selector on the host at every
    forward). A selector value counts as selected when it is nonzero, NaN included (C's truth). The
    gradient goes to the selected items of bottoms 0..K-1 (0 elsewhere); the selector gets none.

    At set-up (`top_shapes`) the tops have the bottoms' own shapes, full batch: what Caffe's first Reshape
    reports before any data is seen. With no item selected the tops are empty, and the gradient is 0
    (Caffe's backward divides by the top's item count there).
    """

    min_bottoms = 2
    min_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        if len(param.top) != len(param.bottom) - 1:
            raise self.error(f"needs one top per filtered bottom (every bottom but the last, the selector): "
                             f"{len(param.bottom)} bottoms need {len(param.bottom) - 1} tops, got {len(param.top)}")
        self._check(self.bottom_shapes)

    def _check(self, shapes: Sequence[Shape]) -> None:
        selector = shapes[-1]
        if len(selector) < 1 or any(d != 1 for d in selector[1:]):
            raise self.error(f"the selector (the last bottom) must have shape (N,) or (N, 1, ...), got "
                             f"{list(selector)}")
        for i, s in enumerate(shapes[:-1]):
            if len(s) < 1 or s[0] != selector[0]:
                raise self.error(f"bottom {i} must have as many items as the selector ({selector[0]}) along its "
                                 f"first axis, got shape {list(s)}")

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shapes = [tuple(s) for s in bottom_shapes]
        self._check(shapes)
        return shapes[:-1]  # Caffe's first Reshape: the full batch, before any selector is read

    def forward(self, *bottoms: torch.Tensor):
        self._check([tuple(b.shape) for b in bottoms])
        selected = torch.nonzero(bottoms[-1].detach().reshape(-1) != 0).reshape(-1)
        tops = tuple(b.index_select(0, selected.to(b.device)) for b in bottoms[:-1])
        return tops[0] if len(tops) == 1 else tops
