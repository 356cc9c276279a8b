"""pycaffe's net_spec (`caffe.NetSpec`, `caffe.layers`, `caffe.params`, `caffe.to_proto`): the prototxt it writes,
its naming rules, and that the net it writes runs."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

import netcompress.pycaffe as caffe
from netcompress.pycaffe import layers as L, params as P
from netcompress.proto import caffe_pb2 as pb


def lenet(lmdb: str, batch_size: int) -> pb.NetParameter:
    """The LeNet of pycaffe's "learning LeNet" tutorial, as it is written there."""
    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n.to_proto()


LENET_TEXT = """
layer { name: "data" type: "Data" top: "data" top: "label" transform_param { scale: 0.00392156862745098 }
        data_param { source: "@SRC@" batch_size: 64 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 50 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool2" top: "fc1"
        inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "score" type: "InnerProduct" bottom: "fc1" top: "score"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""


def test_the_tutorial_lenet_is_the_prototxt_it_means(tmp_path, lmdb_writer):
    lmdb = tmp_path / "train_lmdb"
    rng = np.random.RandomState(0)
    lmdb_writer(lmdb, rng.randint(0, 256, (70, 1, 28, 28)).astype(np.uint8), rng.randint(0, 10, 70))
    got = lenet(str(lmdb), 64)
    want = text_format.Parse(LENET_TEXT.replace("@SRC@", str(lmdb)), pb.NetParameter())
    assert text_format.MessageToString(got) == text_format.MessageToString(want)
    # the written prototxt trains in a solver, as the tutorial does next
    (tmp_path / "lenet.prototxt").write_text(str(got))
    (tmp_path / "solver.prototxt").write_text(
        f'train_net: "{tmp_path / "lenet.prototxt"}" base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" '
        f'max_iter: 2 display: 0 snapshot_prefix: "{tmp_path / "lenet"}" random_seed: 1')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    solver.step(2)
    assert solver.net.blobs["score"].data.shape == (64, 10)
    assert np.isfinite(float(solver.net.blobs["loss"].data))


def test_automatic_names_top_lists_and_enum_constants():
    data = L.Input(shape=dict(dim=[2, 3, 8, 8]))
    conv = L.Convolution(data, num_output=4, kernel_size=3, param=[dict(lr_mult=1), dict(lr_mult=2)])
    a, b = L.Slice(conv, slice_point=2, ntop=2)
    net = caffe.to_proto(L.Eltwise(L.ReLU(a, in_place=True), b, operation=P.Eltwise.SUM))
    assert [(lp.name, lp.type, list(lp.bottom), list(lp.top)) for lp in net.layer] == [
        ("Input1", "Input", [], ["Input1"]),
        ("Convolution1", "Convolution", ["Input1"], ["Convolution1"]),
        ("Slice1", "Slice", ["Convolution1"], ["Slice1", "Slice2"]),
        ("ReLU1", "ReLU", ["Slice1"], ["Slice1"]),  # in place: its top is its bottom, its name its own
        ("Eltwise1", "Eltwise", ["Slice1", "Slice2"], ["Eltwise1"]),
    ]
    conv_lp = net.layer[1]
    assert [p.lr_mult for p in conv_lp.param] == [1, 2]  # `param` ends in "param": a LayerParameter field
    assert conv_lp.convolution_param.kernel_size == [3]  # a lone value of a repeated field
    assert net.layer[0].input_param.shape[0].dim == [2, 3, 8, 8]
    assert net.layer[2].slice_param.slice_point == [2]
    assert net.layer[4].eltwise_param.operation == pb.EltwiseParameter.SUM == P.Eltwise.SUM
    assert P.Pooling.AVE == pb.PoolingParameter.AVE


def test_layer_fields_fall_back_to_the_layer_parameter_and_ntop_0():
    n = caffe.NetSpec()
    n.x, n.y = L.DummyData(shape=[dict(dim=[4, 5]), dict(dim=[4])], ntop=2, include=dict(phase=caffe.TRAIN))
    n.ip = L.InnerProduct(n.x, num_output=3, loss_weight=0.5, propagate_down=[True])
    n.silence = L.Silence(n.y, ntop=0)  # a layer without tops, named by its attribute
    net = n.to_proto()
    assert [lp.name for lp in net.layer] == ["x", "ip", "silence"]
    assert net.layer[0].include[0].phase == caffe.TRAIN  # no DummyDataParameter.include: on the layer
    assert list(net.layer[1].loss_weight) == [0.5] and list(net.layer[1].propagate_down) == [True]
    assert len(net.layer[2].top) == 0
    with pytest.raises(TypeError, match="InnerProduct input 0 is not a Top"):
        L.InnerProduct("x", num_output=1)
    with pytest.raises(AttributeError, match="no top named 'nothing'"):
        n.nothing


def test_deep_nets_do_not_overflow_the_stack():
    top = L.Input(shape=dict(dim=[1, 2]))
    for _ in range(3000):
        top = L.ReLU(top)
    net = caffe.to_proto(top)
    assert len(net.layer) == 3001 and net.layer[-1].name == "ReLU3000"
    assert list(net.layer[-1].bottom) == ["ReLU2999"]


def test_python_layers_see_caffe_net_spec(tmp_path, monkeypatch):
    import sys

    for name in ("caffe", "caffe.io", "caffe.proto", "caffe.proto.caffe_pb2", "caffe.net_spec"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert caffe.install_as_caffe()
    from caffe import net_spec  # what a Caffe script may import
    import caffe as c

    assert c.layers is L and c.NetSpec is caffe.NetSpec and net_spec.to_proto is caffe.to_proto
