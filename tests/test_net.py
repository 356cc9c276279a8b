"""Net construction, Caffe's graph rules, weight loading and saving."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netcompress import io as ncio
from netcompress.errors import NetDefinitionError, WeightLoadError
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb

REPO = Path(__file__).resolve().parents[1]


def netp(text: str) -> pb.NetParameter:
    return text_format.Parse(text, pb.NetParameter())


MLP = """
name: "mlp"
layer { name: "in" type: "Input" top: "x" top: "y"
        input_param { shape { dim: 4 dim: 3 dim: 2 dim: 2 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "z"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "acc" type: "Accuracy" bottom: "z" bottom: "y" top: "acc" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "z" bottom: "y" top: "loss" }
"""


def test_phase_filtering_and_outputs(caplog):
    with caplog.at_level(logging.INFO, logger="netcompress"):
        train = Net(netp(MLP), phase="train", seed=1)
    assert train.layer_names == ["in", "ip1", "relu", "ip2", "loss"]
    assert "The NetState phase (0) differed from the phase (1) specified by a rule in layer acc" in caplog.text
    assert "relu -> h (in-place)" in caplog.text
    assert "Top shape: 4 5 (20)" in caplog.text and "Top shape: (1)" in caplog.text
    assert "    with loss weight 1" in caplog.text
    assert train.output_names == ["loss"]
    test = Net(netp(MLP), phase="test", seed=1)
    assert test.output_names == ["acc", "loss"]  # sorted, as Caffe's std::set
    assert test.blob_shapes["h"] == (4, 5)


def test_stage_and_level_rules():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
    layer { name: "a" type: "ReLU" bottom: "x" top: "a" include { stage: "deploy" } }
    layer { name: "b" type: "ReLU" bottom: "x" top: "b" exclude { stage: "deploy" } }
    layer { name: "c" type: "ReLU" bottom: "x" top: "c" include { min_level: 2 } }
    layer { name: "d" type: "ReLU" bottom: "x" top: "d" include { max_level: 0 not_stage: "x" } }
    """
    assert Net(netp(text), stages=["deploy"], level=0).layer_names == ["in", "a", "d"]
    assert Net(netp(text), level=3).layer_names == ["in", "b", "c"]
    assert Net(netp(text), stages=["x"]).layer_names == ["in", "b"]


def test_include_and_exclude_together_is_error():
    text = 'layer { name: "a" type: "Input" top: "x" include { phase: TEST } exclude { phase: TRAIN } }'
    with pytest.raises(NetDefinitionError, match="both include and exclude"):
        Net(netp(text))


def test_unknown_type_lists_known_types():
    with pytest.raises(NetDefinitionError) as ei:
        Net(netp('layer { name: "a" type: "Convolutio" top: "x" }'))
    assert "Unknown layer type: 'Convolutio'" in str(ei.value) and "Convolution" in str(ei.value)


def test_missing_bottom_names_layer_and_blob():
    text = """layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }
              layer { name: "r" type: "ReLU" bottom: "y" top: "z" }"""
    with pytest.raises(NetDefinitionError, match=r"Unknown bottom blob 'y' \(layer 'r', bottom index 0\)"):
        Net(netp(text))


def test_top_from_two_sources():
    text = """layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }
              layer { name: "r" type: "ReLU" bottom: "x" top: "x" }
              layer { name: "s" type: "ReLU" bottom: "x" top: "y" }
              layer { name: "t" type: "ReLU" bottom: "y" top: "x" }"""
    with pytest.raises(NetDefinitionError, match="Top blob 'x' produced by multiple sources"):
        Net(netp(text))


def test_wrong_blob_counts():
    text = """layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }
              layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" top: "l" }"""
    with pytest.raises(NetDefinitionError, match="takes 2 bottom blob"):
        Net(netp(text))


def test_loss_layer_without_top_gets_an_automatic_one(caplog):
    """Caffe's AutoTopBlobs: the loss still counts, is logged as (automatic), and is no output."""
    text = MLP.replace('bottom: "z" bottom: "y" top: "loss" }', 'bottom: "z" bottom: "y" }')
    with caplog.at_level(logging.INFO, logger="netcompress"):
        net = Net(netp(text), phase="train", seed=3)
    assert "loss -> (automatic)" in caplog.text
    assert net.output_names == []
    named = Net(netp(MLP), phase="train", seed=3)
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0.0, 1.0, 2.0, 1.0])
    assert net(x=x, y=y) == {}
    named(x=x, y=y)
    torch.testing.assert_close(net.loss, named.loss)
    assert float(net.loss.detach()) > 0


def test_forward_backward_matches_manual_and_lr_mults():
    net = Net(netp(MLP), phase="train", seed=3)
    x = torch.randn(4, 3, 2, 2)
    y = torch.tensor([0.0, 1.0, 2.0, 1.0])
    out = net(x=x, y=y)
    w1, b1 = net.layer("ip1").weight, net.layer("ip1").bias
    w2, b2 = net.layer("ip2").weight, net.layer("ip2").bias
    z = torch.relu(x.reshape(4, -1) @ w1.T + b1) @ w2.T + b2
    ref = torch.nn.functional.cross_entropy(z, y.long())
    torch.testing.assert_close(out["loss"], ref)
    net.loss.backward()
    assert w1.grad is not None and w2.grad is not None
    entries = net.learnable_params()
    assert [(e.key, e.lr_mult, e.decay_mult) for e in entries] == [
        ("ip1[0]", 1, 1), ("ip1[1]", 2, 0), ("ip2[0]", 1, 1), ("ip2[1]", 1, 1)]
    assert torch.all(b1 == 0.1)


def test_loss_weight_on_any_layer_and_propagate_down():
    text = MLP.replace('layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }',
                       'layer { name: "relu" type: "ReLU" bottom: "h" top: "h2" loss_weight: 0.5 }'
                       ).replace('bottom: "h" top: "z"', 'bottom: "h2" top: "z" propagate_down: false')
    net = Net(netp(text), phase="train", seed=0)
    assert net.loss_weights == {"h2": 0.5, "loss": 1.0}
    x = torch.randn(4, 3, 2, 2)
    y = torch.tensor([0.0, 1.0, 2.0, 1.0])
    net(x=x, y=y)
    expected = 0.5 * net.blobs["h2"].sum() + net.blobs["loss"]
    torch.testing.assert_close(net.loss, expected)
    net.loss.backward()
    # ip1 receives gradient only through the loss weight on h2 (0.5 per positive unit).
    h_pos = (net.blobs["h2"] > 0).float()
    torch.testing.assert_close(net.layer("ip1").bias.grad, 0.5 * h_pos.sum(0))


def test_param_sharing():
    text = """
    layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "f1" type: "InnerProduct" bottom: "a" top: "fa" param { name: "w" lr_mult: 3 }
            inner_product_param { num_output: 4 bias_term: false weight_filler { type: "xavier" } } }
    layer { name: "f2" type: "InnerProduct" bottom: "b" top: "fb" param { name: "w" }
            inner_product_param { num_output: 4 bias_term: false weight_filler { type: "xavier" } } }
    """
    net = Net(netp(text), seed=0)
    assert net.layer("f1").weight is net.layer("f2").weight
    assert [(e.key, e.lr_mult) for e in net.learnable_params()] == [("f1[0]", 3)]
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    out = net(a=a, b=b)
    (out["fa"].sum() + out["fb"].sum()).backward()
    torch.testing.assert_close(net.layer("f1").weight.grad, (a + b).sum(0).expand(4, 3))
    bad = text.replace('param { name: "w" }', 'param { name: "w" lr_mult: 2 }')
    with pytest.raises(NetDefinitionError, match="mismatched lr_mult"):
        Net(netp(bad))
    bad_shape = text.replace("num_output: 4 bias_term: false weight_filler { type: \"xavier\" } } }\n    \"\"\"",
                             "")
    bad_shape = bad_shape.replace('top: "fb" param { name: "w" }\n            inner_product_param { num_output: 4',
                                  'top: "fb" param { name: "w" }\n            inner_product_param { num_output: 5')
    with pytest.raises(NetDefinitionError, match="cannot share param 'w'"):
        Net(netp(bad_shape))


def test_save_load_roundtrip_is_byte_identical(tmp_path):
    a = Net(netp(MLP), phase="train", seed=1)
    p1 = str(tmp_path / "a.caffemodel")
    a.save(p1)
    b = Net(netp(MLP), phase="train", seed=2)
    assert not torch.equal(a.layer("ip1").weight, b.layer("ip1").weight)
    b.copy_from(p1)
    torch.testing.assert_close(a.layer("ip1").weight, b.layer("ip1").weight, rtol=0, atol=0)
    p2 = str(tmp_path / "b.caffemodel")
    b.save(p2)
    assert open(p1, "rb").read() == open(p2, "rb").read()
    # The written layers carry their full definition and phase, as Caffe's ToProto does.
    m = ncio.read_caffemodel(p1)
    assert m.layer[1].phase == pb.TRAIN and m.layer[1].inner_product_param.num_output == 5
    assert list(ncio.blob_shape(m.layer[1].blobs[0])) == [5, 12]


def test_copy_from_errors_name_layer_and_shapes(tmp_path):
    net = Net(netp(MLP), phase="train", seed=1)
    model = net.to_proto()
    model.layer[1].blobs[0].shape.dim[0] = 6
    del model.layer[1].blobs[0].data[:]
    model.layer[1].blobs[0].data.extend([0.0] * 72)
    with pytest.raises(WeightLoadError, match=r"layer 'ip1'; shape mismatch. Source param shape is 6 12 \(72\); "
                                              r"target param shape is 5 12 \(60\)"):
        net.copy_from(model)
    model = net.to_proto()
    model.layer[1].blobs.add().CopyFrom(model.layer[1].blobs[1])
    with pytest.raises(WeightLoadError, match="Incompatible number of blobs for layer 'ip1': the model has 3, "
                                              "the net's InnerProduct layer expects 2"):
        net.copy_from(model)


def test_copy_from_ignores_unknown_layers_and_accepts_legacy_shape(caplog):
    net = Net(netp(MLP), phase="train", seed=1)
    model = net.to_proto()
    extra = model.layer.add(name="ghost", type="InnerProduct")
    ncio.array_to_blob(np.zeros(3, np.float32), extra.blobs.add())
    w = np.arange(60, dtype=np.float32)
    legacy = model.layer[1].blobs[0]
    legacy.Clear()
    legacy.num, legacy.channels, legacy.height, legacy.width = 1, 1, 5, 12
    legacy.data.extend(w.tolist())
    with caplog.at_level(logging.INFO, logger="netcompress"):
        net.copy_from(model)
    assert "Ignoring source layer ghost" in caplog.text
    np.testing.assert_array_equal(net.layer("ip1").weight.detach().numpy().ravel(), w)


def test_share_weights_with_test_net():
    train = Net(netp(MLP), phase="train", seed=1)
    test = Net(netp(MLP), phase="test", seed=2)
    test.share_weights_with(train)
    assert test.layer("ip1").weight is train.layer("ip1").weight
    with torch.no_grad():
        train.layer("ip2").bias.add_(1.0)
    torch.testing.assert_close(test.layer("ip2").bias, train.layer("ip2").bias)


def test_layer_names_with_dots_and_slashes():
    text = """layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
              layer { name: "inception_3a/relu.1" type: "ReLU" bottom: "x" top: "y" }"""
    net = Net(netp(text))
    assert net.layer_names[1] == "inception_3a/relu.1"
    assert net.layer("inception_3a/relu.1").name == "inception_3a/relu.1"


def test_force_backward_gives_input_gradients():
    net = Net(netp("force_backward: true\n" + MLP), phase="train", seed=1)
    net.set_input(x=torch.randn(4, 3, 2, 2), y=torch.tensor([0.0, 1.0, 2.0, 1.0]))
    net()
    net.loss.backward()
    assert net.blobs["x"].grad is not None and net.blobs["x"].grad.abs().sum() > 0
    plain = Net(netp(MLP), phase="train", seed=1)
    plain.set_input(x=torch.randn(4, 3, 2, 2), y=torch.tensor([0.0, 1.0, 2.0, 1.0]))
    plain()
    assert not plain.blobs["x"].requires_grad


def test_python_api_misuse_is_named(tmp_path):
    """The Python API's mistakes as errors that say what was expected (found by a by-hand fuzz of Net and Solver
    calls): before, an AttributeError deep in the upgrade code, a KeyError, torch's device errors, a shape error
    from inside a layer, an IndexError, or a step of 2**31 iterations that ran for ever."""
    from netcompress.solvers import Solver

    lenet = str(REPO / "examples" / "mnist" / "lenet.prototxt")
    with pytest.raises(TypeError, match="Net takes a prototxt path or a NetParameter, got list"):
        Net(["lenet.prototxt"])
    with pytest.raises(ValueError, match="phase must be 'train' or 'test'"):
        Net(lenet, phase="deploy")
    with pytest.raises(ValueError, match="phase must be 'train' or 'test'"):
        Net(lenet, phase=np.array([0, 1]))
    with pytest.raises(ValueError, match="device '/tmp' is not a device"):
        Net(lenet, device="/tmp", verbose=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda:0': 0 CUDA device\(s\) available"):
            Net(lenet, device="cuda:0", verbose=False)
    with pytest.raises(TypeError, match="options must be a mapping"):
        Net(lenet, options="fast", verbose=False)
    net = Net(lenet, verbose=False)
    with pytest.raises(TypeError, match="copy_from takes a caffemodel path or a NetParameter, got int"):
        net.copy_from(3)
    assert net(data=torch.zeros(2, 1, 28, 28))["prob"].shape == (2, 10)  # another batch size: fine
    with pytest.raises(ValueError, match=r"net 'LeNet': layer 'conv1' \(Convolution\) cannot run on the inputs "
                                         r"given \(data \[2, 3, 28, 28\]\)"):
        net(data=torch.zeros(2, 3, 28, 28))
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }'
        ' layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 2 } }'
        ' layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "y" top: "loss" }')
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.01 lr_policy: "fixed" '
                                              f'test_iter: 1 test_interval: 1000 snapshot_prefix: "{tmp_path}/s"')
    with pytest.raises(TypeError, match="Solver takes a solver prototxt path or a SolverParameter, got int"):
        Solver(3)
    solver = Solver(str(tmp_path / "solver.prototxt"), verbose=False)
    with pytest.raises(ValueError, match=r"Solver.step\(2147483648\) from iteration 0 passes Caffe's int"):
        solver.step(2**31)
    with pytest.raises(TypeError, match="Solver.step takes a number of iterations, got 1.5"):
        solver.step(1.5)
    with pytest.raises(IndexError, match="test net 1: the solver has 1 test net"):
        solver.test(1)
