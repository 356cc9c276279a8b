"""Input, DummyData and Parameter."""
from __future__ import annotations

import pytest
import torch

from netcompress.errors import NetDefinitionError
from netcompress.proto import caffe_pb2 as pb


def test_input_shapes_and_values(make_layer):
    layer = make_layer('type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } }')
    assert layer.top_shapes([]) == [(2, 3), (2, 3)]
    x = torch.ones(2, 3, dtype=torch.float64)
    a, b = layer(x, None)
    assert a is x and torch.equal(b, torch.zeros(2, 3, dtype=torch.float64))
    per_top = make_layer('type: "Input" top: "a" top: "b" input_param { shape { dim: 1 } shape { dim: 4 dim: 5 } }')
    assert per_top.top_shapes([]) == [(1,), (4, 5)]
    with pytest.raises(NetDefinitionError, match=r"shape must be given once or once per top \(2\), got 3"):
        make_layer('type: "Input" top: "a" top: "b" input_param { shape { dim: 1 } shape { dim: 1 } shape { dim: 1 } }')


def test_dummy_data_shapes_and_constant_fillers(make_layer):
    layer = make_layer('type: "DummyData" top: "a" top: "b" dummy_data_param { shape { dim: 2 dim: 3 } '
                       'shape { dim: 4 } data_filler { type: "constant" value: 1.5 } '
                       'data_filler { type: "constant" value: -2 } }')
    assert layer.is_data and layer.top_shapes([]) == [(2, 3), (4,)]
    a, b = layer()
    assert torch.all(a == 1.5) and torch.all(b == -2) and a.dtype == torch.float64
    a2, _ = layer()
    assert a2 is a  # constant tops are filled once, as Caffe's refill_ logic does
    default = make_layer('type: "DummyData" dummy_data_param { shape { dim: 3 } }')
    assert torch.equal(default(), torch.zeros(3, dtype=torch.float64))  # no filler: constant 0


def test_dummy_data_legacy_dims_and_random_refill(make_layer):
    layer = make_layer('type: "DummyData" top: "a" top: "b" dummy_data_param { num: 2 num: 5 channels: 3 '
                       'height: 4 width: 1 data_filler { type: "gaussian" std: 2 } }', seed=11)
    assert layer.top_shapes([]) == [(2, 3, 4, 1), (5, 3, 4, 1)]
    a1, b1 = layer()
    assert not torch.equal(a1.reshape(-1)[:24], b1.reshape(-1)[:24])  # one filler, drawn top after top
    state = layer.rng_state()
    a2, b2 = layer()
    assert not torch.equal(a1, a2)  # non-constant fillers refill at every forward
    layer.set_rng_state(state)
    a3, b3 = layer()
    assert torch.equal(a2, a3) and torch.equal(b2, b3)
    again = make_layer('type: "DummyData" top: "a" top: "b" dummy_data_param { num: 2 num: 5 channels: 3 '
                       'height: 4 width: 1 data_filler { type: "gaussian" std: 2 } }', seed=11)
    assert torch.equal(again()[0], a1)  # same seed, same data


@pytest.mark.parametrize("fields,msg", [
    ('shape { dim: 2 } num: 2 channels: 1 height: 1 width: 1', "both shape and the legacy"),
    ('num: 2 channels: 1 height: 1', r"width must be given once or once per top \(2\), got 0"),
    ('shape { dim: 2 } shape { dim: 2 } shape { dim: 2 }', r"shape must be given once or once per top \(2\), got 3"),
    ('shape { dim: 2 } data_filler { } data_filler { } data_filler { }', "data_filler must be given 0 times, once or once per top"),
])
def test_dummy_data_errors(make_layer, fields, msg):
    with pytest.raises(NetDefinitionError, match=msg):
        make_layer(f'type: "DummyData" top: "a" top: "b" dummy_data_param {{ {fields} }}')


def test_parameter_layer(make_layer):
    layer = make_layer('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }')
    assert layer.blob_names == ["weight"] and layer.blob_is_learnable(0)
    y = layer()
    assert y is layer.weight and torch.all(y == 0) and layer.top_shapes([]) == [(2, 3)]
    (y * 3).sum().backward()
    assert torch.all(layer.weight.grad == 3)


def test_data_layers_in_a_net(make_net):
    net = make_net('''
        layer { name: "d" type: "DummyData" top: "x" top: "label"
                dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
                                   data_filler { type: "uniform" min: -1 max: 1 } data_filler { type: "constant" value: 1 } } }
        layer { name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 4 dim: 3 } } }
        layer { name: "prod" type: "Eltwise" bottom: "x" bottom: "w" top: "xw" eltwise_param { operation: PROD } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "xw" bottom: "label" top: "loss" }''',
                   phase=pb.TRAIN, seed=1)
    net()
    net.loss.backward()
    w = net.layer("p").weight
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert not net.layer_need_backward["d"]
