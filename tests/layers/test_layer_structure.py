"""Split, Concat, Slice, Flatten, Reshape, Crop, Tile, Silence: shapes, values, routing, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from netcompress.errors import NetDefinitionError


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_split(make_layer):
    layer = make_layer('type: "Split" top: "a" top: "b" top: "c"', (2, 3))
    x = rand(2, 3).requires_grad_()
    tops = layer(x)
    assert len(tops) == 3 and all(torch.equal(t, x) for t in tops)
    assert layer.top_shapes([(2, 3)]) == [(2, 3)] * 3
    (tops[0] * 1 + tops[1] * 2 + tops[2] * 3).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((2, 3), 6.0, dtype=torch.float64))  # summed diffs
    with pytest.raises(NetDefinitionError, match="does not allow in-place computation"):
        make_layer('type: "Split" bottom: "x" top: "x" top: "y"', (2, 3))


@pytest.mark.parametrize("fields,axis", [("", 1), ("axis: 0", 0), ("axis: -1", 2), ("concat_dim: 2", 2)])
def test_concat(make_layer, fields, axis):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for i, s in enumerate(shapes):
        s[axis] = i + 1
    layer = make_layer(f'type: "Concat" concat_param {{ {fields} }}', *shapes)
    xs = [rand(*s, seed=i) for i, s in enumerate(shapes)]
    y = layer(*xs)
    torch.testing.assert_close(y, torch.from_numpy(np.concatenate([x.numpy() for x in xs], axis=axis)))
    assert tuple(y.shape) == layer.top_shapes(shapes)[0]
    assert gradcheck(layer, tuple(x.clone().requires_grad_() for x in xs))


def test_concat_single_bottom_and_errors(make_layer):
    x = rand(2, 3)
    assert make_layer('type: "Concat"', (2, 3))(x) is x
    with pytest.raises(NetDefinitionError, match="either axis or concat_dim"):
        make_layer('type: "Concat" concat_param { axis: 1 concat_dim: 1 }', (2, 3), (2, 3))
    with pytest.raises(NetDefinitionError, match=r"same shape except along axis 1: bottom 0 is \[2, 3\], bottom 1 is \[3, 3\]"):
        make_layer('type: "Concat"', (2, 3), (3, 3))
    with pytest.raises(NetDefinitionError, match="same number of axes"):
        make_layer('type: "Concat"', (2, 3), (2, 3, 1))
    with pytest.raises(NetDefinitionError, match="concat_dim 2 is out of range"):
        make_layer('type: "Concat" concat_param { concat_dim: 2 }', (2, 3), (2, 3))


@pytest.mark.parametrize("fields,ntop,sizes", [
    ("slice_point: 1 slice_point: 4", 3, [1, 3, 2]),
    ("", 3, [2, 2, 2]),
    ("axis: -1 slice_point: 2", 2, [2, 4]),
    ("slice_dim: 1 slice_point: 5", 2, [5, 1]),
])
def test_slice(make_layer, fields, ntop, sizes):
    layer = make_layer(f'type: "Slice" slice_param {{ {fields} }}', (2, 6, 6) if "axis: -1" not in fields else (2, 3, 6),
                       tops=ntop)
    shape = (2, 6, 6) if "axis: -1" not in fields else (2, 3, 6)
    x = rand(*shape)
    tops = layer(x)
    axis = layer.axis
    assert [t.shape[axis] for t in tops] == sizes
    assert [tuple(t.shape) for t in tops] == layer.top_shapes([shape])
    torch.testing.assert_close(torch.cat(tops, dim=axis), x)
    assert gradcheck(lambda v: layer(v), (x.clone().requires_grad_(),))


def test_slice_errors(make_layer):
    with pytest.raises(NetDefinitionError, match=r"number of tops \(4\) must evenly divide the size 6"):
        make_layer('type: "Slice"', (2, 6), tops=4)
    with pytest.raises(NetDefinitionError, match="one slice_point fewer than tops"):
        make_layer('type: "Slice" slice_param { slice_point: 2 }', (2, 6), tops=3)
    with pytest.raises(NetDefinitionError, match="increase strictly"):
        make_layer('type: "Slice" slice_param { slice_point: 3 slice_point: 3 }', (2, 6), tops=3)
    with pytest.raises(NetDefinitionError, match="either axis or slice_dim"):
        make_layer('type: "Slice" slice_param { axis: 1 slice_dim: 1 }', (2, 6), tops=2)


@pytest.mark.parametrize("fields,top", [("", (2, 60)), ("axis: 2", (2, 3, 20)), ("axis: 1 end_axis: 2", (2, 12, 5)),
                                        ("axis: 0 end_axis: -2", (24, 5)), ("axis: 3", (2, 3, 4, 5))])
def test_flatten(make_layer, fields, top):
    layer = make_layer(f'type: "Flatten" flatten_param {{ {fields} }}', (2, 3, 4, 5))
    x = rand(2, 3, 4, 5)
    y = layer(x)
    assert tuple(y.shape) == top == layer.top_shapes([(2, 3, 4, 5)])[0]
    torch.testing.assert_close(y.reshape(-1), x.reshape(-1))


def test_flatten_errors(make_layer):
    with pytest.raises(NetDefinitionError, match="end_axis .* must not come before axis"):
        make_layer('type: "Flatten" flatten_param { axis: 2 end_axis: 1 }', (2, 3, 4))
    with pytest.raises(NetDefinitionError, match="does not allow in-place"):
        make_layer('type: "Flatten" bottom: "x" top: "x"', (2, 3, 4))


@pytest.mark.parametrize("fields,top", [
    ("shape { dim: 0 dim: -1 }", (2, 60)),
    ("shape { dim: 0 dim: 2 dim: -1 dim: 5 }", (2, 2, 6, 5)),
    ("shape { dim: -1 }", (120,)),
    ("axis: 1 shape { dim: 6 dim: 10 }", (2, 6, 10)),             # with num_axes -1: replaces all from 1
    ("axis: 1 num_axes: 2 shape { dim: -1 }", (2, 12, 5)),
    ("axis: -1 num_axes: 0 shape { dim: 1 }", (2, 3, 4, 5, 1)),   # insert a trailing axis
    ("axis: 0 num_axes: 0 shape { dim: 1 dim: 1 }", (1, 1, 2, 3, 4, 5)),
    ("axis: 1 num_axes: 2 shape { dim: 0 dim: 2 dim: 2 }", (2, 3, 2, 2, 5)),  # 0 copies bottom axis 1
])
def test_reshape(make_layer, fields, top):
    layer = make_layer(f'type: "Reshape" reshape_param {{ {fields} }}', (2, 3, 4, 5))
    x = rand(2, 3, 4, 5)
    y = layer(x)
    assert tuple(y.shape) == top == layer.top_shapes([(2, 3, 4, 5)])[0]
    torch.testing.assert_close(y.reshape(-1), x.reshape(-1))
    # the shape follows the bottom at run time, as Caffe's Reshape does
    if "dim: 0 dim: -1" in fields:
        assert tuple(layer(rand(3, 3, 4, 5)).shape) == (3, 60)


@pytest.mark.parametrize("fields,msg", [
    ("shape { dim: -1 dim: -1 }", "more than one -1"),
    ("shape { dim: 7 dim: -1 }", r"must be divisible by the product of the specified dimensions \(7\)"),
    ("shape { dim: 7 dim: 3 }", "must match the bottom count"),
    ("axis: 1 shape { dim: 0 dim: 0 dim: 0 dim: 0 }", "has no axis 4 to copy"),
    ("axis: 5 shape { dim: 1 }", "axis 5 is out of range"),
    ("shape { dim: -2 dim: 1 }", "only positive sizes"),
])
def test_reshape_errors(make_layer, fields, msg):
    with pytest.raises(NetDefinitionError, match=r"layer 'layer' \(type Reshape\): .*" + msg):
        make_layer(f'type: "Reshape" reshape_param {{ {fields} }}', (2, 3, 4, 5))


@pytest.mark.parametrize("fields,ref_shape,slices", [
    ("", (2, 3, 2, 3), (slice(None), slice(None), slice(0, 2), slice(0, 3))),
    ("offset: 1", (2, 3, 2, 3), (slice(None), slice(None), slice(1, 3), slice(1, 4))),
    ("axis: 1 offset: 1 offset: 0 offset: 2", (2, 2, 4, 3), (slice(None), slice(1, 3), slice(0, 4), slice(2, 5))),
    ("axis: -1 offset: 2", (9, 9, 9, 2), (slice(None), slice(None), slice(None), slice(2, 4))),
])
def test_crop(make_layer, fields, ref_shape, slices):
    layer = make_layer(f'type: "Crop" crop_param {{ {fields} }}', (2, 3, 4, 5), ref_shape)
    x = rand(2, 3, 4, 5)
    ref = torch.zeros(ref_shape, dtype=torch.float64)
    y = layer(x, ref)
    torch.testing.assert_close(y, x[slices])
    assert tuple(y.shape) == layer.top_shapes([(2, 3, 4, 5), ref_shape])[0]
    xg = x.clone().requires_grad_()
    refg = ref.clone().requires_grad_()
    layer(xg, refg).sum().backward()
    expect = torch.zeros_like(x)
    expect[slices] = 1.0
    torch.testing.assert_close(xg.grad, expect)  # zero outside the crop
    assert refg.grad is None  # the reference only gives the shape


def test_crop_errors(make_layer):
    with pytest.raises(NetDefinitionError, match="out of bounds: size 3 at offset 2 does not fit in 4"):
        make_layer('type: "Crop" crop_param { offset: 2 }', (2, 3, 4, 5), (2, 3, 3, 3))
    with pytest.raises(NetDefinitionError, match=r"offset must be given once or once per axis from axis 2 on \(2\), got 3"):
        make_layer('type: "Crop" crop_param { offset: 1 offset: 1 offset: 1 }', (2, 3, 4, 5), (2, 3, 1, 1))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_tile(make_layer, axis):
    layer = make_layer(f'type: "Tile" tile_param {{ axis: {axis} tiles: 3 }}', (2, 3, 2))
    x = rand(2, 3, 2)
    y = layer(x)
    # Caffe copies the whole block from `axis` on `tiles` times per outer index
    outer = int(np.prod(x.shape[:axis]))
    ref = np.tile(x.numpy().reshape(outer, -1), (1, 3)).reshape(y.shape)
    torch.testing.assert_close(y, torch.from_numpy(ref))
    assert tuple(y.shape) == layer.top_shapes([(2, 3, 2)])[0]
    assert gradcheck(layer, (x.clone().requires_grad_(),))
    with pytest.raises(NetDefinitionError, match="tiles must be specified"):
        make_layer('type: "Tile"', (2, 3))
    with pytest.raises(NetDefinitionError, match="tiles must be positive"):
        make_layer('type: "Tile" tile_param { tiles: 0 }', (2, 3))


def test_silence(make_layer, make_net):
    layer = make_layer('type: "Silence"', (2, 3), (4,), tops=0)
    assert layer(rand(2, 3), rand(4)) == () and layer.top_shapes([(2, 3), (4,)]) == []
    net = make_net('''
        layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }
        layer { name: "quiet" type: "Silence" bottom: "label" }''')
    assert net.output_names == ["y"]  # the silenced blob is no output
    out = net(x=rand(2, 3), label=torch.zeros(2, dtype=torch.float64))
    assert list(out) == ["y"]
