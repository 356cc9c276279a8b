"""Knowledge-distillation tools: the `--weights` comma list, `rename_layers` and `dump_logits`
(recipes-spec 5.2, 5.5), each as a user runs them and checked by reading the results back."""
from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netcompress import cli
from netcompress import io as ncio
from netcompress.errors import WeightLoadError
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.weights import copy_weights_list, split_weights

FILL = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 }'

TEACHER = f"""
name: "teacher"
layer {{ name: "data" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: 4 dim: 2 dim: 6 dim: 6 }} shape {{ dim: 4 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}
  convolution_param {{ num_output: 5 kernel_size: 3 {FILL} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }}
layer {{ name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param {{ bias_term: true }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param {{ num_output: 3 {FILL} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" include {{ phase: TEST }} }}
"""

STUDENT = f"""
name: "student"
layer {{ name: "data" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: 4 dim: 2 dim: 6 dim: 6 }} shape {{ dim: 4 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 2 kernel_size: 3 {FILL} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param {{ num_output: 3 {FILL} }} }}
"""


def _inputs(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g).float()


def _teacher(tmp_path: Path) -> tuple[Path, Path]:
    """The teacher's prototxt and a caffemodel with random weights and non-trivial BN statistics."""
    proto = tmp_path / "teacher.prototxt"
    proto.write_text(TEACHER)
    net = Net(str(proto), phase=pb.TEST, seed=5, verbose=False)
    bn = net.layer("bn")
    with torch.no_grad():
        bn.mean.copy_(torch.linspace(-1, 1, 5))
        bn.variance.copy_(torch.linspace(0.5, 2, 5))
        bn.scale_factor.fill_(2.0)
        net.layer("scale").weight.copy_(torch.linspace(0.5, 1.5, 5))
    model = tmp_path / "teacher.caffemodel"
    net.save(str(model))
    return proto, model


def _student(tmp_path: Path, seed=6) -> tuple[Path, Path]:
    proto = tmp_path / "student.prototxt"
    proto.write_text(STUDENT)
    net = Net(str(proto), phase=pb.TEST, seed=seed, verbose=False)
    model = tmp_path / f"student{seed}.caffemodel"
    net.save(str(model))
    return proto, model


def _blobs(model: Path) -> dict[str, list[np.ndarray]]:
    return {l.name: [ncio.blob_to_array(b) for b in l.blobs] for l in ncio.read_caffemodel(str(model)).layer}


# --- the --weights comma list ------------------------------------------------------------------------

def test_weights_list_first_file_fills_and_the_log_says_which(tmp_path, caplog):
    proto, m1 = _student(tmp_path, seed=6)
    _, m2 = _student(tmp_path, seed=7)
    net = Net(str(proto), phase=pb.TEST, verbose=False)
    assert split_weights(f"{m1},{m2}") == [str(m1), str(m2)] == split_weights([f"{m1}", str(m2)])
    with caplog.at_level(logging.INFO, logger="netcompress"):
        filled = copy_weights_list(net, f"{m1},{m2}")
    assert filled == {"conv": str(m1), "fc": str(m1)}
    np.testing.assert_array_equal(net.layer("fc").weight.detach().numpy(), _blobs(m1)["fc"][0])
    assert not np.array_equal(_blobs(m1)["fc"][0], _blobs(m2)["fc"][0])
    text = caplog.text
    assert f"Finetuning from {m1} (file 1 of 2)" in text and f"Finetuning from {m2} (file 2 of 2)" in text
    assert f"{m1} filled 2 layer(s): conv, fc" in text
    assert f"{m2} filled 0 layer(s): none" in text
    assert f"{m2}: kept 2 layer(s) an earlier file filled: conv, fc" in text


def test_weights_list_missing_file_stops_the_solver_before_training(tmp_path, capsys):
    _, m1 = _student(tmp_path)
    missing = tmp_path / "teacher_t.caffemodel"
    sp = pb.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=1)
    text_format.Parse(STUDENT, sp.net_param)
    from netcompress.solvers import Solver

    with pytest.raises(WeightLoadError) as e:
        Solver(sp, weights=f"{m1},{missing}", verbose=False)
    assert str(e.value) == f"--weights {m1},{missing}: file 2 of 2, '{missing}', does not exist"
    with pytest.raises(WeightLoadError) as e:
        Solver(sp, weights=f"{m1},,{m1}", verbose=False)
    assert str(e.value) == f"--weights {m1},,{m1}: file 2 of 3 is empty (two commas, or a comma at an end)"
    # the train command: the same message, exit status 1, no snapshot written
    solver_file = tmp_path / "solver.prototxt"
    sp.snapshot_prefix = str(tmp_path / "snap")
    ncio.write_text_proto(str(solver_file), sp)
    assert cli.main(["train", "--solver", str(solver_file), "--weights", f"{missing},{m1}"]) == 1
    assert f"'{missing}', does not exist" in capsys.readouterr().err
    assert not list(tmp_path.glob("snap*"))


def test_weights_list_shape_error_names_the_file(tmp_path):
    proto, m1 = _student(tmp_path)
    _, teacher_model = _teacher(tmp_path)  # its "conv" has 5 outputs, the student's 2
    net = Net(str(proto), phase=pb.TEST, verbose=False)
    with pytest.raises(WeightLoadError, match=rf"^{teacher_model}: Cannot copy param 0 weights from layer 'conv'"):
        copy_weights_list(net, [str(teacher_model)])


# --- rename_layers ----------------------------------------------------------------------------------

def test_rename_layers_round_trip(tmp_path, capsys, caplog):
    proto, model = _teacher(tmp_path)
    out_p, out_m = tmp_path / "t.prototxt", tmp_path / "t.caffemodel"
    assert cli.main(["rename_layers", str(proto), str(model), str(out_p), str(out_m), "--prefix", "t_",
                     "--freeze"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "renamed 7 layers and 4 blobs with the prefix 't_'"
    assert out[1] == "kept blobs (data tops the student shares): data, label"
    net_p = ncio.read_net(str(out_p))
    names = [l.name for l in net_p.layer]
    assert names == ["data", "t_conv", "t_bn", "t_scale", "t_relu", "t_fc", "t_loss", "t_accuracy"]
    conv = net_p.layer[1]
    assert list(conv.bottom) == ["data"] and list(conv.top) == ["t_conv"]
    assert list(net_p.layer[6].bottom) == ["t_fc", "label"]
    # --freeze: every stored blob gets lr_mult 0 decay_mult 0 (conv's own lr_mult 1 / 2 included)
    for l in net_p.layer:
        if l.name in ("t_conv", "t_fc", "t_scale"):
            assert [(s.lr_mult, s.decay_mult) for s in l.param] == [(0.0, 0.0)] * 2, l.name
        if l.name == "t_bn":
            assert [(s.lr_mult, s.decay_mult) for s in l.param] == [(0.0, 0.0)] * 3
            assert not l.batch_norm_param.HasField("use_global_stats")  # --bn-stats keep
    assert [l.name for l in ncio.read_caffemodel(str(out_m)).layer if len(l.blobs)] == \
        ["t_conv", "t_bn", "t_scale", "t_fc"]
    # the teacher's model holds Caffe's Split layers for "label" and "fc" (loss and accuracy read them);
    # renamed, "fc_fc_0_split" would not be the Split the renamed net names ("t_fc_t_fc_0_split"), so
    # rename_layers drops them
    assert [l.name for l in ncio.read_caffemodel(str(model)).layer if l.type == "Split"] == \
        ["label_data_1_split", "fc_fc_0_split"]
    assert "Split" not in [l.type for l in ncio.read_caffemodel(str(out_m)).layer]
    with caplog.at_level(logging.INFO, logger="netcompress"):
        Net(str(out_p), phase=pb.TEST, weights=str(out_m))
    assert not [r for r in caplog.records if "Ignoring source layer" in r.getMessage()]
    # the renamed net computes what the original did, blob for blob
    x, y = _inputs()
    a = Net(str(proto), phase=pb.TEST, weights=str(model), verbose=False)
    b = Net(str(out_p), phase=pb.TEST, weights=str(out_m), verbose=False)
    a(data=x, label=y)
    b(data=x, label=y)
    for blob in ("conv", "fc", "loss", "accuracy"):
        torch.testing.assert_close(b.blobs["t_" + blob], a.blobs[blob], rtol=0, atol=0)


def test_rename_layers_bn_stats_keep_and_in_place_on_data(tmp_path):
    # a teacher that scales its input in place: from there on its own copy is t_data
    text = TEACHER.replace('layer { name: "conv"',
                           'layer { name: "pre" type: "Power" bottom: "data" top: "data" power_param { scale: 2 } }\n'
                           'layer { name: "conv"')
    proto = tmp_path / "pre.prototxt"
    proto.write_text(text)
    _, model = _teacher(tmp_path)
    out_p, out_m = tmp_path / "t.prototxt", tmp_path / "t.caffemodel"
    from netcompress.tools.kd import rename_layers

    report = rename_layers(str(proto), str(model), str(out_p), str(out_m), prefix="T", bn_stats="global")
    net_p = ncio.read_net(str(out_p))
    pre, conv = net_p.layer[1], net_p.layer[2]
    assert (list(pre.bottom), list(pre.top)) == (["data"], ["Tdata"])
    assert list(conv.bottom) == ["Tdata"]
    assert net_p.layer[3].batch_norm_param.use_global_stats is True
    assert report.blobs["data"] == "Tdata" and report.kept_blobs == ["data", "label"]
    assert not any(len(l.param) and l.param[0].lr_mult == 0 for l in net_p.layer if l.name == "Tfc")


def test_rename_layers_refuses_to_keep_a_blob_the_net_has_not(tmp_path, capsys):
    # (a misspelt --keep was kept silently, and the blob meant was renamed)
    from netcompress.tools._common import ToolError
    from netcompress.tools.kd import rename_layers

    proto, model = _teacher(tmp_path)
    with pytest.raises(ToolError, match=r"no layer of the net reads or writes the blob to keep \(keep\) 'fcc'; "
                                        r"its blobs: .*\bfc\b"):
        rename_layers(str(proto), str(model), str(tmp_path / "t.prototxt"), str(tmp_path / "t.caffemodel"),
                      keep=["fcc"])
    assert not (tmp_path / "t.prototxt").exists()
    # (the command names its flag)
    outs = [str(tmp_path / "t.prototxt"), str(tmp_path / "t.caffemodel")]
    assert cli.main(["rename_layers", str(proto), str(model), *outs, "--keep", "fcc,data"]) == 1
    assert "to keep (--keep) 'fcc'; its blobs" in capsys.readouterr().err
    assert not (tmp_path / "t.prototxt").exists()
    report = rename_layers(str(proto), str(model), str(tmp_path / "t.prototxt"), str(tmp_path / "t.caffemodel"),
                           keep=["fc"])
    assert "fc" in report.kept_blobs


def test_merged_teacher_trains_the_student_only(tmp_path):
    """The recipe: rename the teacher, paste its layers after the student's, add a KD loss, load
    --weights student,teacher and train. The teacher's weights never change."""
    proto, model = _teacher(tmp_path)
    t_proto, t_model = tmp_path / "t.prototxt", tmp_path / "t.caffemodel"
    assert cli.main(["rename_layers", str(proto), str(model), str(t_proto), str(t_model), "--freeze",
                     "--bn-stats", "global"]) == 0
    _, s_model = _student(tmp_path)
    teacher = ncio.read_net(str(t_proto))
    merged = text_format.Parse(STUDENT, pb.NetParameter())
    for l in teacher.layer:
        if len(l.bottom) and not l.type.endswith("Loss") and l.type != "Accuracy":
            merged.layer.add().CopyFrom(l)
    kd = merged.layer.add(name="kd", type="KDLoss", bottom=["fc", "t_fc", "label"], top=["kd_loss"])
    kd.kd_param.temperature = 2
    kd.kd_param.hard_weight = 0.5
    from netcompress.solvers import Solver

    sp = pb.SolverParameter(net_param=merged, base_lr=0.2, lr_policy="fixed", momentum=0.9, max_iter=5,
                            random_seed=1, weight_decay=0.01)
    solver = Solver(sp, weights=f"{s_model},{t_model}", verbose=False)
    x, y = _inputs()
    solver.net.set_input(data=x, label=y)
    before = {n: [b.detach().clone() for b in solver.net.layer(n).blobs()] for n in ("t_conv", "t_bn", "t_scale", "t_fc")}
    for name in before:
        assert len(before[name]) == len(_blobs(t_model)[name])
        for got, want in zip(before[name], _blobs(t_model)[name]):
            np.testing.assert_array_equal(got.numpy(), want)
    s_before = solver.net.layer("fc").weight.detach().clone()
    solver.step(3)
    for name, blobs in before.items():
        for got, want in zip(solver.net.layer(name).blobs(), blobs):
            assert torch.equal(got, want), name
    assert not torch.equal(solver.net.layer("fc").weight, s_before)


# --- dump_logits ------------------------------------------------------------------------------------

DEPLOY = f"""
name: "deploy"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 1 dim: 6 dim: 6 }} }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param {{ num_output: 8 {FILL} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "logits" type: "InnerProduct" bottom: "ip1" top: "logits" inner_product_param {{ num_output: 3 {FILL} }} }}
layer {{ name: "prob" type: "Softmax" bottom: "logits" top: "prob" }}
"""


@pytest.fixture
def transfer_set(tmp_path, lmdb_writer):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (10, 1, 6, 6)).astype(np.uint8)
    labels = rng.randint(0, 3, 10)
    lmdb_writer(tmp_path / "train_lmdb", images, labels)
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    model = tmp_path / "teacher.caffemodel"
    Net(str(deploy), seed=3, verbose=False).save(str(model))
    return tmp_path, images, labels, deploy, model


def _teacher_logits(deploy: Path, model: Path, x: np.ndarray) -> np.ndarray:
    net = Net(str(deploy), weights=str(model), verbose=False)
    with torch.no_grad():
        net(data=torch.from_numpy(x))
    return net.blobs["logits"].numpy()


def test_dump_logits_from_an_lmdb_reads_back_through_hdf5data(transfer_set, capsys):
    root, images, labels, deploy, model = transfer_set
    out = root / "logits.h5"
    # 10 records in batches of 4: the last batch wraps, and only one pass is written
    assert cli.main(["dump_logits", str(deploy), str(model), str(root / "train_lmdb"), "--blob", "logits",
                     "--dataset", "t_logits", "--out", str(out), "--batch", "4", "--scale", "0.00390625"]) == 0
    printed = capsys.readouterr().out
    assert f"to {out}: t_logits [10, 3], data [10, 1, 6, 6], label [10]" in printed
    x = images.astype(np.float32) / 256
    want = _teacher_logits(deploy, model, x)
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["data", "label", "t_logits"]
        np.testing.assert_array_equal(f["data"][:], x)
        np.testing.assert_array_equal(f["label"][:], labels.astype(np.float32))
        np.testing.assert_allclose(f["t_logits"][:], want, rtol=1e-6, atol=1e-6)
    listed = root / "logits.txt"
    assert listed.read_text() == "logits.h5\n"
    # a student's HDF5Data layer reads data, label and the teacher's logits in the same rows
    net = Net(text_format.Parse(f"""
        layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" top: "t_logits"
                 hdf5_data_param {{ source: "{listed}" batch_size: 5 }} }}""", pb.NetParameter()),
              phase=pb.TRAIN, verbose=False)
    for k in range(2):
        net()
        rows = slice(5 * k, 5 * k + 5)
        np.testing.assert_array_equal(net.blobs["data"].numpy(), x[rows])
        np.testing.assert_array_equal(net.blobs["label"].numpy(), labels[rows].astype(np.float32))
        np.testing.assert_allclose(net.blobs["t_logits"].numpy(), want[rows], rtol=1e-6, atol=1e-6)


def test_dump_logits_from_a_leveldb_writes_what_the_lmdb_gives(transfer_set, capsys):
    pytest.importorskip("plyvel", reason="LevelDB support needs the optional plyvel package")
    from netcompress.data.db import LeveldbWriter, open_reader

    root, _, _, deploy, model = transfer_set
    src = open_reader(str(root / "train_lmdb"))
    with LeveldbWriter(str(root / "train_leveldb")) as w:
        for i in range(src.num_records):
            w.put(*src.item_at(i))
    outs = []
    for name in ("train_lmdb", "train_leveldb"):
        outs.append(root / f"{name}.h5")
        assert cli.main(["dump_logits", str(deploy), str(model), str(root / name), "--blob", "logits",
                         "--out", str(outs[-1]), "--batch", "4", "--scale", "0.00390625"]) == 0
    assert "from LevelDB " in capsys.readouterr().out
    with h5py.File(outs[0], "r") as a, h5py.File(outs[1], "r") as b:
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_array_equal(a[k][:], b[k][:])
    (root / "neither").mkdir()
    assert cli.main(["dump_logits", str(deploy), str(model), str(root / "neither"), "--blob", "logits",
                     "--out", str(root / "x.h5")]) == 1
    assert "is not an LMDB or a LevelDB" in capsys.readouterr().err


def test_dump_logits_from_a_data_prototxt(transfer_set, capsys):
    root, images, labels, deploy, model = transfer_set
    data = root / "data.prototxt"
    data.write_text(f"""
        layer {{ name: "d" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
                 transform_param {{ scale: 0.5 }}
                 data_param {{ source: "{root / 'train_lmdb'}" batch_size: 3 backend: LMDB }} }}
        layer {{ name: "d" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
                 transform_param {{ scale: 0.25 }}
                 data_param {{ source: "{root / 'train_lmdb'}" batch_size: 6 backend: LMDB }} }}""")
    out = root / "sub" / "t.h5"
    from netcompress.tools.kd import dump_logits

    r = dump_logits(str(deploy), str(model), str(data), "logits", str(out), phase="TRAIN", rows=7,
                    with_data=False, list_file=str(root / "list.txt"))
    assert r["rows"] == 7 and r["datasets"] == {"logits": [7, 3]}
    with h5py.File(out, "r") as f:
        assert list(f) == ["logits"]
        np.testing.assert_allclose(f["logits"][:], _teacher_logits(deploy, model, images[:7] * 0.5),
                                   rtol=1e-6, atol=1e-6)
    assert (root / "list.txt").read_text() == "sub/t.h5\n"


def test_dump_logits_errors(transfer_set, capsys):
    root, _, _, deploy, model = transfer_set
    lmdb = str(root / "train_lmdb")
    assert cli.main(["dump_logits", str(deploy), str(model), lmdb, "--blob", "fc9", "--out", str(root / "x.h5")]) == 1
    assert f"{deploy}: no blob 'fc9' (blobs: data, ip1, logits, prob)" in capsys.readouterr().err
    assert cli.main(["dump_logits", str(deploy), f"{model},{root / 'nope.caffemodel'}", lmdb, "--blob", "logits",
                     "--out", str(root / "x.h5")]) == 1
    assert "file 2 of 2" in capsys.readouterr().err
    assert cli.main(["dump_logits", str(deploy), str(model), lmdb, "--blob", "logits", "--dataset", "data",
                     "--out", str(root / "x.h5")]) == 1
    assert "the logits dataset 'data' has the name of a data top" in capsys.readouterr().err
    # (a batch past uint32 was protobuf's range error, unexpected; rows past a blob gathered until memory ran out)
    assert cli.main(["dump_logits", str(deploy), str(model), lmdb, "--blob", "logits", "--batch", str(2**32),
                     "--out", str(root / "x.h5")]) == 1
    assert "--batch takes at most 2147483647 (a Caffe blob's size limit), got 4294967296" in capsys.readouterr().err
    assert cli.main(["dump_logits", str(deploy), str(model), lmdb, "--blob", "logits", "--rows", str(10**11),
                     "--out", str(root / "x.h5")]) == 1
    assert f"--rows {10**11} of 'data' (" in capsys.readouterr().err
    import netcompress.net as ncnet  # a teacher whose blobs cannot fit is refused before its first forward
    ncnet_memory = ncnet.device_memory
    try:
        ncnet.device_memory = lambda device: 64
        assert cli.main(["dump_logits", str(deploy), str(model), lmdb, "--blob", "logits", "--out",
                         str(root / "x.h5")]) == 1
        assert f"{deploy}: the TEST net needs 0.0 GiB for its blobs and weights" in capsys.readouterr().err
    finally:
        ncnet.device_memory = ncnet_memory
    assert not (root / "x.h5").exists()


# --- the example -------------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_example_teacher_is_what_rename_layers_writes():
    from netcompress.tools.kd import rename_net

    lenet = ncio.read_net(str(EXAMPLES / "mnist" / "lenet_train_test.prototxt"))
    renamed, _ = rename_net(lenet, "t_", freeze=True, blob_counts={"conv1": 2, "conv2": 2, "ip1": 2, "ip2": 2})
    want = [l for l in renamed.layer if len(l.bottom) and l.name != "t_loss"]
    kd = ncio.read_net(str(EXAMPLES / "kd" / "lenet_student_kd_train_test.prototxt"))
    got = [l for l in kd.layer if l.name.startswith("t_")]
    assert [text_format.MessageToString(l) for l in got] == [text_format.MessageToString(l) for l in want]


def test_example_nets_build_and_distill(tmp_path, lmdb_writer):
    # The example's nets on a few digits of the same size as MNIST's (the real LMDBs are not in the checkout).
    rng = np.random.RandomState(1)
    lmdb_writer(tmp_path / "digits", rng.randint(0, 256, (8, 1, 28, 28)).astype(np.uint8), rng.randint(0, 10, 8))
    sizes = {}
    for name in ("lenet_student_train_test", "lenet_student_kd_train_test"):
        param = ncio.read_net(str(EXAMPLES / "kd" / f"{name}.prototxt"))
        for l in param.layer:
            if l.type == "Data":
                l.data_param.source = str(tmp_path / "digits")
                l.data_param.batch_size = 4
        for phase in (pb.TRAIN, pb.TEST):
            net = Net(param, phase=phase, seed=1, verbose=False)
            with torch.no_grad():
                out = net()
            if name.endswith("kd_train_test"):
                assert net.layer("kd").mode_name == "HINTON" and net.layer("kd").temperature == 4
                assert np.isfinite(float(out["kd_loss"])) and float(out["kd_loss"]) > 0
                if phase == pb.TEST:
                    assert {"accuracy", "t_accuracy", "kd_loss"} == set(out)
        sizes[name] = {n: sum(b.numel() for b in l.blobs()) for n, l in net.named_layers()}
    # the README's parameter counts: student 25,450, teacher 431,080
    assert sum(sizes["lenet_student_train_test"].values()) == 25_450
    kd = sizes["lenet_student_kd_train_test"]
    assert sum(v for n, v in kd.items() if n.startswith("t_")) == 431_080
    assert sum(v for n, v in kd.items() if not n.startswith("t_")) == 25_450


def test_shims_and_subcommands(tmp_path):
    import os
    import subprocess
    import sys

    from netcompress.commands import COMMANDS

    repo = EXAMPLES.parent
    for name in ("rename_layers", "dump_logits"):
        assert name in COMMANDS
        env = {**os.environ, "PYTHONPATH": str(repo)}
        r = subprocess.run([sys.executable, str(repo / "compression_scripts" / f"{name}.py"), "--help"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and f"netcompress {name}" in r.stdout, r.stderr
