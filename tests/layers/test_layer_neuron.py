"""Neuron layers against Caffe's formulas (transcribed element by element) and finite differences."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from netcompress.errors import NetDefinitionError
from netcompress.proto import caffe_pb2 as pb

SHAPE = (2, 3, 4, 5)


def rand(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def away_from(x: torch.Tensor, points=(0.0,), gap=0.05) -> torch.Tensor:
    """Move entries away from the kinks, so finite differences see one branch."""
    for p in points:
        near = (x - p).abs() < gap
        x = torch.where(near, x + 2 * gap, x)
    return x


def elementwise(fn, x: torch.Tensor) -> torch.Tensor:
    return torch.tensor([fn(float(v)) for v in x.flatten()], dtype=x.dtype).reshape(x.shape)


# --- ReLU / PReLU / ELU -------------------------------------------------------------------------

@pytest.mark.parametrize("slope", [0.0, 0.1, -0.3])
def test_relu_forward_backward(make_layer, slope):
    layer = make_layer(f'type: "ReLU" relu_param {{ negative_slope: {slope} }}', SHAPE)
    x = rand(*SHAPE)
    ref = elementwise(lambda v: max(v, 0.0) + slope * min(v, 0.0), x)
    torch.testing.assert_close(layer(x), ref)
    assert gradcheck(layer, (away_from(x).requires_grad_(),))
    # Caffe's gradient at exactly 0 is negative_slope (the x <= 0 side).
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    layer(z).sum().backward()
    torch.testing.assert_close(z.grad, torch.full((3,), slope, dtype=torch.float64))


def test_prelu_blob_shapes_and_default_filler(make_layer):
    layer = make_layer('type: "PReLU"', SHAPE)
    assert layer.blob_names == ["weight"] and tuple(layer.weight.shape) == (3,)
    assert torch.all(layer.weight == 0.25) and layer.blob_is_learnable(0)
    shared = make_layer('type: "PReLU" prelu_param { channel_shared: true }', SHAPE)
    assert tuple(shared.weight.shape) == () and float(shared.weight.detach()) == 0.25
    custom = make_layer('type: "PReLU" prelu_param { filler { type: "constant" value: -0.5 } }', SHAPE)
    assert torch.all(custom.weight == -0.5)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_forward_backward(make_layer, shared):
    layer = make_layer(f'type: "PReLU" prelu_param {{ channel_shared: {str(shared).lower()} '
                       'filler { type: "uniform" min: -1 max: 1 } }', SHAPE)
    x = rand(*SHAPE)
    a = layer.weight.detach()
    ref = torch.empty_like(x)
    for n in range(SHAPE[0]):
        for c in range(SHAPE[1]):
            ac = float(a) if shared else float(a[c])
            ref[n, c] = x[n, c].clamp_min(0) + ac * x[n, c].clamp_max(0)
    torch.testing.assert_close(layer(x), ref)
    xg = away_from(x).requires_grad_()
    assert gradcheck(lambda inp, w: torch.func.functional_call(layer, {"weight": w}, (inp,)),
                     (xg, layer.weight.detach().clone().requires_grad_()))
    # At x == 0 Caffe uses the slope for the bottom and 0 (x * [x <= 0]) for the slope.
    z = torch.zeros(1, 3, 2, dtype=torch.float64, requires_grad=True)
    layer.weight.grad = None
    layer(z).sum().backward()
    expect = a.expand(3) if shared else a
    torch.testing.assert_close(z.grad, expect.reshape(1, 3, 1).expand(1, 3, 2))
    assert torch.all(layer.weight.grad == 0)


def test_prelu_needs_two_axes(make_layer):
    with pytest.raises(NetDefinitionError, match="at least 2 axes"):
        make_layer('type: "PReLU"', (5,))


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_elu(make_layer, alpha):
    layer = make_layer(f'type: "ELU" elu_param {{ alpha: {alpha} }}', SHAPE)
    x = rand(*SHAPE)
    ref = elementwise(lambda v: max(v, 0.0) + alpha * (math.exp(min(v, 0.0)) - 1.0), x)
    torch.testing.assert_close(layer(x), ref)
    assert gradcheck(layer, (away_from(x).requires_grad_(),))
    z = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    layer(z).sum().backward()
    torch.testing.assert_close(z.grad, torch.full((2,), alpha, dtype=torch.float64))


# --- smooth neurons -------------------------------------------------------------------------------

def test_sigmoid_is_caffes_tanh_form(make_layer):
    layer = make_layer('type: "Sigmoid"', SHAPE, dtype=torch.float32)
    x = torch.tensor([-100.0, -40.0, -5.0, 0.0, 1e-3, 3.0, 40.0], dtype=torch.float32)
    ref = np.array([0.5 * math.tanh(0.5 * float(v)) + 0.5 for v in x], dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(layer(x).numpy(), ref)
    assert float(layer(x)[1]) == 0.0  # Caffe's double tanh saturates: exactly 0, unlike 1/(1+e^-x)
    layer64 = make_layer('type: "Sigmoid"', SHAPE)
    xg = rand(*SHAPE).requires_grad_()
    assert gradcheck(layer64, (xg,))
    y = layer64(xg)
    g, = torch.autograd.grad(y.sum(), xg)
    torch.testing.assert_close(g, (y * (1 - y)).detach())


def test_tanh_absval(make_layer):
    x = rand(*SHAPE)
    tanh = make_layer('type: "TanH"', SHAPE)
    torch.testing.assert_close(tanh(x), torch.tensor(np.tanh(x.numpy())))
    assert gradcheck(tanh, (x.clone().requires_grad_(),))
    absval = make_layer('type: "AbsVal"', SHAPE)
    torch.testing.assert_close(absval(x), x.abs())
    assert gradcheck(absval, (away_from(x).requires_grad_(),))
    z = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    absval(z).sum().backward()
    assert torch.all(z.grad == 0)  # caffe_cpu_sign(0) == 0


@pytest.mark.parametrize("power,scale,shift", [(1.0, 1.0, 0.0), (2.0, 0.5, 1.0), (3.0, -1.5, 0.0),
                                               (0.5, 2.0, 7.0), (-1.0, 1.0, 5.0), (1.0, 2.0, -1.0)])
def test_power(make_layer, power, scale, shift):
    layer = make_layer(f'type: "Power" power_param {{ power: {power} scale: {scale} shift: {shift} }}', SHAPE)
    x = rand(*SHAPE)
    ref = elementwise(lambda v: (shift + scale * v) ** power, x)
    torch.testing.assert_close(layer(x), ref)
    assert gradcheck(layer, (x.clone().requires_grad_(),))


@pytest.mark.parametrize("power,scale", [(0.0, 2.0), (2.0, 0.0)])
def test_power_constant_cases(make_layer, power, scale):
    layer = make_layer(f'type: "Power" power_param {{ power: {power} scale: {scale} shift: 3 }}', SHAPE)
    x = rand(*SHAPE).requires_grad_()
    y = layer(x)
    expect = 1.0 if power == 0.0 else 3.0 ** power
    assert torch.all(y == expect)
    y.sum().backward()
    assert torch.all(x.grad == 0)  # Caffe writes a zero diff


@pytest.mark.parametrize("base,scale,shift", [(-1.0, 1.0, 0.0), (2.0, 0.5, 1.0), (10.0, -1.0, -0.5),
                                              (-1.0, 2.0, 0.7)])
def test_exp(make_layer, base, scale, shift):
    layer = make_layer(f'type: "Exp" exp_param {{ base: {base} scale: {scale} shift: {shift} }}', SHAPE)
    x = rand(*SHAPE)
    b = math.e if base == -1.0 else base
    torch.testing.assert_close(layer(x), elementwise(lambda v: b ** (shift + scale * v), x))
    assert gradcheck(layer, (x.clone().requires_grad_(),))


@pytest.mark.parametrize("base,scale,shift", [(-1.0, 1.0, 0.0), (2.0, 0.5, 3.0), (10.0, -1.0, 4.0)])
def test_log(make_layer, base, scale, shift):
    layer = make_layer(f'type: "Log" log_param {{ base: {base} scale: {scale} shift: {shift} }}', SHAPE)
    x = rand(*SHAPE).clamp(-1.5, 1.5)
    if base == -1.0 and shift == 0.0:
        x = x.abs() + 0.1
    b = math.e if base == -1.0 else base
    torch.testing.assert_close(layer(x), elementwise(lambda v: math.log(shift + scale * v, b), x))
    assert gradcheck(layer, (x.clone().requires_grad_(),))


@pytest.mark.parametrize("kind", ["Exp", "Log"])
def test_exp_log_reject_bad_base(make_layer, kind):
    with pytest.raises(NetDefinitionError, match=r"layer 'layer' \(type " + kind + r"\).*base must be strictly positive"):
        make_layer(f'type: "{kind}" {kind.lower()}_param {{ base: -2 }}', SHAPE)


@pytest.mark.parametrize("base, shift", [(-1, 1e30), (10, 1e30), (0.5, -1e30)])
def test_exp_refuses_a_scale_that_overflows(make_layer, base, shift):
    # base^shift past a double: refused with the layer's name (it raised OverflowError); Caffe's float gives inf
    with pytest.raises(NetDefinitionError, match=r"layer 'layer' \(type Exp\).*base\^shift overflows"):
        make_layer(f'type: "Exp" exp_param {{ base: {base} shift: {shift} }}', SHAPE)


def test_bnll(make_layer):
    layer = make_layer('type: "BNLL"', SHAPE)
    x = rand(*SHAPE) * 5
    x[0, 0, 0, :3] = torch.tensor([800.0, -800.0, 0.0], dtype=torch.float64)
    ref = elementwise(lambda v: v + math.log1p(math.exp(-v)) if v > 0 else math.log1p(math.exp(v)), x)
    torch.testing.assert_close(layer(x), ref)
    xg = x.clone().requires_grad_()
    layer(xg).sum().backward()
    # Caffe's backward: exp(min(x, 50)) / (exp(min(x, 50)) + 1), 0.5 at 0, no NaN anywhere.
    expval = torch.exp(x.clamp_max(50.0))
    torch.testing.assert_close(xg.grad, expval / (expval + 1))
    assert gradcheck(layer, ((rand(*SHAPE) * 3).requires_grad_(),))


def test_threshold(make_layer):
    layer = make_layer('type: "Threshold" threshold_param { threshold: 0.2 }', SHAPE)
    x = rand(*SHAPE)
    x[0, 0, 0, 0] = 0.2
    y = layer(x.requires_grad_())
    torch.testing.assert_close(y, (x > 0.2).to(x.dtype))
    assert float(y[0, 0, 0, 0]) == 0.0  # strictly greater
    assert not y.requires_grad  # Caffe has no backward for Threshold
    default = make_layer('type: "Threshold"', SHAPE)
    assert default.threshold == 0.0


# --- Dropout --------------------------------------------------------------------------------------

def test_dropout_test_phase_is_identity(make_layer):
    layer = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', SHAPE, phase=pb.TEST)
    x = rand(*SHAPE)
    assert layer(x) is x
    layer.train()  # nn.Module mode does not matter, only the net's phase
    assert layer(x) is x


def test_dropout_train_scales_kept_units(make_layer):
    layer = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', (40, 50, 10),
                       phase=pb.TRAIN, seed=7)
    layer.eval()  # nn.Module mode does not matter, only the net's phase
    x = rand(40, 50, 10) + 3
    xg = x.clone().requires_grad_()
    y = layer(xg)
    kept = y != 0
    scale = 1.0 / (1.0 - 0.3)
    torch.testing.assert_close(y[kept], x[kept] * scale)
    frac = kept.double().mean().item()
    assert abs(frac - 0.7) < 0.01
    y.sum().backward()
    torch.testing.assert_close(xg.grad, kept.double() * scale)  # top_diff * mask * scale


def test_dropout_is_reproducible_and_resumable(make_layer):
    a = make_layer('type: "Dropout"', SHAPE, phase=pb.TRAIN, seed=3)
    b = make_layer('type: "Dropout"', SHAPE, phase=pb.TRAIN, seed=3)
    x = rand(*SHAPE) + 5
    m1 = a(x)
    assert torch.equal(m1, b(x))
    state = a.rng_state()
    m2 = a(x)
    assert not torch.equal(m1, m2)
    a.set_rng_state(state)
    assert torch.equal(a(x), m2)
    # another seed, another rank, another layer name: other masks
    assert not torch.equal(make_layer('type: "Dropout"', SHAPE, phase=pb.TRAIN, seed=4)(x), m1)
    assert not torch.equal(make_layer('type: "Dropout"', SHAPE, phase=pb.TRAIN, seed=3, rank=1)(x), m1)
    assert not torch.equal(make_layer('name: "other" type: "Dropout"', SHAPE, phase=pb.TRAIN, seed=3)(x), m1)


def test_dropout_bad_ratio(make_layer):
    with pytest.raises(NetDefinitionError, match=r"dropout_ratio must be in \[0, 1\), got 1"):
        make_layer('type: "Dropout" dropout_param { dropout_ratio: 1 }', SHAPE, phase=pb.TRAIN)
    with pytest.raises(NetDefinitionError, match="draws no random numbers"):
        make_layer('type: "ReLU"', SHAPE).set_rng_state(torch.zeros(1, dtype=torch.uint8))
    assert make_layer('type: "ReLU"', SHAPE).rng_state() is None


def test_neuron_layers_keep_shape_and_count_checks(make_net):
    net = make_net('''
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "s" type: "Sigmoid" bottom: "x" top: "x" }
        layer { name: "t" type: "TanH" bottom: "x" top: "y" }''')
    assert net.blob_shapes["y"] == (2, 3)
    with pytest.raises(NetDefinitionError, match=r"layer 'r' \(type ReLU\) takes 1 bottom blob\(s\), got 2"):
        make_net('''
            layer { name: "in" type: "Input" top: "x" top: "z" input_param { shape { dim: 2 } } }
            layer { name: "r" type: "ReLU" bottom: "x" bottom: "z" top: "y" }''')


# --- Clip / Swish (BVLC Caffe's later neuron layers) -----------------------------------------------

def test_clip(make_layer):
    layer = make_layer('type: "Clip" clip_param { min: -0.5 max: 0.75 }', SHAPE)
    x = rand(*SHAPE)
    x.view(-1)[:4] = torch.tensor([-0.5, 0.75, float("nan"), -3.0], dtype=x.dtype)  # both bounds, NaN, below
    y = layer(x)
    ref = elementwise(lambda v: v if math.isnan(v) else max(-0.5, min(v, 0.75)), x)
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.nan_to_num(), ref.nan_to_num())
    xr = x.clone().requires_grad_()
    layer(xr).backward(torch.full(SHAPE, 3.0, dtype=x.dtype))
    # Caffe: top_diff * (x >= min && x <= max), the bounds included (a NaN compares false)
    expect = elementwise(lambda v: 3.0 if -0.5 <= v <= 0.75 else 0.0, x)
    assert torch.equal(xr.grad.view(-1)[:2], torch.tensor([3.0, 3.0], dtype=x.dtype))
    assert torch.equal(xr.grad.view(-1)[3:], expect.view(-1)[3:])
    xs = away_from(rand(*SHAPE, seed=1), (-0.5, 0.75)).requires_grad_()
    assert gradcheck(layer, (xs,))
    with pytest.raises(NetDefinitionError, match="clip_param needs both min and max"):
        make_layer('type: "Clip" clip_param { min: 1 }', SHAPE)
    with pytest.raises(NetDefinitionError, match=r"clip_param.min \(2\) must not exceed clip_param.max \(1\)"):
        make_layer('type: "Clip" clip_param { min: 2 max: 1 }', SHAPE)


@pytest.mark.parametrize("beta", [None, 1.5, -0.25])
def test_swish(make_layer, beta):
    snippet = 'type: "Swish"' + (f" swish_param {{ beta: {beta} }}" if beta is not None else "")
    b = 1.0 if beta is None else beta
    for dtype in (torch.float64, torch.float32):
        layer = make_layer(snippet, SHAPE, dtype=dtype)
        x = rand(*SHAPE, dtype=dtype)
        # Caffe: z = beta x in Dtype, s = its Sigmoid layer (0.5 tanh(0.5 z) + 0.5 in double), y = x s in Dtype
        z = (x * b).double()
        s = elementwise(lambda v: 0.5 * math.tanh(0.5 * v) + 0.5, z).to(dtype)
        torch.testing.assert_close(layer(x), x * s, rtol=1e-14 if dtype == torch.float64 else 2e-7, atol=0)
        xr = x.clone().requires_grad_()
        y = layer(xr)
        y.backward(torch.ones_like(x))
        caffe_grad = b * y.detach() + s * (1 - b * y.detach())  # Swish's Backward_cpu
        torch.testing.assert_close(xr.grad, caffe_grad, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)
    assert gradcheck(make_layer(snippet, SHAPE), (rand(*SHAPE).requires_grad_(),))


def test_clip_and_swish_parameters_round_trip_through_text_and_binary():
    from google.protobuf import text_format

    text = ('name: "c" type: "Clip" bottom: "x" top: "x" clip_param { min: -1 max: 6 }\n')
    lp = text_format.Parse(text, pb.LayerParameter())
    again = pb.LayerParameter.FromString(lp.SerializeToString())
    assert (again.clip_param.min, again.clip_param.max) == (-1.0, 6.0)
    assert text_format.MessageToString(again).count("clip_param") == 1
    sw = text_format.Parse('name: "s" type: "Swish" swish_param { beta: 2 }', pb.LayerParameter())
    assert pb.LayerParameter.FromString(sw.SerializeToString()).swish_param.beta == 2.0


def test_a_bvlc_caffemodel_with_clip_and_swish_layers_loads(tmp_path, make_net):
    """BVLC Caffe writes clip_param as field 148 and swish_param as 147 (the fork's DNS fields here): such a
    caffemodel parses, and its weights load by layer name."""
    import struct

    from netcompress.proto import caffe_pb2 as pb

    def field(number: int, payload: bytes) -> bytes:  # a length-delimited field (numbers < 2048)
        key = (number << 3) | 2
        return bytes([0x80 | (key & 0x7F), key >> 7, len(payload)]) + payload

    clip = b"\x0d" + struct.pack("<f", -1.0) + b"\x15" + struct.pack("<f", 1.0)  # min, max: fixed32 fields 1, 2
    swish = b"\x0d" + struct.pack("<f", 1.0)
    model = pb.NetParameter(name="bvlc")
    ip = model.layer.add(name="ip", type="InnerProduct")
    ip.blobs.add(shape=pb.BlobShape(dim=[2, 3]), data=[1, 2, 3, 4, 5, 6])
    ip.blobs.add(shape=pb.BlobShape(dim=[2]), data=[7, 8])
    raw = model.SerializeToString()
    raw += field(100, pb.LayerParameter(name="clip", type="Clip").SerializeToString() + field(148, clip))
    raw += field(100, pb.LayerParameter(name="sw", type="Swish").SerializeToString() + field(147, swish))
    (tmp_path / "bvlc.caffemodel").write_bytes(raw)
    net = make_net('input: "x" input_shape { dim: 1 dim: 3 }\n'
                   'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 2 } }\n'
                   'layer { name: "clip" type: "Clip" bottom: "ip" top: "c" clip_param { min: -1 max: 1 } }\n'
                   'layer { name: "sw" type: "Swish" bottom: "c" top: "s" }\n')
    net.copy_from(str(tmp_path / "bvlc.caffemodel"))
    assert net.layer("ip").weight.flatten().tolist() == [1, 2, 3, 4, 5, 6]
    net(x=torch.ones(1, 3, dtype=torch.float64))
    assert net.blobs["c"].tolist() == [[1.0, 1.0]]  # 6 + 7 and 15 + 8 clipped to 1
