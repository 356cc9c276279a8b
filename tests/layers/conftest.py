"""Fixtures for the layer tests: a layer from a prototxt snippet, a Net from a prototxt string.

`make_layer(snippet, *bottom_shapes, phase=..., dtype=..., seed=...)` parses `snippet` as a
LayerParameter (text format), names it "layer" and adds bottoms b0..bN-1 and one top "t0" when
the snippet lists none, then calls `create_layer` as the Net does (float64 by default, so that
gradcheck can run on the result).
"""
from __future__ import annotations

import pytest
import torch
from google.protobuf import text_format

from netcompress.rng import CaffeRNG
from netcompress.layers import LayerContext, create_layer
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb


def _make_layer(snippet: str, *bottom_shapes, phase: int = pb.TEST, dtype: torch.dtype = torch.float64,
                seed: int | None = None, rank: int = 0, tops: int | None = None):
    p = text_format.Parse(snippet, pb.LayerParameter())
    if not p.name:
        p.name = "layer"
    if not len(p.bottom):
        p.bottom.extend(f"b{i}" for i in range(len(bottom_shapes)))
    if not len(p.top) and tops != 0:
        p.top.extend(f"t{i}" for i in range(tops or 1))
    gen = CaffeRNG(seed if seed is not None else 0)
    ctx = LayerContext(phase=phase, dtype=dtype, generator=gen, seed=seed, rank=rank)
    return create_layer(p, [tuple(s) for s in bottom_shapes], ctx)


def _make_net(text: str, phase: int = pb.TEST, **kw) -> Net:
    param = text_format.Parse(text, pb.NetParameter())
    kw.setdefault("verbose", False)
    kw.setdefault("dtype", torch.float64)
    return Net(param, phase=phase, **kw)


@pytest.fixture
def make_layer():
    return _make_layer


@pytest.fixture
def make_net():
    return _make_net
