"""Reading/writing Caffe files, error messages, and legacy upgrades."""
from __future__ import annotations

import os

import numpy as np
import pytest
from google.protobuf import text_format

from netcompress import io as ncio
from netcompress.cli import main as cli_main
from netcompress.errors import NetDefinitionError, ProtoParseError
from netcompress.proto import caffe_pb2 as pb


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_malformed_prototxt_names_file_line_column(tmp_path):
    path = write(tmp_path, "bad.prototxt", 'name: "x"\nlayer {\n  name: "a"\n  typo: "b"\n}\n')
    with pytest.raises(ProtoParseError) as ei:
        ncio.read_net(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}:4:")
    assert "typo" in msg and "caffe.LayerParameter" in msg
    assert ei.value.line == 4


def test_unterminated_block_reports_position(tmp_path):
    path = write(tmp_path, "bad2.prototxt", 'layer {\n  name: "a"\n')
    with pytest.raises(ProtoParseError) as ei:
        ncio.read_net(path)
    assert str(ei.value).startswith(path + ":")
    assert ei.value.line is not None


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ProtoParseError, match="no such file"):
        ncio.read_net(str(tmp_path / "nope.prototxt"))


def test_binary_model_given_as_text(tmp_path):
    p = tmp_path / "m.caffemodel"
    net = pb.NetParameter(name="x")
    ncio.array_to_blob(np.ones((3, 3), np.float32), net.layer.add(name="l", type="Convolution").blobs.add())
    p.write_bytes(net.SerializeToString() + b"\xff\xfe")
    with pytest.raises(ProtoParseError):
        ncio.read_text_proto(str(p), pb.NetParameter())


def test_caffemodel_write_read_roundtrip_and_atomic(tmp_path):
    net = pb.NetParameter(name="n")
    layer = net.layer.add(name="ip", type="InnerProduct")
    w = np.random.RandomState(0).randn(4, 5).astype(np.float32)
    ncio.array_to_blob(w, layer.blobs.add())
    path = str(tmp_path / "m.caffemodel")
    ncio.write_caffemodel(path, net)
    back = ncio.read_caffemodel(path)
    np.testing.assert_array_equal(ncio.blob_to_array(back.layer[0].blobs[0]), w)
    assert open(path, "rb").read() == back.SerializeToString(deterministic=True)
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_atomic_write_uses_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        ncio.atomic_write(tmp_path / "m.bin", b"x")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "m.bin").st_mode & 0o777) == 0o644


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "keep.bin"
    path.write_bytes(b"good")

    class Boom:
        def __len__(self):
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        ncio.atomic_write(path, Boom())  # not bytes/str: fails before replacing
    assert path.read_bytes() == b"good"
    assert [f for f in os.listdir(tmp_path) if f != "keep.bin"] == []


def test_atomic_file_for_writers_that_need_a_file_object(tmp_path):
    # h5py (dump_logits) writes through atomic_file's seekable file object, with atomic_write's guarantees
    h5py = pytest.importorskip("h5py")
    real = tmp_path / "real.h5"
    real.write_bytes(b"old")
    link = tmp_path / "link.h5"
    link.symlink_to(real.name)
    with ncio.atomic_file(link) as f, h5py.File(f, "w") as h:
        h.create_dataset("x", data=np.arange(6, dtype=np.float32))
    assert link.is_symlink()  # written through the link
    with h5py.File(real, "r") as h:
        assert h["x"][:].tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(RuntimeError, match="boom"):
        with ncio.atomic_file(real) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    with h5py.File(real, "r") as h:  # the old file stays, the temporary file is gone
        assert h["x"].shape == (6,)
    assert sorted(os.listdir(tmp_path)) == ["link.h5", "real.h5"]


def test_legacy_blob_shape_and_double_data():
    b = pb.BlobProto(num=2, channels=3, height=1, width=2)
    b.data.extend(range(12))
    assert ncio.blob_to_array(b).shape == (2, 3, 1, 2)
    d = pb.BlobProto()
    d.shape.dim.extend([3])
    d.double_data.extend([1.5, 2.5, 3.5])
    a = ncio.blob_to_array(d)
    assert a.dtype == np.float64 and a.tolist() == [1.5, 2.5, 3.5]
    bad = pb.BlobProto()
    bad.shape.dim.extend([2, 2])
    bad.data.extend([1, 2, 3])
    with pytest.raises(ValueError, match="3 values"):
        ncio.blob_to_array(bad)


def test_binaryproto_mean_roundtrip(tmp_path):
    mean = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    p = str(tmp_path / "mean.binaryproto")
    ncio.write_binaryproto_array(p, mean)
    np.testing.assert_array_equal(ncio.read_binaryproto_array(p), mean)
    blob = ncio.read_binary_proto(p, pb.BlobProto())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 2, 3, 4)


V1_NET = """
name: "old"
input: "data"
input_dim: 2 input_dim: 1 input_dim: 8 input_dim: 8
layers {
  name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } }
}
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers {
  name: "data2" type: DATA top: "d2" top: "l2"
  data_param { source: "x_lmdb" backend: LMDB batch_size: 4 scale: 0.5 mirror: true }
}
"""


def test_upgrade_v1_and_input(tmp_path):
    net = ncio.read_net(write(tmp_path, "v1.prototxt", V1_NET))
    assert len(net.layers) == 0 and len(net.input) == 0
    types = [(l.name, l.type) for l in net.layer]
    assert types == [("input", "Input"), ("conv", "Convolution"), ("relu", "ReLU"), ("data2", "Data")]
    assert list(net.layer[0].input_param.shape[0].dim) == [2, 1, 8, 8]
    conv = net.layer[1]
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert conv.convolution_param.num_output == 4
    data = net.layer[3]
    assert data.transform_param.scale == 0.5 and data.transform_param.mirror
    assert not data.data_param.HasField("scale")


V0_NET = """
name: "v0"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 10 input_dim: 10
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 8 kernelsize: 3 stride: 2 biasterm: false
                 weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 5 } bottom: "pool1" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "fc" top: "fc" }
"""


def test_upgrade_v0_folds_padding(tmp_path):
    net = ncio.read_net(write(tmp_path, "v0.prototxt", V0_NET))
    names = [l.name for l in net.layer]
    assert names == ["input", "conv1", "pool1", "fc", "drop"]
    conv = net.layer[1]
    assert conv.type == "Convolution" and list(conv.bottom) == ["data"]
    cp = conv.convolution_param
    assert list(cp.pad) == [2] and list(cp.kernel_size) == [3] and list(cp.stride) == [2]
    assert cp.num_output == 8 and cp.bias_term is False and cp.weight_filler.std == pytest.approx(0.01)
    assert conv.param[0].lr_mult == 1
    assert net.layer[2].pooling_param.pool == pb.PoolingParameter.AVE
    assert net.layer[4].dropout_param.dropout_ratio == pytest.approx(0.3)


def test_unknown_v0_type_is_an_error(tmp_path):
    path = write(tmp_path, "v0bad.prototxt", 'layers { layer { name: "x" type: "warp" } }')
    with pytest.raises(NetDefinitionError, match="unknown V0 layer type 'warp'"):
        ncio.read_net(path)


def test_upgrade_batchnorm_params(tmp_path):
    text = ('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" '
            'param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }')
    net = ncio.read_net(write(tmp_path, "bn.prototxt", text))
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [(0, 0)] * 3


@pytest.mark.parametrize("enum,name", [("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
                                       ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"),
                                       ("ADAM", "Adam"), ("LARSSGD", "LarsSGD")])
def test_upgrade_solver_type(tmp_path, enum, name):
    s = ncio.read_solver(write(tmp_path, "s.prototxt", f"base_lr: 0.1\nsolver_type: {enum}\n"))
    assert s.type == name and not s.HasField("solver_type")


def test_solver_type_and_type_conflict(tmp_path):
    with pytest.raises(NetDefinitionError, match="keep only `type`"):
        ncio.read_solver(write(tmp_path, "s.prototxt", 'solver_type: ADAM\ntype: "SGD"\n'))


def test_fork_trust_coef_is_rejected_with_position(tmp_path):
    # The reference's lenet_solver_larssgd.prototxt sets `trust_coef`, a field its proto comments out.
    path = write(tmp_path, "lars.prototxt", 'type: "LarsSGD"\nbase_lr: 0.01\ntrust_coef: 0.1\n')
    with pytest.raises(ProtoParseError, match=r":3:.*trust_coef"):
        ncio.read_solver(path)


def test_upgrade_command(tmp_path):
    src = write(tmp_path, "v1.prototxt", V1_NET)
    out = str(tmp_path / "new.prototxt")
    assert cli_main(["upgrade", src, out]) == 0
    net = ncio.read_net(out, upgrade=False)
    assert len(net.layers) == 0 and net.layer[1].type == "Convolution"
    solver = write(tmp_path, "s.prototxt", "solver_type: NESTEROV\n")
    out2 = str(tmp_path / "s2.prototxt")
    assert cli_main(["upgrade", "--solver", solver, out2]) == 0
    assert ncio.read_solver(out2, upgrade=False).type == "Nesterov"
    # binary
    model = pb.NetParameter()
    model.layers.add(name="conv", type=pb.V1LayerParameter.CONVOLUTION)
    ncio.array_to_blob(np.ones((2, 1, 3, 3), np.float32), model.layers[0].blobs.add())
    mpath = str(tmp_path / "old.caffemodel")
    ncio.write_caffemodel(mpath, model)
    out3 = str(tmp_path / "new.caffemodel")
    assert cli_main(["upgrade", "--binary", mpath, out3]) == 0
    assert ncio.read_caffemodel(out3, upgrade=False).layer[0].type == "Convolution"


def test_text_protos_spell_floats_as_caffe_does(tmp_path):
    """Written prototxts and the logs' parameter dumps spell floats as protobuf C++ (Caffe) does, SimpleFtoa's
    shortest of 6 or 9 digits: `lr_mult: 1`, where Python's text_format wrote `lr_mult: 1.0` on every line."""
    sp = pb.SolverParameter(base_lr=1e-5, momentum=0.9, gamma=1e-4, power=0.1 + 0.2, delta=1e6,
                            clip_gradients=float("inf"), max_iter=5000, lr_policy="inv", weight_decay=16777217.0)
    text = ncio.text_proto(sp)
    assert text == ('base_lr: 1e-05\nmax_iter: 5000\nlr_policy: "inv"\ngamma: 0.0001\npower: 0.3\nmomentum: 0.9\n'
                    'weight_decay: 16777216\ndelta: 1e+06\nclip_gradients: inf\n')
    assert text_format.Parse(text, pb.SolverParameter()) == sp
    net = text_format.Parse('name: "n\\"é" layer { name: "c" type: "Convolution" param { lr_mult: 1 } '
                            'param { lr_mult: 2 decay_mult: 0 } convolution_param { num_output: 2 kernel_size: 3 '
                            'weight_filler { type: "gaussian" std: 0.01 } } }', pb.NetParameter())
    text = ncio.text_proto(net)
    assert "    lr_mult: 1\n" in text and "decay_mult: 0\n" in text and "std: 0.01\n" in text and ".0\n" not in text
    assert text_format.Parse(text, pb.NetParameter()) == net
    assert text.replace("lr_mult: 1\n", "lr_mult: 1.0\n").replace("lr_mult: 2\n", "lr_mult: 2.0\n").replace(
        "decay_mult: 0\n", "decay_mult: 0.0\n") == text_format.MessageToString(net)  # (all else as text_format)
    src = write(tmp_path, "n.prototxt", text_format.MessageToString(net))
    assert cli_main(["upgrade", src, str(tmp_path / "up.prototxt")]) == 0
    assert (tmp_path / "up.prototxt").read_text() == text
    # a blob's many values (parse_model's dump): the same spellings one by one and all at once
    odd = np.array([np.inf, -np.inf, np.nan, 0, -0.0, 1e-45, 3.4e38, 16777217, 1e6, 0.1], np.float32)
    values = np.concatenate([np.random.default_rng(0).standard_normal(200).astype(np.float32), odd])
    blob = pb.BlobProto(data=values, double_data=values.astype(np.float64) / 3)
    lines = ncio.text_proto(blob).splitlines()
    alone = [ncio.text_proto(pb.BlobProto(data=[v])).strip() for v in values]
    assert lines[:len(values)] == alone
    assert lines[len(values) - 10:len(values)] == [f"data: {t}" for t in ("inf", "-inf", "nan", "0", "-0", "1.4013e-45",
                                                                          "3.4e+38", "16777216", "1e+06", "0.1")]
    assert lines[len(values):] == [ncio.text_proto(pb.BlobProto(double_data=[v])).strip() for v in blob.double_data]
    parsed = text_format.Parse("\n".join(lines), pb.BlobProto())
    assert np.array_equal(np.asarray(parsed.data), values, equal_nan=True)
    assert np.array_equal(np.asarray(parsed.double_data), np.asarray(blob.double_data), equal_nan=True)


def test_a_message_ending_in_a_newline_ends_its_log_line():
    # (glog adds no second newline: the parameter dumps left a blank line in the log that Caffe's has not)
    import io
    import logging

    from netcompress.log import get_logger, setup_logging

    stream = io.StringIO()
    setup_logging(stream=stream)
    try:
        get_logger("t").info("Initializing solver from parameters: \n%s", "base_lr: 0.01\n")
        get_logger("t").info("next")
    finally:
        setup_logging()
    lines = stream.getvalue().split("\n")
    assert lines[1] == "base_lr: 0.01" and "] next" in lines[2] and lines[3:] == [""], lines
    assert logging.getLogger("netcompress").handlers
