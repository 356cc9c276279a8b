"""to_channels_last / to_contiguous: ATen's `contiguous(memory_format=...)` values, always in a new tensor."""
from __future__ import annotations

import math

import pytest
import torch

from netcompress import ops
from netcompress.ops import reference as ref

from op_helpers import noncontiguous

CL = torch.channels_last
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]
# LeNet's conv2 edges; channel and plane sizes on and off the 8x8 tiles; a single channel or position (both orders
# at once); one sample; one sample of several 64-row blocks each way (split over the threads); an empty batch
SHAPES = [(64, 20, 12, 12), (64, 50, 8, 8), (3, 5, 7, 9), (2, 16, 8, 8), (2, 9, 3, 17), (1, 33, 5, 5),
          (1, 130, 40, 41), (2, 1, 4, 4), (2, 8, 1, 1), (0, 4, 3, 3)]


def _values(shape, dtype, gen):
    x = torch.randn(shape, generator=gen) * 100
    if dtype.is_floating_point and x.numel():
        flat = x.view(-1)
        flat[::7] = -0.0
        flat[::11] = math.nan
        flat[::13] = -math.inf
    return x.to(dtype)


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and the same bytes, element by element (NaN payloads and -0.0 included)."""
    if a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(view), b.contiguous().view(view))
    return torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("threads", [1, 2])
def test_layout_copies_are_atens(shape, dtype, threads, gen):
    x = _values(shape, dtype, gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = ops.to_channels_last(x)
        assert y.is_contiguous(memory_format=CL) and y.dtype == dtype
        assert _bits_equal(y, ref.to_channels_last(x))
        z = ops.to_contiguous(y)
        assert z.is_contiguous() and _bits_equal(z, ref.to_contiguous(y)) and _bits_equal(z, x)
    finally:
        torch.set_num_threads(before)
    if x.numel():  # a new tensor each time, never an alias of the input (the schema declares none)
        assert y.data_ptr() != x.data_ptr() and z.data_ptr() != y.data_ptr()
        assert ops.to_contiguous(x).data_ptr() != x.data_ptr()
        assert ops.to_channels_last(y).data_ptr() != y.data_ptr()


@pytest.mark.parametrize("layout", ["noncontiguous", "transposed", "channels_last", "contiguous"])
def test_layout_copies_take_any_strides(layout, gen):
    """Inputs in neither order, or already in the asked one, go through ATen's copy: the same values."""
    x = torch.randn(3, 10, 6, 5, generator=gen)
    src = {"noncontiguous": noncontiguous(x), "transposed": x.transpose(2, 3).contiguous().transpose(2, 3),
           "channels_last": x.contiguous(memory_format=CL), "contiguous": x}[layout]
    assert torch.equal(src, x)
    a, b = ops.to_channels_last(src), ops.to_contiguous(src)
    assert a.is_contiguous(memory_format=CL) and torch.equal(a, x)
    assert b.is_contiguous() and torch.equal(b, x)


def test_layout_copies_other_ranks_and_errors(gen):
    x = torch.randn(4, 5, 6, generator=gen)
    assert torch.equal(ops.to_contiguous(x.transpose(0, 2)), x.transpose(0, 2).contiguous())
    with pytest.raises(RuntimeError, match="channels_last"):  # ATen's message: channels-last needs 4-D
        ops.to_channels_last(x)


def test_layout_opcheck(gen):
    x = torch.randn(2, 12, 5, 7, generator=gen)
    torch.library.opcheck(torch.ops.netcompress.to_channels_last.default, (x,))
    torch.library.opcheck(torch.ops.netcompress.to_contiguous.default, (x.contiguous(memory_format=CL),))


@pytest.mark.cuda
def test_layout_copies_cuda(gen):
    x = torch.randn(4, 20, 12, 12, generator=gen)
    y = ops.to_channels_last(x.cuda())
    assert y.is_cuda and y.is_contiguous(memory_format=CL) and torch.equal(y.cpu(), x)
    z = ops.to_contiguous(y)
    assert z.is_contiguous() and torch.equal(z.cpu(), x)
