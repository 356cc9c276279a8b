"""Layers that take no bottoms: Input (values fed by the caller), DummyData (filler values) and
Parameter (a learned blob as a top)."""
from __future__ import annotations

from typing import Sequence

import torch

from ..fillers import check_filler, fill
from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, register_layer

__all__ = ["Input", "DummyData", "Parameter"]


@register_layer("Input")
class Input(Layer):
    """Net inputs: the caller passes one tensor per top (`net.forward(data=x)`).

    `input_param.shape` holds one shape for every top, or one per top. If a caller passes no
    tensor for a top, a zero tensor of the declared shape is used.
    """

    min_bottoms = max_bottoms = 0
    min_tops = 1
    is_data = True
    is_input = True

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        shapes = [tuple(int(d) for d in s.dim) for s in param.input_param.shape]
        ntop = len(param.top)
        if len(shapes) == 1:
            shapes = shapes * ntop
        if len(shapes) != ntop:
            raise self.error(f"input_param.shape must be given once or once per top ({ntop}), "
                             f"got {len(shapes)}")
        for t, shape in zip(param.top, shapes):
            self.check_shape(shape, f"input_param.shape of top '{t}'")
        self.shapes: list[Shape] = shapes

    def forward(self, *inputs: torch.Tensor):
        tops = []
        for i, shape in enumerate(self.shapes):
            x = inputs[i] if i < len(inputs) and inputs[i] is not None else None
            if x is None:
                x = torch.zeros(shape, dtype=self.ctx.dtype, device=self.ctx.device)
            tops.append(x)
        return tops[0] if len(tops) == 1 else tuple(tops)

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return list(self.shapes)


@register_layer("DummyData")
class DummyData(Layer):
    """Tops filled by fillers: `shape` (once or once per top) or the legacy 4-D num/channels/
    height/width (each once or once per top); `data_filler` none (constant 0), once (shared by
    every top, drawn top after top) or once per top.

    As in Caffe, tops with a constant filler are filled once at set-up and returned unchanged;
    the others are refilled at every forward, from this layer's own generator (see
    `Layer._init_rng`; `rng_state()` / `set_rng_state()` save and restore it).
    """

    min_bottoms = max_bottoms = 0
    min_tops = 1
    is_data = True

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        dp = param.dummy_data_param
        ntop = len(param.top)
        nf = len(dp.data_filler)
        if nf not in (0, 1, ntop):
            raise self.error(f"dummy_data_param.data_filler must be given 0 times, once or once per "
                             f"top ({ntop}), got {nf}")
        legacy = any(len(getattr(dp, f)) for f in ("num", "channels", "height", "width"))
        shapes: list[Shape] = []
        if legacy:
            if len(dp.shape):
                raise self.error("dummy_data_param: both shape and the legacy num/channels/height/width "
                                 "were specified")
            for f in ("num", "channels", "height", "width"):
                n = len(getattr(dp, f))
                if n not in (1, ntop):
                    raise self.error(f"dummy_data_param.{f} must be given once or once per top "
                                     f"({ntop}), got {n}")
            for i in range(ntop):
                shapes.append(tuple(int(getattr(dp, f)[0 if len(getattr(dp, f)) == 1 else i])
                                    for f in ("num", "channels", "height", "width")))
        else:
            if len(dp.shape) not in (1, ntop):
                raise self.error(f"dummy_data_param.shape must be given once or once per top "
                                 f"({ntop}), got {len(dp.shape)}")
            for i in range(ntop):
                shapes.append(tuple(int(d) for d in dp.shape[0 if len(dp.shape) == 1 else i].dim))
        for t, shape in zip(param.top, shapes):
            self.check_shape(shape, f"the shape of top '{t}'")
        self.shapes = shapes
        if nf == 0:
            default = pb.FillerParameter()
            default.type, default.value = "constant", 0.0
            self.fillers = [default]
        else:
            self.fillers = [f for f in dp.data_filler]
        for f in self.fillers:  # refilled at every forward: check them now
            check_filler(f, f"layer '{self.name}': ")
        self._gen = self._init_rng("cpu")  # fillers draw on the CPU (netcompress.fillers)
        self._where = f"layer '{self.name}': "
        # Constant tops are filled once here, the others at every forward (Caffe's refill_).
        self._constant: list[torch.Tensor | None] = []
        for i, shape in enumerate(shapes):
            f = self._filler(i)
            self._constant.append(self._fill(shape, f) if f.type == "constant" else None)

    def _filler(self, i: int) -> pb.FillerParameter:
        return self.fillers[0] if len(self.fillers) == 1 else self.fillers[i]

    def _fill(self, shape: Shape, f: pb.FillerParameter) -> torch.Tensor:
        t = fill(torch.empty(shape, dtype=self.ctx.dtype), f, self._gen, self._where)
        return t.to(self.ctx.device)

    def forward(self):
        tops = [c if c is not None else self._fill(s, self._filler(i))
                for i, (s, c) in enumerate(zip(self.shapes, self._constant))]
        return tops[0] if len(tops) == 1 else tuple(tops)

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return list(self.shapes)


@register_layer("Parameter")
class Parameter(Layer):
    """Exposes one learned blob of `parameter_param.shape` as its top (zeros until trained or
    loaded, as Caffe allocates it); the top's gradient flows into the blob."""

    min_bottoms = max_bottoms = 0
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        shape = tuple(int(d) for d in param.parameter_param.shape.dim)
        self.add_blob("weight", self.new_empty(*shape, what="parameter_param.shape").zero_())

    def forward(self) -> torch.Tensor:
        return self.weight

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(self.weight.shape)]
