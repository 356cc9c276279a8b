"""RNN, LSTM and LSTMUnit: against step-by-step float64 transcriptions of Caffe's unrolled nets
(rnn_layer.cpp, lstm_layer.cpp, lstm_unit_layer.cpp), against torch.nn.LSTM, gradcheck, Caffe's blob layout and
fill order, caffemodel round trips, the state carried across forwards, bad input, and a small net that learns."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from torch.autograd import gradcheck

from netcompress import io as ncio
from netcompress.errors import NetDefinitionError
from netcompress.fillers import fill
from netcompress.layers import known_layer_types, layer_class
from netcompress.layers.recurrent import caffe_sigmoid, caffe_tanh
from netcompress.proto import caffe_pb2 as pb
from netcompress.rng import CaffeRNG

FILLERS = ('weight_filler { type: "uniform" min: -0.6 max: 0.6 } '
           'bias_filler { type: "uniform" min: -0.3 max: 0.3 }')


def npy(t):
    return t.detach().numpy()


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def recurrent(make_layer, kind, H, x_shape, *, static=None, expose=False, seed=1, extra=""):
    """An RNN or LSTM layer for x of `x_shape` (T, N, ...), with a static input of shape `static`."""
    T, N = x_shape[:2]
    shapes = [x_shape, (T, N)] + ([static] if static else [])
    nstates = 2 if kind == "LSTM" else 1
    if expose:
        shapes += [(1, N, H)] * nstates
    snippet = (f'type: "{kind}" recurrent_param {{ num_output: {H} {FILLERS} '
               f'expose_hidden: {str(expose).lower()} }} {extra}')
    return make_layer(snippet, *shapes, seed=seed, tops=1 + (nstates if expose else 0))


# --- Caffe's formulas, transcribed one stream and one unit at a time ----------------------------

def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def tanh_caffe(v: float) -> float:
    return 2.0 * sig(2.0 * v) - 1.0


def unit_reference(c_prev, gates, cont):
    """lstm_unit_layer.cpp's Forward_cpu: c_prev (N, H), gates (N, 4H), cont (N,) as numpy float64."""
    N, H = c_prev.shape
    c, h = np.zeros((N, H)), np.zeros((N, H))
    for n in range(N):
        for d in range(H):
            i = sig(gates[n, d])
            f = 0.0 if cont[n] == 0 else cont[n] * sig(gates[n, H + d])
            o = sig(gates[n, 2 * H + d])
            g = tanh_caffe(gates[n, 3 * H + d])
            c[n, d] = f * c_prev[n, d] + i * g
            h[n, d] = o * tanh_caffe(c[n, d])
    return c, h


def unit_backward_reference(c_prev, gates, cont, dc, dh):
    """lstm_unit_layer.cpp's Backward_cpu: (d c_prev, d gates)."""
    N, H = c_prev.shape
    c, _ = unit_reference(c_prev, gates, cont)
    dcp, dg = np.zeros((N, H)), np.zeros((N, 4 * H))
    for n in range(N):
        for d in range(H):
            i = sig(gates[n, d])
            f = 0.0 if cont[n] == 0 else cont[n] * sig(gates[n, H + d])
            o = sig(gates[n, 2 * H + d])
            g = tanh_caffe(gates[n, 3 * H + d])
            tc = tanh_caffe(c[n, d])
            term = dc[n, d] + dh[n, d] * o * (1 - tc * tc)
            dcp[n, d] = term * f
            dg[n, d] = term * g * i * (1 - i)
            dg[n, H + d] = term * c_prev[n, d] * f * (1 - f)
            dg[n, 2 * H + d] = dh[n, d] * tc * o * (1 - o)
            dg[n, 3 * H + d] = term * i * (1 - g * g)
    return dcp, dg


def lstm_reference(x, cont, W_xc, b_c, W_hc, static=None, W_s=None, h0=None, c0=None):
    """lstm_layer.cpp's unrolled net, timestep by timestep: h_conted = cont_t h_{t-1}; gate_input =
    W_hc h_conted + (W_xc x_t + b_c) [+ W_xc_static x_static]; LSTMUnit. Returns (h (T, N, H), h_T, c_T)."""
    x, cont = x.numpy(), cont.numpy()
    T, N = cont.shape
    H = W_hc.shape[1]
    xf = x.reshape(T, N, -1)
    h = np.zeros((N, H)) if h0 is None else h0.numpy().reshape(N, H)
    c = np.zeros((N, H)) if c0 is None else c0.numpy().reshape(N, H)
    W_xc, b_c, W_hc = npy(W_xc), npy(b_c), npy(W_hc)
    out = np.zeros((T, N, H))
    for t in range(T):
        gates = np.zeros((N, 4 * H))
        for n in range(N):
            gates[n] = W_hc @ (cont[t, n] * h[n]) + (W_xc @ xf[t, n] + b_c)
            if static is not None:
                gates[n] += npy(W_s) @ npy(static)[n].ravel()
        c, h = unit_reference(c, gates, cont[t])
        out[t] = h
    return torch.from_numpy(out), torch.from_numpy(h[None]), torch.from_numpy(c[None])


def rnn_reference(x, cont, W_xh, b_h, W_hh, W_ho, b_o, static=None, W_s=None, h0=None):
    """rnn_layer.cpp's unrolled net: h_t = tanh(W_hh (cont_t h_{t-1}) + (W_xh x_t + b_h) [+ W_xh_static x_static]),
    o_t = tanh(W_ho h_t + b_o). Returns (o (T, N, H), h_T)."""
    x, cont = x.numpy(), cont.numpy()
    T, N = cont.shape
    H = W_hh.shape[0]
    xf = x.reshape(T, N, -1)
    h = np.zeros((N, H)) if h0 is None else h0.numpy().reshape(N, H)
    W_xh, b_h, W_hh, W_ho, b_o = (npy(a) for a in (W_xh, b_h, W_hh, W_ho, b_o))
    out = np.zeros((T, N, H))
    for t in range(T):
        new = np.zeros((N, H))
        for n in range(N):
            pre = W_hh @ (cont[t, n] * h[n]) + (W_xh @ xf[t, n] + b_h)
            if static is not None:
                pre = pre + npy(W_s) @ npy(static)[n].ravel()
            new[n] = np.tanh(pre)
            out[t, n] = np.tanh(W_ho @ new[n] + b_o)
        h = new
    return torch.from_numpy(out), torch.from_numpy(h[None])


# cont with sequences starting mid-batch (stream 0 at t = 2, stream 1 at t = 1 and t = 3, stream 2 never)
CONT = torch.tensor([[0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 0, 1]], dtype=torch.float64)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("expose", [False, True])
def test_lstm_forward_against_caffe_equations(make_layer, static, expose):
    x = rand(4, 3, 2, 3, seed=1)  # features on two axes: flattened from axis 2, as Caffe's x_transform
    xs = rand(3, 2, 2, seed=2) if static else None
    layer = recurrent(make_layer, "LSTM", 5, tuple(x.shape), static=(3, 2, 2) if static else None, expose=expose)
    blobs = dict(zip(layer.blob_names, layer.blobs()))
    args = [x, CONT] + ([xs] if static else [])
    h0 = c0 = None
    if expose:
        h0, c0 = rand(1, 3, 5, seed=3), rand(1, 3, 5, seed=4)
        args += [h0, c0]
    with torch.no_grad():
        got = layer(*args)
    want = lstm_reference(x, CONT, blobs["W_xc"], blobs["b_c"], blobs["W_hc"], xs, blobs.get("W_xc_static"), h0, c0)
    if expose:
        assert len(got) == 3 and [tuple(t.shape) for t in got] == [(4, 3, 5), (1, 3, 5), (1, 3, 5)]
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
    else:
        torch.testing.assert_close(got, want[0], rtol=0, atol=1e-12)
    assert layer.top_shapes([tuple(a.shape) for a in args]) == [(4, 3, 5)] + [(1, 3, 5)] * (2 if expose else 0)
    # stream 2 continues from h0/c0 at t = 0; the others start afresh, where h0/c0 must not matter
    if expose:
        with torch.no_grad():
            other = layer(*args[:-2], h0 + 1, c0 - 1)
        torch.testing.assert_close(other[0][:, :2], got[0][:, :2], rtol=0, atol=0)
        assert not torch.allclose(other[0][:, 2], got[0][:, 2])


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("expose", [False, True])
def test_rnn_forward_against_caffe_equations(make_layer, static, expose):
    x = rand(4, 3, 6, seed=5)
    xs = rand(3, 4, seed=6) if static else None
    layer = recurrent(make_layer, "RNN", 4, (4, 3, 6), static=(3, 4) if static else None, expose=expose)
    b = dict(zip(layer.blob_names, layer.blobs()))
    args = [x, CONT] + ([xs] if static else [])
    h0 = rand(1, 3, 4, seed=7) if expose else None
    if expose:
        args.append(h0)
    with torch.no_grad():
        got = layer(*args)
    o, hT = rnn_reference(x, CONT, b["W_xh"], b["b_h"], b["W_hh"], b["W_ho"], b["b_o"], xs, b.get("W_xh_static"), h0)
    if expose:
        torch.testing.assert_close(got[0], o, rtol=0, atol=1e-12)
        torch.testing.assert_close(got[1], hT, rtol=0, atol=1e-12)
    else:
        torch.testing.assert_close(got, o, rtol=0, atol=1e-12)


def test_lstm_unit_against_caffe_formulas(make_layer):
    layer = make_layer('type: "LSTMUnit"', (1, 4, 3), (1, 4, 12), (1, 4), tops=2)
    c_prev, gates = rand(1, 4, 3, seed=8) * 2, rand(1, 4, 12, seed=9) * 2
    # 0 and 1, as Caffe documents, and a value in between: Caffe's formulas hold for it too
    cont = torch.tensor([[0.0, 1.0, 0.5, 1.0]], dtype=torch.float64)
    c_prev = c_prev.requires_grad_()
    gates = gates.requires_grad_()
    c, h = layer(c_prev, gates, cont)
    wc, wh = unit_reference(c_prev.detach().numpy()[0], gates.detach().numpy()[0], cont.numpy()[0])
    torch.testing.assert_close(c[0], torch.from_numpy(wc), rtol=0, atol=1e-13)
    torch.testing.assert_close(h[0], torch.from_numpy(wh), rtol=0, atol=1e-13)
    # Caffe's backward, also where it is not the true derivative (cont = 0.5: df' = dc c_prev f (1 - f))
    dc, dh = rand(1, 4, 3, seed=10), rand(1, 4, 3, seed=11)
    torch.autograd.backward([c, h], [dc, dh])
    wcp, wg = unit_backward_reference(c_prev.detach().numpy()[0], gates.detach().numpy()[0], cont.numpy()[0],
                                      dc.numpy()[0], dh.numpy()[0])
    torch.testing.assert_close(c_prev.grad[0], torch.from_numpy(wcp), rtol=0, atol=1e-13)
    torch.testing.assert_close(gates.grad[0], torch.from_numpy(wg), rtol=0, atol=1e-13)
    # cont = 0: the forget gate is exactly 0, not 0 * sigmoid(f'), so a NaN forget input does not leak
    nan_f = gates.detach().clone()
    nan_f[..., 3:6] = math.nan
    c2, h2 = layer(c_prev.detach(), nan_f, torch.zeros(1, 4, dtype=torch.float64))
    assert torch.isfinite(c2).all() and torch.isfinite(h2).all()
    assert torch.isnan(layer(c_prev.detach(), nan_f, torch.ones(1, 4, dtype=torch.float64))[0]).all()


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_float32_layers_agree_with_the_float64_transcription(make_layer, kind):
    x = rand(4, 3, 5, seed=32)
    layer = make_layer(f'type: "{kind}" recurrent_param {{ num_output: 6 {FILLERS} }}', (4, 3, 5), (4, 3),
                       seed=4, dtype=torch.float32)
    b = [t.detach().double() for t in layer.blobs()]
    with torch.no_grad():
        got = layer(x.float(), CONT.float())
    want = lstm_reference(x, CONT, *b)[0] if kind == "LSTM" else rnn_reference(x, CONT, *b)[0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)


def test_caffe_sigmoid_and_tanh_are_evaluated_in_double():
    x = torch.tensor([-100.0, -3.0, -1e-4, 0.0, 1e-4, 2.5, 100.0], dtype=torch.float32)
    w = x.double()
    torch.testing.assert_close(caffe_sigmoid(x), (1 / (1 + torch.exp(-w))).float(), rtol=0, atol=0)
    torch.testing.assert_close(caffe_tanh(x), (2 * (1 / (1 + torch.exp(-2 * w))) - 1).float(), rtol=0, atol=0)
    assert caffe_sigmoid(x).dtype == torch.float32 and float(caffe_tanh(x)[-1]) == 1.0


def torch_lstm_from(layer):
    """A torch.nn.LSTM holding the layer's weights: Caffe's gates i, f, o, g reordered to torch's i, f, g, o."""
    H, K = layer.num_output, layer.K
    perm = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
    ref = torch.nn.LSTM(K, H, dtype=torch.float64)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(layer.W_xc[perm])
        ref.weight_hh_l0.copy_(layer.W_hc[perm])
        ref.bias_ih_l0.copy_(layer.b_c[perm])
        ref.bias_hh_l0.zero_()
    return ref, perm


def test_lstm_matches_torch_nn_lstm_forward_and_backward(make_layer):
    T, N, K, H = 6, 3, 4, 5
    layer = recurrent(make_layer, "LSTM", H, (T, N, K), expose=True)
    ref, perm = torch_lstm_from(layer)
    x = rand(T, N, K, seed=12).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    cont = torch.ones(T, N, dtype=torch.float64)
    cont[0] = 0  # a sequence starts at t = 0: the given h0/c0 are flushed, torch starts from zeros
    h0, c0 = rand(1, N, H, seed=13), rand(1, N, H, seed=14)
    out, hT, cT = layer(x, cont, h0, c0)
    want, (wh, wc) = ref(xr)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hT, wh, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cT, wc, rtol=1e-12, atol=1e-12)
    # with cont = 1 throughout, the given state is torch's initial state
    cont1 = torch.ones(T, N, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, cont1, h0, c0)[0], ref(xr, (h0, c0))[0], rtol=1e-12, atol=1e-12)
    # gradients (Caffe's backward is the true derivative for binary cont)
    g = rand(T, N, H, seed=15)
    (out * g).sum().backward()
    (want * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.W_xc.grad[perm], ref.weight_ih_l0.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.W_hc.grad[perm], ref.weight_hh_l0.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.b_c.grad[perm], ref.bias_ih_l0.grad, rtol=1e-10, atol=1e-12)


def params_call(layer, n_inputs, *inputs_and_params):
    xs, ps = inputs_and_params[:n_inputs], inputs_and_params[n_inputs:]
    return torch.func.functional_call(layer, dict(zip(layer.blob_names, ps)), tuple(xs))


def blobs_for_grad(layer):
    return tuple(b.detach().clone().requires_grad_() for b in layer.blobs())


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("static", [False, True])
def test_gradcheck_through_inputs_and_weights(make_layer, kind, static):
    layer = recurrent(make_layer, kind, 3, (4, 3, 2), static=(3, 2) if static else None)
    x = rand(4, 3, 2, seed=16).requires_grad_()
    inputs = [x, CONT] + ([rand(3, 2, seed=17).requires_grad_()] if static else [])
    # CONT starts every stream afresh except stream 2, whose state carries over between gradcheck's
    # forwards; flush it so that every call computes the same function
    cont = CONT.clone()
    cont[0, 2] = 0
    inputs[1] = cont
    assert gradcheck(lambda *a: params_call(layer, len(inputs), *a), (*inputs, *blobs_for_grad(layer)))


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradcheck_with_exposed_hidden_state(make_layer, kind):
    layer = recurrent(make_layer, kind, 3, (3, 2, 2), static=(2, 3), expose=True)
    n = 2 if kind == "LSTM" else 1
    states = [rand(1, 2, 3, seed=18 + k) for k in range(n)]  # given, and continued (cont = 1 at t = 0)
    inputs = [rand(3, 2, 2, seed=20).requires_grad_(), torch.ones(3, 2, dtype=torch.float64),
              rand(2, 3, seed=21).requires_grad_(), *states]
    assert gradcheck(lambda *a: params_call(layer, len(inputs), *a)[0], (*inputs, *blobs_for_grad(layer)))


def test_gradcheck_lstm_unit(make_layer):
    layer = make_layer('type: "LSTMUnit"', (1, 3, 2), (1, 3, 8), (1, 3), tops=2)
    cont = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    assert gradcheck(lambda c, g: layer(c, g, cont), (rand(1, 3, 2, seed=22).requires_grad_(),
                                                     rand(1, 3, 8, seed=23).requires_grad_()))


def test_no_gradient_to_cont_initial_state_or_final_state_tops(make_layer):
    """Caffe's RecurrentLayer shares only the data of h0/c0 and h_T/c_T with its unrolled net."""
    layer = recurrent(make_layer, "LSTM", 3, (3, 2, 2), expose=True)
    x = rand(3, 2, 2, seed=24).requires_grad_()
    cont = torch.ones(3, 2, dtype=torch.float64, requires_grad=True)
    h0, c0 = rand(1, 2, 3, seed=25).requires_grad_(), rand(1, 2, 3, seed=26).requires_grad_()
    out, hT, cT = layer(x, cont, h0, c0)
    assert not hT.requires_grad and not cT.requires_grad
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert cont.grad is None and h0.grad is None and c0.grad is None
    unit = make_layer('type: "LSTMUnit"', (1, 2, 3), (1, 2, 12), (1, 2), tops=2)
    k = torch.ones(1, 2, dtype=torch.float64, requires_grad=True)
    sum(t.sum() for t in unit(rand(1, 2, 3), rand(1, 2, 12, seed=1).requires_grad_(), k)).backward()
    assert k.grad is None


# --- blobs, fillers, caffemodels ---------------------------------------------------------------

@pytest.mark.parametrize("kind,static,want", [
    ("LSTM", False, [("W_xc", (20, 6)), ("b_c", (20,)), ("W_hc", (20, 5))]),
    ("LSTM", True, [("W_xc", (20, 6)), ("b_c", (20,)), ("W_xc_static", (20, 12)), ("W_hc", (20, 5))]),
    ("RNN", False, [("W_xh", (5, 6)), ("b_h", (5,)), ("W_hh", (5, 5)), ("W_ho", (5, 5)), ("b_o", (5,))]),
    ("RNN", True, [("W_xh", (5, 6)), ("b_h", (5,)), ("W_xh_static", (5, 12)), ("W_hh", (5, 5)), ("W_ho", (5, 5)),
                   ("b_o", (5,))]),
])
def test_blobs_in_caffes_order_and_shapes(make_layer, kind, static, want):
    layer = recurrent(make_layer, kind, 5, (3, 2, 2, 3), static=(2, 3, 4) if static else None)
    assert [(n, tuple(b.shape)) for n, b in zip(layer.blob_names, layer.blobs())] == want
    assert all(layer.blob_is_learnable(i) for i in range(len(want)))


def test_fillers_draw_in_caffes_order_including_every_timesteps_copy(make_layer):
    """Caffe's unrolled net fills each timestep's copy of a shared weight before sharing the first."""
    def filler(text):
        return text_format.Parse(text, pb.FillerParameter())

    wf = filler('type: "uniform" min: -0.6 max: 0.6')
    bf = filler('type: "uniform" min: -0.3 max: 0.3')
    T, N, K, H = 3, 2, 4, 2
    layer = recurrent(make_layer, "LSTM", H, (T, N, K), static=(N, 3), seed=7)
    rng = CaffeRNG(7)
    want = [fill(torch.empty(*s), f, rng) for s, f in [((8, K), wf), ((8,), bf), ((8, 3), wf), ((8, H), wf)]]
    for _ in range(T - 1):
        fill(torch.empty(8, H), wf, rng)  # transform_2 .. transform_T
    for got, w in zip(layer.blobs(), want):
        torch.testing.assert_close(got, w.double(), rtol=0, atol=0)
    assert np.array_equal(layer.ctx.generator.rand_u32(5), rng.rand_u32(5))

    rnn = recurrent(make_layer, "RNN", H, (T, N, K), seed=8)
    rng = CaffeRNG(8)
    want = [fill(torch.empty(*s), f, rng) for s, f in [((H, K), wf), ((H,), bf)]]
    for t in range(T):  # W_hh_h_{t-1}, then W_ho_h_t with its bias
        step = [fill(torch.empty(*s), f, rng) for s, f in [((H, H), wf), ((H, H), wf), ((H,), bf)]]
        want += step if t == 0 else []
    for got, w in zip(rnn.blobs(), want):
        torch.testing.assert_close(got, w.double(), rtol=0, atol=0)
    assert np.array_equal(rnn.ctx.generator.rand_u32(5), rng.rand_u32(5))

    # the default fillers are constant 0 and draw nothing
    plain = make_layer('type: "LSTM" recurrent_param { num_output: 2 }', (T, N, K), (T, N), seed=9)
    assert all(float(b.detach().abs().sum()) == 0 for b in plain.blobs())
    assert np.array_equal(plain.ctx.generator.rand_u32(3), CaffeRNG(9).rand_u32(3))


def lstm_net(static: bool, seed_fill: str = FILLERS) -> str:
    return f"""
name: "seq"
layer {{ name: "in" type: "Input" top: "x" top: "cont" {'top: "xs"' if static else ''}
  input_param {{ shape {{ dim: 4 dim: 2 dim: 3 }} shape {{ dim: 4 dim: 2 }}
                 {'shape { dim: 2 dim: 5 }' if static else ''} }} }}
layer {{ name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" {'bottom: "xs"' if static else ''} top: "h"
  recurrent_param {{ num_output: 3 {seed_fill} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "h" top: "y"
  inner_product_param {{ num_output: 2 axis: 2 weight_filler {{ type: "xavier" }} }} }}
"""


def test_caffemodel_round_trip(make_net, tmp_path):
    net = make_net(lstm_net(static=True), seed=1)
    path = str(tmp_path / "lstm.caffemodel")
    net.save(path)
    model = ncio.read_caffemodel(path)
    stored = {l.name: [tuple(ncio.blob_shape(b)) for b in l.blobs] for l in model.layer}
    assert stored["lstm"] == [(12, 3), (12,), (12, 5), (12, 3)]  # Caffe's W_xc, b_c, W_xc_static, W_hc
    other = make_net(lstm_net(static=True), seed=2)
    assert not torch.equal(other.layer("lstm").W_hc, net.layer("lstm").W_hc)
    other.copy_from(path)
    for a, b in zip(net.layer("lstm").blobs(), other.layer("lstm").blobs()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    x, xs = rand(4, 2, 3, seed=27), rand(2, 5, seed=28)
    cont = torch.tensor([[0, 0], [1, 1], [1, 0], [1, 1]], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x=x, cont=cont, xs=xs)["y"], other(x=x, cont=cont, xs=xs)["y"],
                                   rtol=0, atol=0)
    # a model of the net without the static input has one blob fewer: refused, naming the layer
    from netcompress.errors import WeightLoadError
    plain = make_net(lstm_net(static=False), seed=3)
    plain.save(str(tmp_path / "plain.caffemodel"))
    with pytest.raises(WeightLoadError, match="layer 'lstm'.*has 3, the net's LSTM layer expects 4"):
        make_net(lstm_net(static=True)).copy_from(str(tmp_path / "plain.caffemodel"))


# --- the state carried across forwards ---------------------------------------------------------

def test_state_carries_across_forwards_as_caffe(make_layer):
    """Caffe's TestForward: a sequence in one forward equals the same sequence one timestep per forward
    (cont 0 at the first); with cont 0 at every step the later outputs differ."""
    T, N = 3, 3
    x = rand(T, N, 3, 2, seed=29)
    full = recurrent(make_layer, "LSTM", 7, (T, N, 3, 2), seed=1701)
    step = recurrent(make_layer, "LSTM", 7, (1, N, 3, 2), seed=1701)
    for a, b in zip(full.blobs(), step.blobs()):  # the kept copies are the first draws: the same blobs
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    cont = (torch.arange(T) > 0).double()[:, None].expand(T, N)
    with torch.no_grad():
        want = full(x, cont)
        for t in range(T):
            torch.testing.assert_close(step(x[t:t + 1], cont[t:t + 1]), want[t:t + 1], rtol=1e-12, atol=1e-12)
        step.reset_state()
        for t in range(T):
            got = step(x[t:t + 1], torch.zeros(1, N, dtype=torch.float64))
            if t == 0:
                torch.testing.assert_close(got, want[:1], rtol=1e-12, atol=1e-12)
            else:
                assert (got != want[t:t + 1]).all()


def test_carried_state_follows_caffes_buffers_and_survives_a_snapshot(make_layer):
    layer = recurrent(make_layer, "RNN", 3, (2, 4, 2))
    x, ones = rand(2, 4, 2, seed=30), torch.ones(2, 4, dtype=torch.float64)
    with torch.no_grad():
        layer(x, torch.zeros(2, 4, dtype=torch.float64))
        saved = layer.snapshot_state()
        a = layer(x, ones)
        # a resumed layer continues as this one did
        twin = recurrent(make_layer, "RNN", 3, (2, 4, 2))
        twin.restore_state(saved)
        torch.testing.assert_close(twin(x, ones), a, rtol=0, atol=0)
        # fewer streams continue the leading ones (Caffe's buffer keeps its first values) ...
        twin.restore_state(saved)
        torch.testing.assert_close(twin(x[:, :2], ones[:, :2]), a[:, :2], rtol=0, atol=0)
        # ... and a restore without state (a Caffe solverstate) starts from zeros
        twin.restore_state(None)
        fresh = recurrent(make_layer, "RNN", 3, (2, 4, 2))
        torch.testing.assert_close(twin(x, ones), fresh(x, ones), rtol=0, atol=0)
        # more streams than ever before: Caffe allocates a fresh, zeroed buffer
        bigger = twin(rand(2, 6, 2, seed=31), torch.ones(2, 6, dtype=torch.float64))
        zero_start = recurrent(make_layer, "RNN", 3, (2, 6, 2))(rand(2, 6, 2, seed=31),
                                                                torch.ones(2, 6, dtype=torch.float64))
        torch.testing.assert_close(bigger, zero_start, rtol=0, atol=0)


# --- bad input ---------------------------------------------------------------------------------

R = 'recurrent_param { num_output: 3 }'
E = 'recurrent_param { num_output: 3 expose_hidden: true }'


@pytest.mark.parametrize("snippet,shapes,tops,message", [
    ('type: "LSTM" recurrent_param { num_output: 0 }', [(2, 3, 4), (2, 3)], 1, "num_output must be positive, got 0"),
    (f'type: "LSTM" {R}', [(2, 3, 4), (2, 4)], 1,
     r"bottom 1 \(cont\) must have shape \(T, N\) = \(2, 3\), got \[2, 4\]"),
    (f'type: "RNN" {R}', [(2, 3, 4), (2, 3, 1)], 1, r"cont\) must have shape \(T, N\) = \(2, 3\), got \[2, 3, 1\]"),
    (f'type: "LSTM" {R}', [(2, 3), (2, 3)], 1, r"bottom 0 \(x\) must have at least 3 axes"),
    (f'type: "LSTM" {R}', [(0, 3, 4), (0, 3)], 1, "at least one timestep"),
    (f'type: "LSTM" {R}', [(2, 3, 4), (2, 3), (4, 5)], 1, r"static input\) must have shape \(N = 3, ...\)"),
    (f'type: "RNN" {R}', [(2, 3, 4), (2, 3), (3,)], 1, r"static input\) must have at least 2 axes"),
    (f'type: "LSTM" {E}', [(2, 3, 4), (2, 3)], 3, r"takes 4 or 5 bottoms with expose_hidden: true \(x, cont, "
                                                   r"\[static input\], h0, c0\), got 2"),
    (f'type: "LSTM" {E}', [(2, 3, 4), (2, 3), (1, 3, 3), (1, 3, 3)], 1, r"takes 3 top\(s\) .*\(output, h_T, c_T\)"),
    (f'type: "LSTM" {E}', [(2, 3, 4), (2, 3), (1, 3, 3), (3, 3)], 3,
     r"bottom 3 \(c0\) must have shape \(1, N, num_output\) = \[1, 3, 3\], got \[3, 3\]"),
    (f'type: "RNN" {E}', [(2, 3, 4), (2, 3), (1, 2, 3)], 2, r"bottom 2 \(h0\) must have shape"),
    ('type: "LSTMUnit"', [(1, 2, 3), (1, 2, 11), (1, 2)], 2, r"gates\) must have 4 H = 12 values"),
    ('type: "LSTMUnit"', [(2, 2, 3), (2, 2, 12), (2, 2)], 2, r"bottom 0 \(c_prev\) must have shape \(1, N, H\)"),
    ('type: "LSTMUnit"', [(1, 2, 3), (1, 2, 12), (1, 3)], 2, r"bottom 2 \(cont\) must have shape \(1, N\)"),
    ('type: "LSTMUnit"', [(1, 2, 3), (1, 2, 12), (1, 2, 1)], 2, r"bottom 2 \(cont\) must have shape \(1, N\)"),
    ('type: "LSTM" recurrent_param { num_output: 2 weight_filler { type: "bilinear" } }', [(2, 3, 4), (2, 3)], 1,
     "bilinear filler needs a 4-D blob"),
])
def test_bad_shapes_and_parameters_are_refused_naming_the_layer(make_layer, snippet, shapes, tops, message):
    with pytest.raises(NetDefinitionError, match=r"layer 'layer'( \(type \w+\))?: .*" + message):
        make_layer(snippet, *shapes, tops=tops)


def test_bad_input_at_forward(make_layer):
    layer = recurrent(make_layer, "LSTM", 3, (2, 3, 4))
    with pytest.raises(NetDefinitionError, match="timesteps changed: the layer was built for T = 2"):
        layer(rand(3, 3, 4), torch.ones(3, 3, dtype=torch.float64))
    with pytest.raises(NetDefinitionError, match="has 5 features per timestep and stream .* the weights expect 4"):
        layer(rand(2, 3, 5), torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(NetDefinitionError, match=r"cont\) must have shape \(T, N\) = \(2, 5\), got \[2, 3\]"):
        layer(rand(2, 5, 4), torch.ones(2, 3, dtype=torch.float64))
    # N may change (Caffe's Reshape), T may not
    assert layer(rand(2, 5, 4), torch.ones(2, 5, dtype=torch.float64)).shape == (2, 5, 3)


NET_WITH_CONT_GRADIENT = """
layer { name: "in" type: "Input" top: "x" top: "cont"
  input_param { shape { dim: 2 dim: 3 dim: 4 } shape { dim: 2 dim: 3 } } }
layer { name: "rnn" type: "%s" bottom: "x" bottom: "cont" top: "h" propagate_down: true propagate_down: %s
  recurrent_param { num_output: 2 } }
"""


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_a_train_net_that_asks_for_the_gradient_of_cont_is_refused(make_net, kind):
    with pytest.raises(NetDefinitionError, match=f"layer 'rnn' \\(type {kind}\\): cannot backpropagate to the "
                                                 "sequence continuation indicators \\(bottom 1, 'cont'\\)"):
        make_net(NET_WITH_CONT_GRADIENT % (kind, "true"), phase=pb.TRAIN)
    make_net(NET_WITH_CONT_GRADIENT % (kind, "false"), phase=pb.TRAIN)
    make_net(NET_WITH_CONT_GRADIENT % (kind, "true"), phase=pb.TEST)  # no backward in TEST: as Caffe, accepted
    unit = ('layer { name: "in" type: "Input" top: "c" top: "g" top: "k" input_param { shape { dim: 1 dim: 2 dim: 3 } '
            'shape { dim: 1 dim: 2 dim: 12 } shape { dim: 1 dim: 2 } } }\n'
            'layer { name: "unit" type: "LSTMUnit" bottom: "c" bottom: "g" bottom: "k" top: "c1" top: "h1" '
            'propagate_down: true propagate_down: true propagate_down: true }')
    with pytest.raises(NetDefinitionError,
                       match=r"layer 'unit' \(type LSTMUnit\): cannot backpropagate .* \(bottom 2, 'k'\)"):
        make_net(unit, phase=pb.TRAIN)


def test_the_types_are_registered():
    for t in ("RNN", "LSTM", "LSTMUnit"):
        assert t in known_layer_types() and layer_class(t).type_name == t
        assert not layer_class(t).graph_safe


# --- a tiny net that learns --------------------------------------------------------------------

SEQ_NET = """
name: "delay"
layer { name: "in" type: "Input" top: "x" top: "cont" top: "target"
  input_param { shape { dim: 8 dim: 16 dim: 1 } shape { dim: 8 dim: 16 } shape { dim: 8 dim: 16 dim: 1 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
  recurrent_param { num_output: 8 weight_filler { type: "uniform" min: -0.3 max: 0.3 }
                    bias_filler { type: "constant" value: 0 } } }
layer { name: "ip" type: "InnerProduct" bottom: "h" top: "y"
  inner_product_param { num_output: 1 axis: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "target" top: "loss" }
"""


def delay_task(seed: int):
    """Echo the previous step: target_t = x_{t-1} (0 at the start of a sequence, where cont is 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (8, 16, 1), generator=g).float() * 2 - 1
    cont = torch.ones(8, 16)
    cont[0] = 0
    target = torch.zeros_like(x)
    target[1:] = x[:-1]
    return x, cont, target


def test_a_tiny_lstm_net_learns_to_echo_the_previous_step():
    from netcompress.solvers import Solver

    sp = pb.SolverParameter()
    text_format.Parse(SEQ_NET, sp.net_param)
    sp.base_lr, sp.lr_policy, sp.momentum, sp.type = 0.05, "fixed", 0.9, "Adam"
    sp.momentum2, sp.delta = 0.999, 1e-8
    sp.max_iter, sp.random_seed, sp.display = 150, 5, 0
    solver = Solver(sp, verbose=False)
    net = solver.net

    def loss_on(seed):
        x, cont, target = delay_task(seed)
        with torch.no_grad():
            net(x=x, cont=cont, target=target)
        return float(net.loss)

    before = loss_on(1)
    x, cont, target = delay_task(0)
    net.set_input(x=x, cont=cont, target=target)
    solver.step(150)
    after = loss_on(1)  # sequences it never saw
    # without memory the best guess is 0: loss 112 / 8 / 2 = 7 (112 targets of +-1, T = 8); with it, near 0
    assert before > 5 and after < 0.02 * before, (before, after)
