"""Split, Concat, Slice, Flatten, Reshape, Crop, Tile, Silence, BatchReindex, Filter: shapes, values, routing,
errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from netcompress.errors import NetDefinitionError
from netcompress.proto import caffe_pb2 as pb


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


# --- BatchReindex -----------------------------------------------------------------------------------

def batch_reindex_reference(x, perm, top_diff=None):
    """Transcription of Caffe's BatchReindexLayer Forward_cpu / Backward_cpu over flat indices
    (static_cast<int> of each index; the backward adds every top diff onto its source row)."""
    xf = x.reshape(-1).tolist()
    inner = x.numel() // x.shape[0]
    count = len(perm) * inner
    out = [xf[int(perm[i // inner]) * inner + i % inner] for i in range(count)]
    y = torch.tensor(out, dtype=x.dtype).reshape(len(perm), *x.shape[1:])
    if top_diff is None:
        return y
    diff = [0.0] * x.numel()
    td = top_diff.reshape(-1).tolist()
    for i in range(count):
        diff[int(perm[i // inner]) * inner + i % inner] += td[i]
    return y, torch.tensor(diff, dtype=x.dtype).reshape(x.shape)


def test_batch_reindex_caffes_forward(make_layer):
    # Caffe's BatchReindexLayerTest: a 5x4x3x2 blob of 0..119, indices 4 0 4 0 1 2
    layer = make_layer('type: "BatchReindex"', (5, 4, 3, 2), (6,))
    assert layer.top_shapes([(5, 4, 3, 2), (6,)]) == [(6, 4, 3, 2)]
    x = torch.arange(120, dtype=torch.float64).reshape(5, 4, 3, 2)
    perm = torch.tensor([4, 0, 4, 0, 1, 2], dtype=torch.float64)
    y = layer(x, perm)
    assert torch.equal(y, batch_reindex_reference(x, perm.tolist()))
    for n, p in enumerate([4, 0, 4, 0, 1, 2]):
        assert torch.equal(y[n], x[p])


def test_batch_reindex_accumulates_the_gradient_of_repeated_indices(make_layer):
    layer = make_layer('type: "BatchReindex"', (5, 3, 2), (7,))
    perm = [4, 0, 4, 0, 1, 2, 4]
    x = rand(5, 3, 2).requires_grad_()
    top_diff = rand(7, 3, 2, seed=1)
    y = layer(x, torch.tensor(perm, dtype=torch.float64))
    (y * top_diff).sum().backward()
    ref_y, ref_diff = batch_reindex_reference(x.detach(), perm, top_diff)
    assert torch.equal(y.detach(), ref_y)
    torch.testing.assert_close(x.grad, ref_diff)
    torch.testing.assert_close(x.grad[4], top_diff[0] + top_diff[2] + top_diff[6])  # three uses, summed
    assert torch.all(x.grad[3] == 0)                                                # never used
    index = torch.tensor(perm, dtype=torch.float64)
    assert gradcheck(lambda v: layer(v, index), (x.detach().clone().requires_grad_(),))


def test_batch_reindex_reads_indices_as_caffe_does(make_layer):
    layer = make_layer('type: "BatchReindex"', (5, 2), (4,))
    x = rand(5, 2)
    # static_cast<int>: 2.7 -> 2, 4.99 -> 4 (the check is on the value: 4.99 < 5)
    idx = torch.tensor([2.7, 4.99, 0.0, 1.2], dtype=torch.float64)
    assert torch.equal(layer(x, idx), x[[2, 4, 0, 1]])
    assert torch.equal(layer(x, torch.tensor([3, 3, 1, 0])), x[[3, 3, 1, 0]])  # integer indices too
    idx = torch.tensor([1.0, 0.0, 3.0, 2.0], requires_grad=True)
    xg = x.clone().requires_grad_()
    layer(xg, idx).sum().backward()
    assert idx.grad is None and torch.equal(xg.grad, torch.tensor([[1.0, 1]] * 4 + [[0, 0]], dtype=torch.float64))
    empty = make_layer('type: "BatchReindex"', (5, 2), (0,))
    assert empty.top_shapes([(5, 2), (0,)]) == [(0, 2)]
    assert tuple(empty(x, torch.zeros(0)).shape) == (0, 2)


@pytest.mark.parametrize("bad,shown", [(5.0, "5"), (-1.0, "-1"), (-0.5, "-0.5"), (float("nan"), "nan")])
def test_batch_reindex_refuses_an_index_out_of_range(make_layer, bad, shown):
    layer = make_layer('type: "BatchReindex"', (5, 2), (3,))
    with pytest.raises(NetDefinitionError, match=rf"layer 'layer' \(type BatchReindex\): index {shown} at position 1 "
                                                 r"of bottom\[1\] is out of range for a batch of 5: indices must "
                                                 r"satisfy 0 <= index < 5"):
        layer(rand(5, 2), torch.tensor([0.0, bad, 1.0], dtype=torch.float64))


def test_batch_reindex_shape_errors(make_layer):
    with pytest.raises(NetDefinitionError,
                       match=r"\(type BatchReindex\): bottom\[1\] \(the indices\) must be 1-D, got shape \[3, 1\]"):
        make_layer('type: "BatchReindex"', (5, 2), (3, 1))
    with pytest.raises(NetDefinitionError, match=r"\(type BatchReindex\): bottom\[0\] needs a first"):
        make_layer('type: "BatchReindex"', (), (3,))


def test_batch_reindex_net_sets_up_and_runs_forward_and_backward(make_net):
    net = make_net("""
    layer { name: "in" type: "Input" top: "data" top: "idx" top: "target"
            input_param { shape { dim: 5 dim: 3 } shape { dim: 4 } shape { dim: 4 dim: 2 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
    layer { name: "reindex" type: "BatchReindex" bottom: "ip" bottom: "idx" top: "picked" }
    layer { name: "loss" type: "EuclideanLoss" bottom: "picked" bottom: "target" top: "loss" }
    """, phase=pb.TRAIN, seed=1)
    assert net.blob_shapes["picked"] == (4, 2)
    x, target = rand(5, 3), rand(4, 2, seed=1)
    idx = torch.tensor([4.0, 4.0, 0.0, 2.0], dtype=torch.float64)
    net(data=x, idx=idx, target=target)
    assert torch.equal(net.blobs["picked"], net.blobs["ip"][[4, 4, 0, 2]])
    net.loss.backward()
    diff = (net.blobs["picked"] - target).detach() / 4          # EuclideanLoss: (a - b) / N
    torch.testing.assert_close(net.layer("ip").weight.grad, diff.t() @ x[[4, 4, 0, 2]])


# --- Filter ---------------------------------------------------------------------------------------

def filter_reference(bottoms, selector, top_diffs=None):
    """Transcription of Caffe's FilterLayer: indices_to_forward_ are the items with a nonzero selector,
    each top copies them in order; the backward walks the bottom's items, copying the next forwarded
    item's top diff and zeroing the others. (Caffe takes the item size from the top there, which divides
    by zero when nothing is selected; the bottom's item size is the same otherwise.)"""
    sel = selector.reshape(-1).tolist()
    indices = [i for i, v in enumerate(sel) if v]
    tops = [torch.stack([b[i] for i in indices]) if indices else b[:0].clone() for b in bottoms]
    if top_diffs is None:
        return tops
    diffs = []
    for b, td in zip(bottoms, top_diffs):
        d = torch.empty_like(b)
        nxt = 0
        for n in range(b.shape[0]):
            if nxt >= len(indices) or n != indices[nxt]:
                d[n] = 0
            else:
                d[n] = td[nxt]
                nxt += 1
        diffs.append(d)
    return tops, diffs


def make_filter(make_layer, *shapes):
    return make_layer('type: "Filter"', *shapes, tops=len(shapes) - 1)


def test_filter_caffes_reshape_and_forward(make_layer):
    # Caffe's FilterLayerTest: data 4x3x6x4, labels 4x1x1x1, selector 0 1 1 0
    shapes = [(4, 3, 6, 4), (4, 1, 1, 1), (4, 1, 1, 1)]
    layer = make_filter(make_layer, *shapes)
    assert layer.top_shapes(shapes) == shapes[:2]  # set-up: the bottoms' shapes (Caffe's first Reshape)
    data, labels = rand(*shapes[0]), torch.tensor([3.0, 1, 4, 0], dtype=torch.float64).reshape(4, 1, 1, 1)
    sel = torch.tensor([0.0, 1, 1, 0], dtype=torch.float64).reshape(4, 1, 1, 1)
    top_data, top_labels = layer(data, labels, sel)
    assert tuple(top_data.shape) == (2, 3, 6, 4) and tuple(top_labels.shape) == (2, 1, 1, 1)
    assert top_labels.reshape(-1).tolist() == [1.0, 4.0]
    assert torch.equal(top_data[0], data[1]) and torch.equal(top_data[1], data[2])


@pytest.mark.parametrize("selector", [[0, 0, 0, 0, 0], [0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, -2.5, 0, 0],
                                      [float("nan"), 0, 0, 0, 0.5]])
def test_filter_forward_and_backward_against_caffe(make_layer, selector):
    layer = make_filter(make_layer, (5, 3, 2), (5,), (5, 1))
    data, labels = rand(5, 3, 2).requires_grad_(), rand(5, seed=1).requires_grad_()
    sel = torch.tensor(selector, dtype=torch.float64).reshape(5, 1).requires_grad_()
    tops = layer(data, labels, sel)
    kept = sum(1 for v in selector if v != 0)  # NaN is nonzero: selected (C's truth)
    assert [t.shape[0] for t in tops] == [kept, kept]
    top_diffs = [rand(*tops[0].shape, seed=2), rand(*tops[1].shape, seed=3)]
    ref_tops, ref_diffs = filter_reference([data.detach(), labels.detach()], sel.detach(), top_diffs)
    assert all(torch.equal(t.detach(), r) for t, r in zip(tops, ref_tops))
    sum((t * d).sum() for t, d in zip(tops, top_diffs)).backward()
    assert torch.equal(data.grad, ref_diffs[0]) and torch.equal(labels.grad, ref_diffs[1])
    assert sel.grad is None  # the selector gets no gradient
    if kept:
        fixed = (labels.detach(), sel.detach())
        assert gradcheck(lambda d: layer(d, *fixed)[0], (data.detach().clone().requires_grad_(),))


def test_filter_one_filtered_bottom(make_layer):
    layer = make_filter(make_layer, (3, 2), (3,))
    x = rand(3, 2)
    y = layer(x, torch.tensor([1.0, 0, 1], dtype=torch.float64))
    assert isinstance(y, torch.Tensor) and torch.equal(y, x[[0, 2]])


def test_filter_errors(make_layer):
    with pytest.raises(NetDefinitionError, match=r"\(type Filter\): needs one top per filtered bottom .*3 bottoms "
                                                 r"need 2 tops, got 1"):
        make_layer('type: "Filter"', (4, 2), (4, 1), (4,))
    with pytest.raises(NetDefinitionError, match=r"\(type Filter\): the selector \(the last bottom\) must have shape "
                                                 r"\(N,\) or \(N, 1, ...\), got \[4, 2\]"):
        make_filter(make_layer, (4, 3), (4, 2))
    with pytest.raises(NetDefinitionError, match=r"\(type Filter\): bottom 1 must have as many items as the selector "
                                                 r"\(4\) along its first axis, got shape \[3, 1\]"):
        make_filter(make_layer, (4, 3), (3, 1), (4,))
    layer = make_filter(make_layer, (4, 3), (4,))
    with pytest.raises(NetDefinitionError, match=r"\(type Filter\): bottom 0 must have as many items"):
        layer(rand(5, 3), torch.ones(4, dtype=torch.float64))


def test_filter_net_runs_with_varying_selections(make_net):
    net = make_net("""
    layer { name: "in" type: "Input" top: "data" top: "sel" input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 1 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
    layer { name: "filter" type: "Filter" bottom: "ip" bottom: "data" bottom: "sel" top: "ip_kept" top: "data_kept" }
    layer { name: "ip2" type: "InnerProduct" bottom: "ip_kept" top: "out" loss_weight: 1
            inner_product_param { num_output: 1 bias_term: false weight_filler { type: "constant" value: 1 } } }
    """, phase=pb.TRAIN, seed=1)
    # set-up reports the full batch (Caffe's first Reshape); the layers after it set up for it
    assert net.blob_shapes["ip_kept"] == (4, 2) and net.blob_shapes["data_kept"] == (4, 3)
    x = rand(4, 3)
    ip = net.layer("ip")
    for selector in ([0, 0, 0, 0], [1, 0, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1]):
        net.zero_grad()
        sel = torch.tensor(selector, dtype=torch.float64).reshape(4, 1)
        net(data=x, sel=sel)
        keep = [i for i, v in enumerate(selector) if v]
        assert tuple(net.blobs["out"].shape) == (len(keep), 1)
        assert torch.equal(net.blobs["data_kept"], x[keep])
        net.loss.backward()
        # loss = sum over kept items of (W x + b) . 1: d/dW = column sums of the kept inputs, d/db = count
        torch.testing.assert_close(ip.weight.grad, x[keep].sum(0).expand(2, 3))
        torch.testing.assert_close(ip.bias.grad, torch.full((2,), float(len(keep)), dtype=torch.float64))
