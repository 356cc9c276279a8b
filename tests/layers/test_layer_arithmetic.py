"""Eltwise, Scale, Bias, Softmax, ArgMax, Reduction, Embed against Caffe's formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from netcompress.errors import NetDefinitionError


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def with_blobs(layer):
    """(fn, blob tensors) so gradcheck can differentiate a layer's blobs too."""
    def fn(*args):
        n = len(layer.blob_names)
        return torch.func.functional_call(layer, dict(zip(layer.blob_names, args[len(args) - n:])),
                                          tuple(args[:len(args) - n]))
    return fn, tuple(b.detach().clone().requires_grad_() for b in layer.blobs())


# --- Eltwise ----------------------------------------------------------------------------------------

S = (2, 3, 4)


def test_eltwise_sum_with_coeffs(make_layer):
    layer = make_layer('type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }', S, S, S)
    a, b, c = rand(*S, seed=1), rand(*S, seed=2), rand(*S, seed=3)
    torch.testing.assert_close(layer(a, b, c), a - 0.5 * b + 2 * c)
    assert gradcheck(layer, tuple(t.clone().requires_grad_() for t in (a, b, c)))
    plain = make_layer('type: "Eltwise"', S, S)  # default SUM with coefficients 1
    torch.testing.assert_close(plain(a, b), a + b)


def test_eltwise_prod(make_layer):
    layer = make_layer('type: "Eltwise" eltwise_param { operation: PROD }', S, S, S)
    a, b, c = rand(*S, seed=1), rand(*S, seed=2), rand(*S, seed=3)
    torch.testing.assert_close(layer(a, b, c), a * b * c)
    assert gradcheck(layer, tuple(t.clone().requires_grad_() for t in (a, b, c)))
    # stable_prod_grad (the default): the product of the others, also where a bottom is 0
    a0 = a.clone()
    a0[0, 0, 0] = 0.0
    xs = [t.clone().requires_grad_() for t in (a0, b, c)]
    layer(*xs).sum().backward()
    torch.testing.assert_close(xs[0].grad, b * c)
    torch.testing.assert_close(xs[1].grad, a0 * c)


def test_eltwise_max_routes_gradient_like_caffe(make_layer):
    layer = make_layer('type: "Eltwise" eltwise_param { operation: MAX }', (6,), (6,), (6,))
    a = torch.tensor([3.0, 1.0, 2.0, 5.0, 0.0, 1.0], dtype=torch.float64)
    b = torch.tensor([1.0, 4.0, 2.0, 5.0, 0.0, 0.0], dtype=torch.float64)
    c = torch.tensor([2.0, 0.0, 1.0, 5.0, 7.0, 1.0], dtype=torch.float64)
    xs = [t.clone().requires_grad_() for t in (a, b, c)]
    y = layer(*xs)
    torch.testing.assert_close(y, torch.maximum(torch.maximum(a, b), c))
    y.sum().backward()
    # Caffe's GPU kernel (the project's reference): a > b keeps a, else b; then top > c keeps
    # top, else c -- a later bottom wins every tie. Exactly one bottom gets each element's diff.
    winner = [0, 1, 1, 2, 2, 2]
    for i, t in enumerate(xs):
        expect = torch.tensor([1.0 if w == i else 0.0 for w in winner], dtype=torch.float64)
        torch.testing.assert_close(t.grad, expect)
    x3 = [rand(*S, seed=s).requires_grad_() for s in (4, 5, 6)]
    assert gradcheck(layer, tuple(x3))


@pytest.mark.parametrize("fields,nb,msg", [
    ("operation: SUM coeff: 1", 2, r"coeff must be given once per bottom \(2\) or not at all, got 1"),
    ("operation: PROD coeff: 1 coeff: 2", 2, "only allowed with operation SUM"),
])
def test_eltwise_param_errors(make_layer, fields, nb, msg):
    with pytest.raises(NetDefinitionError, match=msg):
        make_layer(f'type: "Eltwise" eltwise_param {{ {fields} }}', *([S] * nb))


def test_eltwise_shape_errors(make_layer, make_net):
    with pytest.raises(NetDefinitionError, match=r"bottom 0 is \[2, 3, 4\], bottom 1 is \[2, 3, 5\]"):
        make_layer('type: "Eltwise"', S, (2, 3, 5))
    with pytest.raises(NetDefinitionError, match=r"takes at least 2 bottom"):
        make_net('''layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
                    layer { name: "e" type: "Eltwise" bottom: "x" top: "y" }''')


# --- Scale / Bias -----------------------------------------------------------------------------------

X = (2, 3, 4, 5)


@pytest.mark.parametrize("fields,pshape,view", [
    ("", (3,), (1, 3, 1, 1)),                        # axis 1, num_axes 1: per channel
    ("axis: 1 num_axes: 2", (3, 4), (1, 3, 4, 1)),
    ("axis: -2 num_axes: -1", (4, 5), (1, 1, 4, 5)),  # to the end
    ("axis: 0 num_axes: -1", X, X),                   # element-wise
    ("num_axes: 0", (), ()),                          # one scalar
])
def test_scale_blob_geometry(make_layer, fields, pshape, view):
    layer = make_layer(f'type: "Scale" scale_param {{ {fields} filler {{ type: "gaussian" }} bias_term: true '
                       'bias_filler { type: "gaussian" } }', X)
    assert layer.blob_names == ["weight", "bias"]
    assert tuple(layer.weight.shape) == pshape and tuple(layer.bias.shape) == pshape
    x = rand(*X)
    s, b = layer.weight.detach(), layer.bias.detach()
    torch.testing.assert_close(layer(x), x * s.reshape(view) + b.reshape(view))
    fn, blobs = with_blobs(layer)
    assert gradcheck(fn, (x.clone().requires_grad_(), *blobs))


def test_scale_and_bias_default_fillers(make_layer):
    layer = make_layer('type: "Scale"', X)
    assert layer.blob_names == ["weight"] and torch.all(layer.weight == 1)
    with_bias = make_layer('type: "Scale" scale_param { bias_term: true }', X)
    assert torch.all(with_bias.bias == 0)
    bias = make_layer('type: "Bias"', X)
    assert bias.blob_names == ["bias"] and tuple(bias.bias.shape) == (3,) and torch.all(bias.bias == 0)
    assert all(layer.blob_is_learnable(i) for i in range(len(layer.blob_names)))


def test_scale_second_bottom(make_layer):
    layer = make_layer('type: "Scale" scale_param { axis: 1 bias_term: true bias_filler { type: "gaussian" } }',
                       X, (3, 4))
    assert layer.blob_names == ["bias"] and tuple(layer.bias.shape) == (3, 4)
    x, s = rand(*X), rand(3, 4, seed=1)
    torch.testing.assert_close(layer(x, s), x * s.reshape(1, 3, 4, 1) + layer.bias.detach().reshape(1, 3, 4, 1))
    fn, blobs = with_blobs(layer)
    assert gradcheck(fn, (x.clone().requires_grad_(), s.clone().requires_grad_(), *blobs))
    scalar = make_layer('type: "Scale"', X, ())
    torch.testing.assert_close(scalar(x, torch.tensor(3.0, dtype=torch.float64)), 3 * x)
    with pytest.raises(NetDefinitionError, match=r"bottom\[1\] \(the scale\) shape \[4\] does not match"):
        make_layer('type: "Scale"', X, (4,))


def test_bias_layer(make_layer):
    layer = make_layer('type: "Bias" bias_param { axis: 2 num_axes: 2 filler { type: "gaussian" } }', X)
    assert tuple(layer.bias.shape) == (4, 5)
    x = rand(*X)
    torch.testing.assert_close(layer(x), x + layer.bias.detach())
    fn, blobs = with_blobs(layer)
    assert gradcheck(fn, (x.clone().requires_grad_(), *blobs))
    two = make_layer('type: "Bias"', X, (3, 4))
    b = rand(3, 4, seed=2)
    torch.testing.assert_close(two(x, b), x + b.reshape(1, 3, 4, 1))
    assert gradcheck(two, (x.clone().requires_grad_(), b.clone().requires_grad_()))


@pytest.mark.parametrize("fields,msg", [
    ("num_axes: -2", "num_axes must be non-negative, or -1"),
    ("axis: 2 num_axes: 3", "extends past bottom"),
    ("axis: 4", r"axis 4 is out of range for a 4-D bottom"),
])
def test_scale_bias_errors(make_layer, fields, msg):
    with pytest.raises(NetDefinitionError, match=msg):
        make_layer(f'type: "Scale" scale_param {{ {fields} }}', X)
    with pytest.raises(NetDefinitionError, match=msg):
        make_layer(f'type: "Bias" bias_param {{ {fields} }}', X)


# --- Softmax ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [1, 0, -1, 2])
def test_softmax(make_layer, axis):
    layer = make_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}', (2, 3, 4))
    x = rand(2, 3, 4) * 5
    xn = x.numpy()
    e = np.exp(xn - xn.max(axis=axis, keepdims=True))
    torch.testing.assert_close(layer(x), torch.from_numpy(e / e.sum(axis=axis, keepdims=True)))
    assert gradcheck(layer, (x.clone().requires_grad_(),))
    with pytest.raises(NetDefinitionError, match="softmax_param.axis 3 is out of range"):
        make_layer('type: "Softmax" softmax_param { axis: 3 }', (2, 3, 4))


# --- ArgMax -----------------------------------------------------------------------------------------

def caffe_argmax_rows(rows: np.ndarray, k: int):
    """std::partial_sort with std::greater on (value, index) pairs, row by row."""
    out = []
    for r in rows:
        pairs = sorted(((v, j) for j, v in enumerate(r)), reverse=True)[:k]
        out.append(pairs)
    return out


@pytest.mark.parametrize("out_max_val", [False, True])
@pytest.mark.parametrize("shape", [(3, 2, 2, 3), (4, 5)])
def test_argmax_without_axis(make_layer, out_max_val, shape):
    k = 3
    layer = make_layer(f'type: "ArgMax" argmax_param {{ top_k: {k} out_max_val: {str(out_max_val).lower()} }}', shape)
    x = torch.round(rand(*shape) * 2) / 2  # many ties
    y = layer(x)
    nd = max(len(shape), 3)
    expect_shape = [1] * nd
    expect_shape[0], expect_shape[1], expect_shape[2] = shape[0], 2 if out_max_val else 1, k
    assert tuple(y.shape) == tuple(expect_shape) == layer.top_shapes([shape])[0]
    rows = caffe_argmax_rows(x.reshape(shape[0], -1).numpy(), k)
    y2 = y.reshape(shape[0], -1).numpy()
    for i, pairs in enumerate(rows):
        np.testing.assert_array_equal(y2[i, :k], [j for _, j in pairs])
        if out_max_val:
            np.testing.assert_array_equal(y2[i, k:], [v for v, _ in pairs])


@pytest.mark.parametrize("out_max_val", [False, True])
def test_argmax_with_axis(make_layer, out_max_val):
    layer = make_layer(f'type: "ArgMax" argmax_param {{ axis: 1 top_k: 2 out_max_val: {str(out_max_val).lower()} }}',
                       (2, 4, 3))
    x = torch.round(rand(2, 4, 3) * 2) / 2
    y = layer(x)
    assert tuple(y.shape) == (2, 2, 3) == layer.top_shapes([(2, 4, 3)])[0]
    for n in range(2):
        for w in range(3):
            pairs = caffe_argmax_rows(x[n, :, w].numpy()[None], 2)[0]
            want = [v for v, _ in pairs] if out_max_val else [j for _, j in pairs]
            np.testing.assert_array_equal(y[n, :, w].numpy(), want)
    assert not layer(x.requires_grad_()).requires_grad


def test_argmax_errors(make_layer):
    with pytest.raises(NetDefinitionError, match=r"top_k \(5\) must be at most the size of axis 1 \(4\)"):
        make_layer('type: "ArgMax" argmax_param { axis: 1 top_k: 5 }', (2, 4))
    with pytest.raises(NetDefinitionError, match=r"top_k \(9\) must be at most the number of entries per sample \(8\)"):
        make_layer('type: "ArgMax" argmax_param { top_k: 9 }', (2, 4, 2))


# --- Reduction --------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_reduction(make_layer, op, axis):
    layer = make_layer(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: -1.5 }}', (2, 3, 4))
    x = rand(2, 3, 4)
    a = axis % 3
    lead = (2, 3, 4)[:a]
    x2 = x.reshape(int(np.prod(lead)), -1)
    ref = {"SUM": x2.sum(1), "ASUM": x2.abs().sum(1), "SUMSQ": (x2 * x2).sum(1), "MEAN": x2.mean(1)}[op] * -1.5
    y = layer(x)
    assert tuple(y.shape) == lead == layer.top_shapes([(2, 3, 4)])[0]
    torch.testing.assert_close(y, ref.reshape(lead))
    assert gradcheck(layer, (x.clone().requires_grad_(),))


def test_reduction_defaults(make_layer):
    layer = make_layer('type: "Reduction"', (2, 3))
    x = rand(2, 3)
    y = layer(x)
    assert y.shape == () and torch.allclose(y, x.sum())


# --- Embed ------------------------------------------------------------------------------------------

def test_embed(make_layer):
    layer = make_layer('type: "Embed" embed_param { num_output: 4 input_dim: 5 weight_filler { type: "gaussian" } '
                       'bias_filler { type: "gaussian" } }', (2, 3))
    assert [tuple(b.shape) for b in layer.blobs()] == [(5, 4), (4,)]
    idx = torch.tensor([[0.0, 4.0, 2.0], [2.0, 2.0, 1.0]], dtype=torch.float64)
    y = layer(idx)
    assert tuple(y.shape) == (2, 3, 4) == layer.top_shapes([(2, 3)])[0]
    w, b = layer.weight.detach(), layer.bias.detach()
    torch.testing.assert_close(y, w[idx.long()] + b)
    y.sum().backward()
    # repeated indices accumulate into the weight rows
    counts = torch.tensor([1.0, 1.0, 3.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(layer.weight.grad, counts[:, None].expand(5, 4))
    torch.testing.assert_close(layer.bias.grad, torch.full((4,), 6.0, dtype=torch.float64))
    with pytest.raises(NetDefinitionError, match=r"indices must lie in \[0, 5\)"):
        layer(torch.tensor([5.0], dtype=torch.float64))
    with pytest.raises(NetDefinitionError, match="input_dim must be positive"):
        make_layer('type: "Embed" embed_param { num_output: 4 }', (2,))
