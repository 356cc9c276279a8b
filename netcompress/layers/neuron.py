"""Element-wise ("neuron") layers with Caffe's definitions."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, register_layer

__all__ = ["NeuronLayer", "ReLU"]


class NeuronLayer(Layer):
    """One bottom, one top of the same shape (in-place allowed)."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])]


@register_layer("ReLU")
class ReLU(NeuronLayer):
    """max(x, 0) + negative_slope * min(x, 0)."""

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        self.negative_slope = float(param.relu_param.negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.negative_slope == 0.0:
            return F.relu(x)
        return F.leaky_relu(x, self.negative_slope)
