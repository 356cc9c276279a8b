"""Input-type layers that take no bottoms: Input (values fed by the caller)."""
from __future__ import annotations

from typing import Sequence

import torch

from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, register_layer

__all__ = ["Input"]


@register_layer("Input")
class Input(Layer):
    """Net inputs: the caller passes one tensor per top (`net.forward(data=x)`).

    `input_param.shape` holds one shape for every top, or one per top. If a caller passes no
    tensor for a top, a zero tensor of the declared shape is used.
    """

    min_bottoms = max_bottoms = 0
    min_tops = 1
    is_data = True

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        shapes = [tuple(int(d) for d in s.dim) for s in param.input_param.shape]
        ntop = len(param.top)
        if len(shapes) == 1:
            shapes = shapes * ntop
        if len(shapes) != ntop:
            raise self.error(f"input_param.shape must be given once or once per top ({ntop}), "
                             f"got {len(shapes)}")
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
