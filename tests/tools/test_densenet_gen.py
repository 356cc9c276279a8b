"""`make_densenet` (recipes-spec 4.2, 4.9, 5.9): the MicroNet DenseNet-BC prototxts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netcompress import io as ncio
from netcompress.layers import known_layer_types
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.commands import load_command
from netcompress.tools.densenet import (DataSpec, DenseNetConfig, DenseNetError, densenet_net,
                                        densenet_summary, main)
from netcompress.tools.micronet import deploy_layers

MNIST = DenseNetConfig(depth=10, growth=4, num_classes=10, input_shape=(1, 28, 28))


def types(net: pb.NetParameter) -> dict[str, int]:
    out: dict[str, int] = {}
    for l in net.layer:
        out[l.type] = out.get(l.type, 0) + 1
    return out


def layer(net: pb.NetParameter, name: str) -> pb.LayerParameter:
    return next(l for l in net.layer if l.name == name)


def needs_types(*names: str):
    missing = [n for n in names if n not in known_layer_types()]
    return pytest.mark.skipif(bool(missing), reason=f"layer types {', '.join(missing)} are not registered "
                                                    "yet (the quantization layers are built on another branch)")


# -- architecture -----------------------------------------------------------------------------

def test_released_student_shapes():
    s = densenet_summary(DenseNetConfig(depth=100, growth=12, num_classes=100))
    assert s["stages"] == [(24, 216, 108, 32, 32), (108, 300, 150, 16, 16), (150, 342, None, 8, 8)]
    assert s["final"] == (342, 8, 8)
    # section 4.9: 741,744 convolution weights and a 100 x 342 FC in the released model
    assert s["conv_weights"] == 741_744 and s["fc_weights"] == 34_200


def test_teacher_shapes():
    s = densenet_summary(DenseNetConfig(depth=172, growth=30, num_classes=100))
    n = (172 - 4) // 6
    assert n == 28
    c1 = 60 + n * 30
    c2 = c1 // 2 + n * 30
    c3 = c2 // 2 + n * 30
    assert [st[:3] for st in s["stages"]] == [(60, c1, c1 // 2), (c1 // 2, c2, c2 // 2), (c2 // 2, c3, None)]


def test_plain_net_builds_and_matches_the_released_counts():
    net = Net(densenet_net(DenseNetConfig(100, 12, num_classes=100), "plain"), verbose=False)
    conv = sum(l.weight.numel() for n, l in net.layers.items() if l.type_name == "Convolution")
    assert conv == 741_744
    assert net.layer("fc").weight.shape == (100, 342) and net.layer("fc").bias.shape == (100,)
    assert net.blob_shapes["fc"] == (1, 100) and net.blob_shapes["avgpool"] == (1, 342, 1, 1)


def test_small_mnist_net_runs_and_shape_inference_agrees():
    param = densenet_net(MNIST, "plain")
    net = Net(param, seed=1, verbose=False)
    out = net(data=torch.rand(1, 1, 28, 28))
    assert out["fc"].shape == (1, 10) and torch.isfinite(out["fc"]).all()
    assert net.blob_shapes["trans2"] == (1, 5, 7, 7)  # 28 -> 14 -> 7: the head pools 7x7
    assert layer(param, "avgpool").pooling_param.kernel_size == 7
    # micronet_score's shape inference (which cannot run IntQuant) against the built net
    import tempfile, os
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "n.prototxt")
        ncio.write_text_proto(path, param)
        _, layers = deploy_layers(path)
    for dl in layers:
        for t, s in zip(dl.param.top, dl.tops):
            assert net.blob_shapes[t] == s, t


def test_initialisation_follows_the_source():
    param = densenet_net(DenseNetConfig(100, 12, num_classes=100), "plain")
    f = layer(param, "dense2.3_conv2").convolution_param.weight_filler
    assert (f.type, f.variance_norm) == ("msra", pb.FillerParameter.FAN_OUT)  # N(0, 2/(k k out))
    fc = layer(param, "fc").inner_product_param
    b = 1 / math.sqrt(342)  # nn.Linear's default U(-1/sqrt(in), 1/sqrt(in))
    for filler in (fc.weight_filler, fc.bias_filler):
        assert filler.type == "uniform" and filler.min == pytest.approx(-b) and filler.max == pytest.approx(b)
    bn = layer(param, "dense1.0_bn1").batch_norm_param
    assert bn.eps == pytest.approx(1e-5) and bn.moving_average_fraction == pytest.approx(0.9)
    assert layer(param, "dense1.0_bn1_scale").scale_param.bias_term
    assert all(not l.convolution_param.bias_term for l in param.layer if l.type == "Convolution")


# -- the quantized student -----------------------------------------------------------------

FRAGMENT_5_9 = """
layer { name: "dense1.0_act1" type: "ActQuant" bottom: "dense1.0_relu1" top: "dense1.0_q1"
        act_quant_param { bitwidth: 4 calibrate: FIRST_TRAIN_BATCH } }
layer { name: "dense1.0_conv1" type: "QuantConvolution" bottom: "dense1.0_q1" top: "dense1.0_c1"
        convolution_param { num_output: 48 kernel_size: 1 bias_term: false }
        weight_quant_param { bitwidth: 4 als_iters: 100 refit: EPOCH_START } }
"""


def test_student_layers_are_section_5_9s_fragment():
    param = densenet_net(DenseNetConfig(100, 12, num_classes=100), "student")
    want = text_format.Parse(FRAGMENT_5_9, pb.NetParameter())
    act, conv = pb.LayerParameter(), pb.LayerParameter()
    act.CopyFrom(layer(param, "dense1.0_act1"))
    conv.CopyFrom(layer(param, "dense1.0_conv1"))
    conv.convolution_param.ClearField("weight_filler")
    assert act == want.layer[0]
    assert conv == want.layer[1]


def test_student_quantizes_every_conv_input_but_the_first():
    param = densenet_net(DenseNetConfig(100, 12, num_classes=100), "student")
    t = types(param)
    assert t["QuantConvolution"] == 99 and "Convolution" not in t
    assert t["ActQuant"] == 98 and t["InnerProduct"] == 1  # the FC input is not quantized
    producers = {top: l for l in param.layer for top in l.top}
    for l in param.layer:
        if l.type == "QuantConvolution":
            assert l.weight_quant_param.bitwidth == 4
            src = producers[l.bottom[0]]
            assert (src.type == "Input") == (l.name == "conv1")
            assert src.type in ("Input", "ActQuant")
    fc = densenet_net(DenseNetConfig(100, 12, num_classes=100), "student", fc_type="QuantInnerProduct")
    assert layer(fc, "fc").type == "QuantInnerProduct" and layer(fc, "fc").weight_quant_param.bitwidth == 6


def test_student_variants_of_the_other_steps():
    pruning = densenet_net(MNIST, "plain", conv_type="MaskedConvolution")
    assert types(pruning)["MaskedConvolution"] == 9 and "ActQuant" not in types(pruning)
    mf = layer(pruning, "dense1.0_conv2").dns_convolution_param.weight_mask_filler
    assert (mf.type, mf.value) == ("constant", 1)  # pruning starts from dense masks
    fc = layer(densenet_net(MNIST, "plain", fc_type="MaskedInnerProduct"), "fc").dns_inner_product_param
    assert fc.weight_mask_filler.value == 1 and fc.bias_mask_filler.value == 1
    step4 = densenet_net(MNIST, "student", conv_type="MaskedConvolution")
    assert types(step4)["ActQuant"] == 8
    no_act = densenet_net(MNIST, "student", act_quant=False, act_bits=3)
    assert "ActQuant" not in types(no_act)


@needs_types("ActQuant", "QuantConvolution")
def test_student_builds_and_runs():
    net = Net(densenet_net(MNIST, "student"), phase=pb.TEST, seed=2, verbose=False)
    assert net(data=torch.rand(1, 1, 28, 28))["fc"].shape == (1, 10)


# -- the integer deploy net ----------------------------------------------------------------

def test_deploy_is_densenet_final():
    param = densenet_net(DenseNetConfig(100, 12, num_classes=100), "deploy")
    t = types(param)
    assert t == {"Input": 1, "Convolution": 99, "Scale": 151, "IntQuant": 98, "Concat": 48, "Pooling": 3,
                 "ReLU": 1, "InnerProduct": 1}
    names = [l.name for l in param.layer]
    assert names[:4] == ["data", "conv1", "scale1", "dense1.0_scale1"]  # fp32 input, no IntQuant first
    assert names[-5:] == ["scale2", "relu", "avgpool", "fc", "scale3"]
    assert [layer(param, n).type for n in ("trans1_scale1", "trans1_quant1", "trans1_conv1", "trans1_pool",
                                           "trans1_scale2")] == ["Scale", "IntQuant", "Convolution",
                                                                  "Pooling", "Scale"]
    q = layer(param, "dense3.15_quant2").int_quant_param
    assert (q.low, q.high) == (0, 15)
    assert not layer(param, "fc").inner_product_param.bias_term
    assert all(l.scale_param.bias_term for l in param.layer if l.type == "Scale")
    pool = layer(param, "avgpool").pooling_param
    assert pool.pool == pb.PoolingParameter.AVE and pool.kernel_size == 8 and not pool.HasField("kernel_h")
    # no fillers: the weights come from import_pth or micronet_merge
    assert not any(l.convolution_param.HasField("weight_filler") for l in param.layer)


@needs_types("IntQuant")
def test_deploy_builds_and_runs():
    net = Net(densenet_net(MNIST, "deploy"), phase=pb.TEST, verbose=False)
    assert net(data=torch.rand(1, 1, 28, 28))["fc"].shape == (1, 10)


# -- train_val nets with Data layers ---------------------------------------------------------

def lmdb(path, c, h, w, n=8, classes=10):
    from netcompress.data.db import LmdbWriter

    x = np.random.default_rng(0).integers(0, 256, (n, c, h, w), dtype=np.uint8)
    with LmdbWriter(str(path), map_size=1 << 22) as db:
        for i in range(n):
            d = pb.Datum(channels=c, height=h, width=w, data=x[i].tobytes(), label=i % classes)
            db.put(b"%08d" % i, d.SerializeToString())
    return str(path)


def test_mnist_train_val_trains_a_step(tmp_path):
    src = lmdb(tmp_path / "mnist_lmdb", 1, 28, 28)
    param = densenet_net(MNIST, "plain", data=DataSpec(src, src, batch_size=4, test_batch_size=4,
                                                      scale=0.00390625))
    train = Net(param, phase=pb.TRAIN, seed=3, verbose=False)
    loss = train()["loss"]
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    test = Net(param, phase=pb.TEST, seed=3, verbose=False)
    assert set(test()) >= {"loss", "accuracy"}
    assert layer(param, "data").transform_param.scale == pytest.approx(0.00390625)


def test_micronet_augmentation_in_the_train_val_net(tmp_path):
    src = lmdb(tmp_path / "cifar_lmdb", 3, 32, 32, classes=100)
    cfg = DenseNetConfig(depth=10, growth=4, num_classes=100)
    param = densenet_net(cfg, "plain", data=DataSpec(src, src, 4, 4, augment="micronet"))
    tr, te = [l for l in param.layer if l.type == "Data"]
    t = tr.transform_param
    assert t.mirror and t.cutout_size == 16 and t.pad_crop.pad == 4 and t.pad_crop.max_offset == 7
    assert t.autoaugment.policy == pb.AutoAugmentParameter.MICRONET_CIFAR100
    assert t.autoaugment.compose == pb.AutoAugmentParameter.LAST_ONLY and t.autoaugment.num_ops == 2
    assert list(t.mean_value) == pytest.approx([125.30692, 122.95039, 113.86538], abs=1e-4)
    assert list(t.std_value) == pytest.approx([62.99322, 62.08871, 66.70490], abs=1e-4)
    assert t.scale == pytest.approx(1 / 255)
    assert not te.transform_param.HasField("autoaugment") and not te.transform_param.mirror
    assert list(te.transform_param.std_value) == list(t.std_value)
    net = Net(param, phase=pb.TRAIN, seed=4, verbose=False)
    out = net()
    assert torch.isfinite(out["loss"])
    x = net.blobs["data"]
    # normalised pixels lie in [-2.0, 2.2]; the source's extra 1/255 scales them down again
    assert x.shape == (4, 3, 32, 32) and 0 < x.abs().max() < 2.2 / 255


# -- command line and errors -----------------------------------------------------------------

def test_command_writes_the_prototxt(tmp_path, capsys):
    out = tmp_path / "n.prototxt"
    assert load_command("make_densenet") is main
    assert main([str(out), "--form", "deploy", "--depth", "10", "--growth", "4", "--classes", "10",
                 "--input", "1,28,28"]) == 0
    text = capsys.readouterr().out
    assert "dense3: 5 -> 9 channels at 7x7" in text and f"Wrote {out}" in text
    assert ncio.read_net(str(out)) == densenet_net(MNIST, "deploy")


@pytest.mark.parametrize("args, match", [
    (["--depth", "99"], "depth must be 6n \\+ 4"),
    (["--train-source", "x"], "both --train-source and --test-source"),
    (["--form", "deploy", "--conv-type", "QuantConvolution"], "the deploy form has fixed layer types"),
    (["--input", "3,1,1"], "too small"),
    # 1-bit settings the layers refuse: the net written would not build
    (["--form", "student", "--act-bits", "1"], "act_bits must lie in 2..16"),
    (["--form", "student", "--weight-bits", "1"], "weight_bits must lie in 2..16"),
    (["--fc-type", "QuantInnerProduct", "--fc-bits", "1"], "fc_bits must lie in 2..16"),
    (["--form", "student", "--act-bits", "17"], "act_bits must lie in 2..16"),
    # (a hang writing 2e9 units, an unexpected protobuf range error, a net written with a NaN scale or batch 0)
    (["--depth", "4000000000"], "1,999,999,998 units, more than the 10,000 this generator writes"),
    (["--blocks", "100000"], "100000 blocks of n = 16 bottlenecks"),
    (["--growth", "2000000000"], r"block 1 would end with 36,000,000,000 channels \(bottlenecks of 8,000,000,000\)"),
    (["--classes", "4294967296"], "num_classes takes at most 2147483647"),
    (["--train-source", "a", "--test-source", "b", "--test-batch-size", "4294967296"],
     "test_batch_size takes at most 2147483647"),
    (["--train-source", "a", "--test-source", "b", "--batch-size", "0"], "batch_size must be at least 1, got 0"),
    (["--train-source", "a", "--test-source", "b", "--scale", "nan"], "scale must be a finite number, got nan"),
])
def test_command_errors(tmp_path, capsys, args, match):
    import re

    assert main([str(tmp_path / "n.prototxt"), *args]) == 1
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "n.prototxt").exists()


def test_bad_configs_raise():
    with pytest.raises(DenseNetError, match="form must be one of"):
        densenet_net(MNIST, "teacher")
    with pytest.raises(DenseNetError, match="augment 'micronet' normalises 3 colour channels"):
        densenet_net(MNIST, "plain", data=DataSpec("a", "b", augment="micronet"))
