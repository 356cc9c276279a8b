"""StrictIdentity and ChannelPad (recipes-spec §3.2, §5.2, T8's unit tests)."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from netcompress.errors import NetDefinitionError
from netcompress.layers.eresnet import channel_pad_as_convolution, ema_decay
from netcompress.proto import caffe_pb2 as pb

GATE = 'type: "StrictIdentity" strict_identity_param { epsilon: %s }'


def gate_layer(make_layer, eps=2.5, shape=(4, 3, 5, 5), phase=pb.TRAIN, extra="", tops=1,
               dtype=torch.float32):
    snippet = ('type: "StrictIdentity" strict_identity_param { epsilon: %s %s }' % (eps, extra))
    return make_layer(snippet, shape, phase=phase, tops=tops, dtype=dtype)


def test_all_within_epsilon_gives_a_closed_gate_and_zero_output(make_layer):
    layer = gate_layer(make_layer, eps=2.5)
    x = torch.rand(4, 3, 5, 5) * 5 - 2.5  # |x| <= 2.5
    x[0, 0, 0, 0] = 2.5                   # exactly epsilon still counts as inside
    y = layer(x)
    assert layer.last_gate == 0.0
    assert torch.equal(y, torch.zeros_like(x))


@pytest.mark.parametrize("phase", [pb.TRAIN, pb.TEST])
def test_one_response_just_over_epsilon_opens_the_gate_for_the_whole_batch(make_layer, phase):
    eps = 2.5
    layer = gate_layer(make_layer, eps=eps, phase=phase)
    x = torch.rand(4, 3, 5, 5) * 2 - 1
    x[3, 2, 4, 4] = -(eps + 1e-3)          # one sample of four, one response
    y = layer(x)
    assert layer.last_gate == 1.0
    assert torch.equal(y, x)               # every sample passes, not only the one over epsilon


def test_the_gate_is_the_four_relu_formula_in_float32(make_layer):
    # On the micro-ramp g = relu(1 - L + L^2 s): s = (L - 1)/L^2 + 0.5/L^2 gives g = 0.5.
    layer = gate_layer(make_layer, eps=0.0, extra="large: 1000", dtype=torch.float64)
    s = (1000 - 1) / 1000 ** 2 + 0.5 / 1000 ** 2
    x = torch.zeros(2, 3, dtype=torch.float64)
    x[1, 1] = s
    layer(x)
    assert layer.last_gate == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("open_gate", [True, False])
def test_gradient_is_gate_times_dy(make_layer, open_gate):
    layer = gate_layer(make_layer, eps=1.0)
    x = (torch.rand(4, 3, 5, 5) * 1.8 - 0.9)
    if open_gate:
        x[1, 1, 1, 1] = 3.0
    x.requires_grad_()
    dy = torch.randn(4, 3, 5, 5)
    layer(x).backward(dy)
    g = 1.0 if open_gate else 0.0
    assert layer.last_gate == g
    assert torch.equal(x.grad, g * dy)


def test_test_phase_computes_the_same_gate_and_keeps_the_ema(make_layer):
    train = gate_layer(make_layer, eps=1.0, phase=pb.TRAIN)
    test = gate_layer(make_layer, eps=1.0, phase=pb.TEST)
    for x in (torch.zeros(4, 3, 5, 5), torch.full((4, 3, 5, 5), 2.0)):
        assert torch.equal(train(x), test(x))
        assert train.last_gate == test.last_gate
    assert test.ema == 0.0 and test.step == 0   # TEST forwards never move the EMA
    assert train.ema != 0.0


def test_ema_follows_tf_decay_schedule(make_layer):
    layer = gate_layer(make_layer, eps=1.0)
    closed, opened = torch.zeros(4, 3, 5, 5), torch.full((4, 3, 5, 5), 3.0)
    pattern = [1, 1, 0, 1] * 10 + [1] * 60   # indicator per step (1 = discarded)
    ema = 0.0
    for t, ind in enumerate(pattern):
        layer.set_iteration(t)
        layer(closed if ind else opened)
        d = min(0.95, (1 + t) / (10 + t))
        ema = d * ema + (1 - d) * ind
        assert layer.ema == pytest.approx(ema, rel=1e-6, abs=1e-7)
    assert ema_decay(0.95, 0) == 0.1 and ema_decay(0.95, 200) == 0.95
    assert ema_decay(0.95, 9) == pytest.approx(10 / 19)


def test_ema_counts_forwards_without_a_solver_and_is_a_blob(make_layer):
    layer = gate_layer(make_layer, eps=1.0)
    assert layer.blob_names == ["discard_ema"] and not layer.blob_is_learnable(0)
    for _ in range(3):
        layer(torch.zeros(4, 3, 5, 5))
    assert layer.step == 3
    expected = 0.0
    for t in range(3):
        d = min(0.95, (1 + t) / (10 + t))
        expected = d * expected + (1 - d)
    assert layer.ema == pytest.approx(expected, rel=1e-6)
    assert float(layer.discard_ema[0]) == layer.ema


def test_indicator_top_zero_gate_and_one_minus_gate(make_layer):
    cifar = gate_layer(make_layer, eps=0.0, extra="large: 1000", tops=2, dtype=torch.float64)
    imagenet = gate_layer(make_layer, eps=0.0, extra="large: 1000 discard_indicator: ONE_MINUS_GATE",
                          tops=2, dtype=torch.float64)
    x = torch.zeros(4, 3, 5, 5, dtype=torch.float64)
    x[0, 0, 0, 0] = (1000 - 1) / 1000 ** 2 + 0.25 / 1000 ** 2    # g = 0.25
    _, ind_c = cifar(x)
    _, ind_i = imagenet(x)
    assert ind_c.shape == (1,) and float(ind_c) == 0.0           # g != 0: not discarded
    assert float(ind_i) == pytest.approx(0.75)
    _, ind_c = cifar(torch.zeros_like(x))
    assert float(ind_c) == 1.0


def test_epsilon_start_epoch_and_epoch_end_log_line(make_layer, caplog):
    layer = gate_layer(make_layer, eps=2.0, extra="epsilon_start_epoch: 2")
    x = torch.full((4, 3, 5, 5), 1.0)           # inside +-2 but not 0
    layer(x)
    assert layer.last_gate == 0.0               # no solver drives it (a trained model): epsilon applies
    layer.set_epochs_done(0)                    # what the solver does at the start of training
    layer(x)
    assert layer.last_gate == 1.0               # epoch 1: epsilon is 0
    ema1 = layer.ema
    with caplog.at_level(logging.INFO, logger="netcompress"):
        layer.epoch_end(1)
        layer(x)
        assert layer.last_gate == 1.0           # epoch 2: still 0
        layer.epoch_end(2)
        layer(x)
        assert layer.last_gate == 0.0           # from epoch 3: epsilon
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "layer/is_discarded: {:.5g}".format(ema1) and 0 < ema1 < 1
    assert sum(l.startswith("layer/is_discarded: ") for l in lines) == 2


def test_snapshot_state_round_trip(make_layer):
    a = gate_layer(make_layer, eps=1.0)
    for t in range(5):
        a.set_iteration(t)
        a(torch.zeros(4, 3, 5, 5))
    a.epoch_end(3)
    b = gate_layer(make_layer, eps=1.0)
    b.restore_state(a.snapshot_state())
    assert b.ema == a.ema and b.step == a.step and b.epochs_done == 3
    c = gate_layer(make_layer, eps=1.0)
    c.restore_state(gate_layer(make_layer, eps=1.0).snapshot_state())
    assert c.epochs_done is None
    b.restore_state(None)                       # a Caffe snapshot: nothing to restore, nothing lost
    assert b.ema == a.ema


def test_strict_identity_needs_epsilon(make_layer):
    with pytest.raises(NetDefinitionError, match="epsilon is required"):
        make_layer('type: "StrictIdentity"', (2, 3))
    for field, said in (("epsilon: nan", "epsilon must be >= 0, got nan"),  # (NaN was taken: no gate opened)
                        ("epsilon: 1 large: nan", "large must be positive, got nan")):
        with pytest.raises(NetDefinitionError, match=said):
            make_layer(f'type: "StrictIdentity" strict_identity_param {{ {field} }}', (2, 3))


@pytest.mark.parametrize("before,after", [(4, 4), (0, 3), (2, 0)])
def test_channel_pad_and_its_convolution_form(make_layer, before, after):
    layer = make_layer('type: "ChannelPad" channel_pad_param { pad_before: %d pad_after: %d }'
                       % (before, after), (2, 8, 3, 3))
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    y = layer(x)
    assert layer.top_shapes([(2, 8, 3, 3)]) == [(2, 8 + before + after, 3, 3)]
    assert torch.equal(y[:, before:before + 8], x)
    assert not y[:, :before].any() and not y[:, before + 8:].any()
    conv, w = channel_pad_as_convolution(layer.layer_param, 8)
    assert conv.type == "Convolution" and not conv.convolution_param.bias_term
    assert conv.param[0].lr_mult == 0 and conv.convolution_param.num_output == 8 + before + after
    assert torch.equal(F.conv2d(x, w.double()), y)   # exact


def test_channel_pad_gradient(make_layer):
    layer = make_layer('type: "ChannelPad" channel_pad_param { pad_before: 1 pad_after: 2 }', (2, 3, 2, 2))
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.cuda
def test_strict_identity_and_channel_pad_on_cuda_match_cpu():
    from google.protobuf import text_format

    from netcompress.layers import LayerContext, create_layer

    gate_p = text_format.Parse('name: "g" type: "StrictIdentity" bottom: "b" top: "t" top: "i" '
                               'strict_identity_param { epsilon: 1.0 }', pb.LayerParameter())
    pad_p = text_format.Parse('name: "p" type: "ChannelPad" bottom: "b" top: "t" '
                              'channel_pad_param { pad_before: 2 pad_after: 2 }', pb.LayerParameter())
    out = {}
    for dev in ("cpu", "cuda"):
        ctx = LayerContext(phase=pb.TRAIN, device=torch.device(dev))
        gate, pad = create_layer(gate_p, [(4, 3, 5, 5)], ctx), create_layer(pad_p, [(4, 3, 5, 5)], ctx)
        gen = torch.Generator().manual_seed(0)
        res = []
        for scale in (0.5, 3.0, 0.5):  # closed, open, closed
            x = (torch.rand(4, 3, 5, 5, generator=gen) * 2 - 1) * scale
            x = x.to(dev).requires_grad_()
            y, ind = gate(x)
            (pad(y) * 2).sum().backward()
            res += [y.detach().cpu(), ind.cpu(), x.grad.cpu()]
        out[dev] = res + [gate.discard_ema.cpu()]
    for a, b in zip(out["cpu"], out["cuda"]):
        torch.testing.assert_close(a, b)
