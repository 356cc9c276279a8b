"""Small multi-layer nets through netcompress.net.Net: in-place layers, Split/Concat/Slice graphs,
loss_weight on a non-loss layer, propagate_down, TRAIN/TEST differences, the RNG snapshot hook."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from netcompress.errors import NetDefinitionError
from netcompress.proto import caffe_pb2 as pb


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


INPUT = 'layer { name: "in" type: "Input" top: "data" top: "label" ' \
        'input_param { shape { dim: 4 dim: 2 dim: 5 dim: 5 } shape { dim: 4 } } }\n'

CONV = '''
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.1 } } }'''


def test_in_place_layers_match_out_of_place(make_net):
    tail = '''
        layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "%s" }
        layer { name: "sc" type: "Scale" bottom: "%s" top: "%s" scale_param { bias_term: true } }
        layer { name: "relu" type: "ReLU" bottom: "%s" top: "%s" }
        layer { name: "drop" type: "Dropout" bottom: "%s" top: "%s" }
        layer { name: "pool" type: "Pooling" bottom: "%s" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
        layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" inner_product_param { num_output: 3
                weight_filler { type: "xavier" } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }'''
    inplace = make_net(INPUT + CONV + tail % (("conv",) * 8), phase=pb.TRAIN, seed=3)
    separate = make_net(INPUT + CONV + tail % ("bn", "bn", "sc", "sc", "relu", "relu", "drop", "drop"),
                        phase=pb.TRAIN, seed=3)
    x, lab = rand(4, 2, 5, 5), torch.tensor([0.0, 1.0, 2.0, 1.0], dtype=torch.float64)
    inplace(data=x, label=lab)
    separate(data=x, label=lab)
    torch.testing.assert_close(inplace.loss, separate.loss)
    inplace.loss.backward()
    separate.loss.backward()
    for name in ("conv", "sc", "ip"):
        for a, b in zip(inplace.layer(name).blobs(), separate.layer(name).blobs()):
            torch.testing.assert_close(a.grad, b.grad)
    # BatchNorm updated its statistics in the TRAIN forward, the same in both nets
    torch.testing.assert_close(inplace.layer("bn").mean, separate.layer("bn").mean)
    assert float(inplace.layer("bn").scale_factor) == 1.0
    assert inplace.blob_shapes["conv"] == (4, 3, 5, 5) and inplace.blob_shapes["pool"] == (4, 3, 2, 2)


def test_slice_split_concat_graph(make_net):
    net = make_net('''
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 6 dim: 3 } } }
        layer { name: "slice" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { slice_point: 2 } }
        layer { name: "split" type: "Split" bottom: "b" top: "b1" top: "b2" }
        layer { name: "sig" type: "Sigmoid" bottom: "b1" top: "s" }
        layer { name: "abs" type: "AbsVal" bottom: "b2" top: "t" }
        layer { name: "cat" type: "Concat" bottom: "a" bottom: "s" bottom: "t" top: "y" }
        layer { name: "sum" type: "Reduction" bottom: "y" top: "total" loss_weight: 1 }''')
    assert net.blob_shapes["y"] == (2, 10, 3) and net.blob_shapes["total"] == ()
    x = rand(2, 6, 3).requires_grad_()
    out = net(x=x)
    a, b = x[:, :2], x[:, 2:]
    torch.testing.assert_close(out["total"], torch.cat([a, torch.sigmoid(b), b.abs()], 1).sum())
    net.loss.backward()
    sig = torch.sigmoid(b.detach())
    expect = torch.cat([torch.ones_like(a), sig * (1 - sig) + torch.sign(b.detach())], 1)
    torch.testing.assert_close(x.grad, expect)  # the two Split branches' diffs are summed


def test_loss_weight_on_a_non_loss_layer(make_net):
    net = make_net('''
        layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 3 dim: 4 } shape { dim: 3 dim: 2 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" loss_weight: 0.5
                inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
        layer { name: "sq" type: "Power" bottom: "y" top: "z" power_param { power: 2 } }
        layer { name: "euc" type: "EuclideanLoss" bottom: "z" bottom: "t" top: "l2" loss_weight: 2 }''')
    assert net.loss_weights == {"y": 0.5, "l2": 2.0}
    x, t = rand(3, 4), rand(3, 2, seed=1)
    net(x=x, t=t)
    ip = net.layer("ip")
    y = x @ ip.weight.detach().t() + ip.bias.detach()
    expect = 0.5 * y.sum() + 2 * ((y * y - t) ** 2).sum() / 3 / 2
    torch.testing.assert_close(net.loss, expect)
    net.loss.backward()
    dy = 0.5 + 2 * (y * y - t) / 3 * 2 * y
    torch.testing.assert_close(ip.weight.grad, dy.t() @ x)


def test_propagate_down_false(make_net):
    net = make_net('''
        layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 3 dim: 4 } shape { dim: 3 } } }
        layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h" inner_product_param { num_output: 4
                weight_filler { type: "gaussian" } } }
        layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "s" propagate_down: false
                inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
        layer { name: "prod" type: "Eltwise" bottom: "h" bottom: "h" top: "hh" propagate_down: true propagate_down: false
                eltwise_param { operation: PROD } }
        layer { name: "red" type: "Reduction" bottom: "hh" top: "r" loss_weight: 1 }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss" propagate_down: true propagate_down: false }''')
    x, lab = rand(3, 4), torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64)
    net(x=x, label=lab)
    net.loss.backward()
    assert net.layer("ip2").weight.grad is not None and net.layer("ip2").weight.grad.abs().sum() > 0
    h = net.blobs["h"].detach()
    # only the Eltwise's first bottom passes a gradient: d(h * h_const)/dh = h
    torch.testing.assert_close(net.layer("ip1").bias.grad, h.sum(0))
    torch.testing.assert_close(net.layer("ip1").weight.grad, h.t() @ x)
    with pytest.raises(NetDefinitionError, match="propagate_down must be given once per bottom"):
        make_net('''
            layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 } } }
            layer { name: "r" type: "ReLU" bottom: "x" top: "y" propagate_down: false propagate_down: false }''')


def test_train_and_test_nets_share_batchnorm_statistics(make_net):
    text = INPUT + CONV + '''
        layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { moving_average_fraction: 0.5 } }
        layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" dropout_param { dropout_ratio: 0.5 } }'''
    train = make_net(text, phase=pb.TRAIN, seed=2)
    test = make_net(text, phase=pb.TEST, seed=2)
    test.share_weights_with(train)
    x = rand(4, 2, 5, 5)
    for _ in range(3):
        train(data=x)
    bn = train.layer("bn")
    assert float(bn.scale_factor) == pytest.approx(1.75)  # 1, 1.5, 1.75
    conv = F.conv2d(x, train.layer("conv").weight, train.layer("conv").bias, padding=1).detach()
    mean = conv.mean(dim=(0, 2, 3))
    var = conv.var(dim=(0, 2, 3), unbiased=False) * conv[:, 0].numel() / (conv[:, 0].numel() - 1)
    out = test(data=x)["conv"]
    # the TEST net uses stored statistics (blob / scale_factor): the same batch three times
    ref = (conv - mean.reshape(1, 3, 1, 1)) / torch.sqrt(var.reshape(1, 3, 1, 1) + 1e-5)
    torch.testing.assert_close(out, ref)  # and Dropout is the identity in TEST
    assert test.layer("bn").mean is bn.mean


def test_net_rng_state_snapshot_hook(make_net):
    text = '''
        layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 2 dim: 1 dim: 4 dim: 4 }
                data_filler { type: "uniform" min: 0 max: 1 } } }
        layer { name: "drop" type: "Dropout" bottom: "x" top: "y" }
        layer { name: "pool" type: "Pooling" bottom: "y" top: "z" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 } }'''
    net = make_net(text, phase=pb.TRAIN, seed=42)
    assert list(net.rng_state()) == ["d", "drop", "pool"]
    net()
    snap = net.rng_state()
    first = net()["z"].clone()
    second = net()["z"].clone()
    resumed = make_net(text, phase=pb.TRAIN, seed=42)
    resumed.set_rng_state(snap)
    torch.testing.assert_close(resumed()["z"], first)
    torch.testing.assert_close(resumed()["z"], second)
    fresh = make_net(text, phase=pb.TRAIN, seed=42)
    fresh()
    torch.testing.assert_close(fresh()["z"], first)  # the same seed replays the same draws


def test_param_sharing_between_scale_layers(make_net):
    net = make_net('''
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "s1" type: "Scale" bottom: "x" top: "y1" param { name: "g" } scale_param { filler { type: "gaussian" } } }
        layer { name: "s2" type: "Scale" bottom: "x" top: "y2" param { name: "g" } }
        layer { name: "e" type: "Eltwise" bottom: "y1" bottom: "y2" top: "y" eltwise_param { operation: SUM coeff: 1 coeff: -1 } }''')
    assert net.layer("s1").weight is net.layer("s2").weight
    assert torch.all(net(x=rand(2, 3))["y"] == 0)


def test_rng_state_travels_in_the_solver_snapshot_state(make_net):
    text = '''
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 8 } } }
        layer { name: "drop" type: "Dropout" bottom: "x" top: "y" }'''
    net = make_net(text, phase=pb.TRAIN, seed=5)
    x = torch.ones(3, 8, dtype=torch.float64)
    net(x=x)
    state = net.extra_state()  # what the solver writes beside its .solverstate
    assert set(state["drop"]) == {"rng"} and state["drop"]["rng"].dtype == torch.uint8
    nxt = net(x=x)["y"].clone()
    resumed = make_net(text, phase=pb.TRAIN, seed=5)
    resumed.load_extra_state(state)
    torch.testing.assert_close(resumed(x=x)["y"], nxt)
    resumed.load_extra_state(None)  # a snapshot written by Caffe has no such state: no error
