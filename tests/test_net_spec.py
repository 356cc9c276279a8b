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


def _fcn_vgg(n, data):
    """FCN's VGG-16 trunk (voc-fcn*/net.py): conv1_1 padded by 100, 3x3 convolutions, 2x2 max poolings, fc6 as a
    7x7 convolution and fc7 as a 1x1 one."""
    def conv_relu(bottom, nout, ks=3, pad=1):
        conv = L.Convolution(bottom, kernel_size=ks, num_output=nout, pad=pad)
        return conv, L.ReLU(conv, in_place=True)

    def max_pool(bottom):
        return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=2, stride=2)

    n.conv1_1, n.relu1_1 = conv_relu(data, 64, pad=100)
    n.conv1_2, n.relu1_2 = conv_relu(n.relu1_1, 64)
    n.pool1 = max_pool(n.relu1_2)
    n.conv2_1, n.relu2_1 = conv_relu(n.pool1, 128)
    n.conv2_2, n.relu2_2 = conv_relu(n.relu2_1, 128)
    n.pool2 = max_pool(n.relu2_2)
    n.conv3_1, n.relu3_1 = conv_relu(n.pool2, 256)
    n.conv3_2, n.relu3_2 = conv_relu(n.relu3_1, 256)
    n.conv3_3, n.relu3_3 = conv_relu(n.relu3_2, 256)
    n.pool3 = max_pool(n.relu3_3)
    n.conv4_1, n.relu4_1 = conv_relu(n.pool3, 512)
    n.conv4_2, n.relu4_2 = conv_relu(n.relu4_1, 512)
    n.conv4_3, n.relu4_3 = conv_relu(n.relu4_2, 512)
    n.pool4 = max_pool(n.relu4_3)
    n.conv5_1, n.relu5_1 = conv_relu(n.pool4, 512)
    n.conv5_2, n.relu5_2 = conv_relu(n.relu5_1, 512)
    n.conv5_3, n.relu5_3 = conv_relu(n.relu5_2, 512)
    n.pool5 = max_pool(n.relu5_3)
    n.fc6, n.relu6 = conv_relu(n.pool5, 4096, ks=7, pad=0)
    n.fc7, n.relu7 = conv_relu(n.relu6, 4096, ks=1, pad=0)
    return n


def test_coord_map_crops_fcn_as_its_prototxts_do():
    """caffe.coord_map.crop on FCN's nets gives the offsets of FCN's published prototxts: 19 for FCN-32s's score;
    5 and 27 for FCN-16s's score_pool4c and score; 5, 9 and 31 for FCN-8s's."""
    from netcompress.pycaffe.coord_map import coord_map_from_to, crop

    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 500, 500]))
    _fcn_vgg(n, n.data)
    n.score_fr = L.Convolution(n.relu7, num_output=21, kernel_size=1, pad=0)
    n.upscore = L.Deconvolution(n.score_fr, convolution_param=dict(num_output=21, kernel_size=64, stride=32,
                                                                   bias_term=False))
    n.score = crop(n.upscore, n.data)
    proto = n.to_proto()
    score = proto.layer[-1]
    assert (score.type, list(score.bottom), score.crop_param.axis, list(score.crop_param.offset)) == \
        ("Crop", ["upscore", "data"], 2, [19])
    # FCN-8s: the fused skips
    n.upscore2 = L.Deconvolution(n.score_fr, convolution_param=dict(num_output=21, kernel_size=4, stride=2,
                                                                    bias_term=False))
    n.score_pool4 = L.Convolution(n.pool4, num_output=21, kernel_size=1, pad=0)
    n.score_pool4c = crop(n.score_pool4, n.upscore2)
    n.fuse_pool4 = L.Eltwise(n.upscore2, n.score_pool4c, operation=P.Eltwise.SUM)
    n.upscore_pool4 = L.Deconvolution(n.fuse_pool4, convolution_param=dict(num_output=21, kernel_size=4,
                                                                           stride=2, bias_term=False))
    n.score_pool3 = L.Convolution(n.pool3, num_output=21, kernel_size=1, pad=0)
    n.score_pool3c = crop(n.score_pool3, n.upscore_pool4)
    n.fuse_pool3 = L.Eltwise(n.upscore_pool4, n.score_pool3c, operation=P.Eltwise.SUM)
    n.upscore8 = L.Deconvolution(n.fuse_pool3, convolution_param=dict(num_output=21, kernel_size=16, stride=8,
                                                                      bias_term=False))
    n.score8 = crop(n.upscore8, n.data)
    offsets = {lp.name: list(lp.crop_param.offset) for lp in n.to_proto().layer if lp.type == "Crop"}
    assert offsets == {"score": [19], "score_pool4c": [5], "score_pool3c": [9], "score8": [31]}
    # FCN-16s's score: 2x then 16x from the pool4 fusion
    n.upscore16 = L.Deconvolution(n.fuse_pool4, convolution_param=dict(num_output=21, kernel_size=32, stride=16,
                                                                       bias_term=False))
    assert list(crop(n.upscore16, n.data).fn.params["crop_param"]["offset"]) == [27]
    ax, a, b = coord_map_from_to(n.upscore, n.data)
    assert (ax, float(a[0]), float(b[0])) == (1, 1.0, -19.0)
    with pytest.raises(ValueError, match="scale mismatch on crop"):
        crop(n.score_fr, n.data)
    with pytest.raises(RuntimeError, match="Could not compute map between tops"):
        crop(n.score_fr, L.Input(shape=dict(dim=[1, 3, 8, 8])))


def test_a_small_fcn_crop_builds_and_aligns_with_its_input(tmp_path):
    """A small net of FCN's shape: the Crop that coord_map writes gives the input's spatial size when run."""
    from netcompress.pycaffe.coord_map import crop

    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 23, 23]))
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=4, pad=10, weight_filler=dict(type="xavier"))
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.score = L.Convolution(n.pool, kernel_size=1, num_output=3, weight_filler=dict(type="xavier"))
    n.up = L.Deconvolution(n.score, convolution_param=dict(num_output=3, kernel_size=4, stride=2, bias_term=False,
                                                           weight_filler=dict(type="bilinear")))
    n.out = crop(n.up, n.data)
    (tmp_path / "fcn.prototxt").write_text(str(n.to_proto()))
    net = caffe.Net(str(tmp_path / "fcn.prototxt"), caffe.TEST)
    net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((1, 2, 23, 23))
    assert net.forward()["out"].shape == (1, 3, 23, 23)
    # the 3x3 convolution's padding shifts by 10 - 1 = 9, the 2x2 pooling and the 4x4 deconvolution by 1 more
    assert list(n.to_proto().layer[-1].crop_param.offset) == [10]
