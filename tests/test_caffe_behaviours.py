"""Caffe behaviours a blob-by-blob comparison with real Caffe found (issue 21, points 6, 9-12):
0-d parameter blobs, repeated layer names, force_backward over propagate_down, no gradient for
lr_mult 0 on a bare Net, and the warning (or --strict error) for layers a model did not fill."""
from __future__ import annotations

import logging
import re
import struct

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netcompress import io as ncio
from netcompress.errors import WeightLoadError
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.weights import copy_weights_list


def netp(text: str) -> pb.NetParameter:
    return text_format.Parse(text, pb.NetParameter())


def caffe_scalar_blob(value: float) -> pb.BlobProto:
    """A 0-d blob as Caffe's Blob::ToProto writes it: no shape (its loop over 0 axes never calls
    mutable_shape()), no legacy dims, one value."""
    b = pb.BlobProto()
    b.data.append(value)
    return b


# -- 9. 0-d parameter blobs ------------------------------------------------------------------

ZERO_D = """
name: "zero_d"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 2 dim: 2 } } }
layer { name: "prelu" type: "PReLU" bottom: "x" top: "p" prelu_param { channel_shared: true } }
layer { name: "scale" type: "Scale" bottom: "p" top: "s" scale_param { num_axes: 0 bias_term: true } }
layer { name: "bias" type: "Bias" bottom: "s" top: "b" bias_param { num_axes: 0 } }
"""


def test_zero_d_blob_bytes_are_caffes():
    assert ncio.array_to_blob(torch.tensor(0.25)).SerializeToString() == b"*\x04" + struct.pack("<f", 0.25)
    assert ncio.blob_shape(caffe_scalar_blob(0.25)) == ()
    assert ncio.blob_to_array(caffe_scalar_blob(0.25)).shape == ()


def test_shared_prelu_and_zero_axis_scale_bias_load_caffe_written_models(tmp_path):
    net = Net(netp(ZERO_D), verbose=False)
    for name in ("prelu", "scale", "bias"):
        assert all(tuple(b.shape) == () for b in net.layer(name).blobs()), name  # Caffe: Blob(vector<int>(0))
    # the model as Caffe writes it: every blob 0-d, without a shape
    model = pb.NetParameter(name="zero_d")
    values = {"prelu": [0.1], "scale": [2.0, 0.5], "bias": [-1.0]}
    for name, vals in values.items():
        lp = model.layer.add(name=name, type=net.layer(name).type_name)
        for v in vals:
            lp.blobs.add().CopyFrom(caffe_scalar_blob(v))
    path = tmp_path / "caffe.caffemodel"
    path.write_bytes(model.SerializeToString())
    assert net.copy_from(str(path)) == ["prelu", "scale", "bias"]
    x = torch.linspace(-3, 3, 24).reshape(2, 3, 2, 2)
    y = net(x=x)["b"]
    expect = torch.where(x > 0, x, 0.1 * x) * 2.0 + 0.5 - 1.0
    torch.testing.assert_close(y, expect)
    # saved back as Caffe writes them: no shape, one value
    again = ncio.read_caffemodel(_save(net, tmp_path / "again.caffemodel"))
    for lp in again.layer:
        for blob, v in zip(lp.blobs, values.get(lp.name, [])):
            assert not blob.HasField("shape") and list(blob.data) == [pytest.approx(v)]
            assert blob.SerializeToString() == caffe_scalar_blob(v).SerializeToString()


def _save(net: Net, path) -> str:
    net.save(str(path))
    return str(path)


# -- 10. repeated layer names ------------------------------------------------------------------

TWINS = """
name: "twins"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "a"
        inner_product_param { num_output: 3 weight_filler { type: "constant" value: 1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "a" top: "b"
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 2 } } }
"""


def test_repeated_layer_names_build_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="netcompress"):
        net = Net(netp(TWINS), verbose=False)
    assert "more than one layer is named 'fc'" in caplog.text
    assert net.layer_names == ["in", "fc", "fc"]
    # name lookup finds the last (Caffe's layer_by_name), iteration sees both
    assert tuple(net.layer("fc").weight.shape) == (2, 3)
    assert [tuple(l.weight.shape) for n, l in net.named_layers() if n == "fc"] == [(3, 3), (2, 3)]
    assert len(net.learnable_params()) == 4
    y = net(x=torch.ones(2, 3))["b"]
    torch.testing.assert_close(y, torch.full((2, 2), 18.0))  # 1*3 = 3 per unit, then 2*3*3
    # both layers are saved, in order
    proto = net.to_proto()
    assert [(l.name, len(l.blobs)) for l in proto.layer] == [("in", 0), ("fc", 2), ("fc", 2)]


def test_a_model_fills_the_first_layer_of_a_repeated_name(tmp_path):
    net = Net(netp(TWINS), verbose=False)
    model = pb.NetParameter()
    lp = model.layer.add(name="fc", type="InnerProduct")
    ncio.array_to_blob(np.full((3, 3), 5.0, np.float32), lp.blobs.add())
    ncio.array_to_blob(np.zeros(3, np.float32), lp.blobs.add())
    net.copy_from(model)
    first, last = [l for n, l in net.named_layers() if n == "fc"]
    assert float(first.weight[0, 0].detach()) == 5.0 and float(last.weight[0, 0].detach()) == 2.0
    # a second source layer of that name again fills the first target (Caffe's CopyTrainedLayersFrom)
    lp2 = model.layer.add(name="fc", type="InnerProduct")
    ncio.array_to_blob(np.full((3, 3), 7.0, np.float32), lp2.blobs.add())
    ncio.array_to_blob(np.zeros(3, np.float32), lp2.blobs.add())
    net.copy_from(model)
    assert float(first.weight[0, 0].detach()) == 7.0 and float(last.weight[0, 0].detach()) == 2.0


def test_solver_trains_both_layers_of_a_repeated_name():
    from netcompress.solvers import Solver

    text = TWINS.replace('top: "x"', 'top: "x" top: "t"').replace(
        "input_param { shape { dim: 2 dim: 3 } }", "input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } }")
    text += 'layer { name: "loss" type: "EuclideanLoss" bottom: "b" bottom: "t" top: "loss" }\n'
    sp = pb.SolverParameter(base_lr=0.01, lr_policy="fixed", max_iter=1, display=0)
    sp.net_param.CopyFrom(netp(text))
    solver = Solver(sp, verbose=False)
    solver.net.set_input(x=torch.ones(2, 3), t=torch.zeros(2, 2))
    first, last = [l for n, l in solver.net.named_layers() if n == "fc"]
    w1, w2 = first.weight.detach().clone(), last.weight.detach().clone()
    solver.step(1)
    assert not torch.equal(first.weight, w1) and not torch.equal(last.weight, w2)


# -- 11. force_backward over propagate_down: false ----------------------------------------------

PD = """
name: "pd"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "scale" type: "Scale" bottom: "x" top: "h" scale_param { filler { type: "constant" value: 3 } } }
layer { name: "fc" type: "InnerProduct" bottom: "h" top: "y" propagate_down: false
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.5 } } }
"""


def _bottom_diff(text: str) -> torch.Tensor | None:
    net = Net(netp(text), phase="train", verbose=False)
    h = []
    net.layer("fc").register_forward_pre_hook(lambda mod, args: h.append(args[0]))
    out = net(x=torch.ones(2, 3))["y"]
    if h[0].requires_grad:
        h[0].retain_grad()
    out.sum().backward()
    return h[0].grad


def test_force_backward_overrides_propagate_down_false():
    assert _bottom_diff(PD) is None  # propagate_down: false, no diff for h
    diff = _bottom_diff("force_backward: true\n" + PD)
    # Caffe computes the bottom diff anyway: d(sum y)/dh = sum over outputs of W = 2 * 0.5
    torch.testing.assert_close(diff, torch.ones(2, 3))


# -- 12. lr_mult 0 on a bare Net ------------------------------------------------------------------

FROZEN = """
name: "frozen"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "h" param { lr_mult: 0 } param { lr_mult: 0 }
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "b" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
"""


@pytest.mark.parametrize("force", [False, True])
def test_lr_mult_zero_gets_no_gradient_unless_forced(force):
    net = Net(netp(("force_backward: true\n" if force else "") + FROZEN), phase="train", seed=1, verbose=False)
    net(x=torch.randn(2, 3))["y"].sum().backward()
    a, b = net.layer("a"), net.layer("b")
    assert b.weight.grad is not None and b.bias.grad is not None
    if force:  # Caffe's force_backward sets every param_propagate_down
        assert a.weight.grad is not None and a.weight.grad.abs().sum() > 0
    else:      # Caffe's AppendParam: param_need_backward = lr_mult != 0
        assert a.weight.grad is None and a.bias.grad is None


def test_solver_keeps_its_lr_mult_rules():
    """The Solver: no gradient for lr_mult 0 even with force_backward (as before); LarsSGD, whose
    trust ratio replaces lr_mult, still updates such a blob."""
    from netcompress.solvers import Solver

    for solver_type, moves in (("SGD", False), ("LarsSGD", True)):
        sp = pb.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=1, display=0, type=solver_type,
                                local_gw_ratio=0.5)
        text = "force_backward: true\n" + FROZEN.replace('top: "y"', 'top: "y"') + \
            'layer { name: "loss" type: "Reduction" bottom: "y" top: "loss" loss_weight: 1 }\n'
        sp.net_param.CopyFrom(netp(text))
        solver = Solver(sp, verbose=False)
        solver.net.set_input(x=torch.randn(2, 3))
        before = solver.net.layer("a").weight.detach().clone()
        solver.step(1)
        assert (not torch.equal(solver.net.layer("a").weight, before)) == moves, solver_type


# -- 6. layers a model does not fill ------------------------------------------------------------

def _lenet_like_model(tmp_path, rename: str | None = None) -> str:
    net = Net(netp(FROZEN), seed=1, verbose=False)
    proto = net.to_proto()
    if rename:
        next(l for l in proto.layer if l.name == "a").name = rename
    path = tmp_path / "m.caffemodel"
    ncio.write_caffemodel(str(path), proto)
    return str(path)


def test_unfilled_learnable_layers_are_named_in_a_warning(tmp_path, caplog):
    model = _lenet_like_model(tmp_path, rename="a_renamed")
    net = Net(netp(FROZEN), seed=2, verbose=False)
    with caplog.at_level(logging.WARNING, logger="netcompress"):
        assert net.copy_from(model) == ["b"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "1 learnable layer(s) of net 'frozen' received no weights: a " in msg and "--strict" in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="netcompress"):
        net.copy_from(_lenet_like_model(tmp_path))  # every layer filled: no warning
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_strict_makes_an_unfilled_layer_an_error(tmp_path):
    model = _lenet_like_model(tmp_path, rename="a_renamed")
    net = Net(netp(FROZEN), seed=2, verbose=False)
    with pytest.raises(WeightLoadError, match=r"m\.caffemodel: 1 learnable layer\(s\) .* received no weights: a "):
        net.copy_from(model, strict=True)
    with pytest.raises(WeightLoadError, match="received no weights: a "):
        copy_weights_list(net, model, verbose=False, strict=True)


def test_weights_list_reports_once_over_all_files(tmp_path, caplog):
    full = _lenet_like_model(tmp_path)
    only_b = tmp_path / "only_b.caffemodel"
    proto = ncio.read_caffemodel(full)
    keep = [l for l in proto.layer if l.name != "a"]
    del proto.layer[:]
    proto.layer.extend(keep)
    ncio.write_caffemodel(str(only_b), proto)
    net = Net(netp(FROZEN), seed=2, verbose=False)
    with caplog.at_level(logging.WARNING, logger="netcompress"):
        copy_weights_list(net, f"{only_b},{full}", verbose=False)  # the second file fills 'a'
    assert "received no weights" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="netcompress"):
        copy_weights_list(net, str(only_b), verbose=False)
    assert "received no weights: a " in caplog.text


# -- 6 and 8 on the command line -------------------------------------------------------------

LENET = "examples/mnist/lenet_train_test.prototxt"


@pytest.fixture
def lenet_model(tmp_path):
    """A LeNet caffemodel (random weights) whose conv1 is renamed conv1_old, in a folder with the
    embedded digits' LMDBs at data/ (where the example nets look)."""
    import os
    import shutil
    from pathlib import Path

    from netcompress.data.mnist5k import ensure_mnist5k

    repo = Path(__file__).resolve().parents[1]
    ensure_mnist5k(str(tmp_path / "data"))
    shutil.copytree(repo / "examples" / "mnist", tmp_path / "examples" / "mnist")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        net = Net(LENET, phase="test", seed=1, verbose=False)
        proto = net.to_proto()
        next(l for l in proto.layer if l.name == "conv1").name = "conv1_old"
        ncio.write_caffemodel("renamed.caffemodel", proto)
        yield tmp_path
    finally:
        os.chdir(old)


def test_test_command_warns_or_refuses_and_dumps_the_net_only_when_verbose(lenet_model, capsys):
    from netcompress.cli import main as cli_main

    args = ["test", "--model", LENET, "--weights", "renamed.caffemodel", "--iterations", "1"]
    assert cli_main(args) == 0
    err = capsys.readouterr().err
    assert re.search(r"^W\d{4} .*1 learnable layer\(s\) of net 'LeNet' received no weights: conv1 ", err, re.M)
    assert "Top shape" not in err and "Creating Layer" not in err  # no net dump by default
    assert cli_main(args + ["--verbose"]) == 0
    err = capsys.readouterr().err
    assert "Creating Layer conv1" in err and "Top shape: 100 20 24 24 (1152000)" in err
    assert cli_main(args + ["--strict"]) == 1
    assert "received no weights: conv1 " in capsys.readouterr().err


def test_train_strict_refuses_an_unfilled_layer(lenet_model, capsys):
    from netcompress.cli import main as cli_main

    solver = lenet_model / "s.prototxt"
    solver.write_text(f'net: "{LENET}"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 0\nsnapshot_after_train: false\n')
    assert cli_main(["train", "--solver", str(solver), "--weights", "renamed.caffemodel", "--strict"]) == 1
    assert "--weights renamed.caffemodel: 1 learnable layer(s) of net 'LeNet' received no weights: conv1 " \
        in capsys.readouterr().err
    assert cli_main(["train", "--solver", str(solver), "--weights", "renamed.caffemodel"]) == 0
    assert "received no weights: conv1 " in capsys.readouterr().err


def test_a_missing_net_file_names_the_solver_field(tmp_path, capsys):
    from netcompress.cli import main as cli_main

    solver = tmp_path / "s.prototxt"
    solver.write_text('net: "nets/none.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\n')
    assert cli_main(["train", "--solver", str(solver)]) == 1
    err = capsys.readouterr().err
    assert f"{solver}: the solver's `net:` field names 'nets/none.prototxt', which does not exist" in err
    assert "Paths in a solver resolve against the current directory" in err
