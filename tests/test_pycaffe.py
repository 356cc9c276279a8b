"""netcompress.pycaffe as `caffe`: pycaffe's Net, io and solver interfaces over netcompress nets.

The expectations come from BVLC Caffe's python/caffe (pycaffe.py, _caffe.cpp, io.py, test/test_net.py,
test/test_solver.py, test/test_io.py) and from files real Caffe wrote (tests/fixtures/caffe: its LeNet caffemodel,
the log of its TEST-net set-up and the first batch of `caffe test`).
"""
from __future__ import annotations

import lzma
import os
import re
import sys
import textwrap

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import netcompress.pycaffe as caffe
from netcompress.net import Net as CoreNet
from netcompress.proto import caffe_pb2 as pb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "examples", "mnist", "lenet.prototxt")
LENET = "lenet/lenet_train_test.prototxt"
WEIGHTS = "lenet/lenet_iter_5000.caffemodel"


def simple_net_file(tmp_path, num_output: int = 13) -> str:
    """pycaffe's test_net.py net (after Caffe's test_net.cpp)."""
    path = tmp_path / "simple.prototxt"
    path.write_text(textwrap.dedent(f"""\
        name: 'testnet' force_backward: true
        layer {{ type: 'DummyData' name: 'data' top: 'data' top: 'label'
          dummy_data_param {{ num: 5 channels: 2 height: 3 width: 4
            num: 5 channels: 1 height: 1 width: 1
            data_filler {{ type: 'gaussian' std: 1 }}
            data_filler {{ type: 'constant' }} }} }}
        layer {{ type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
          convolution_param {{ num_output: 11 kernel_size: 2 pad: 3
            weight_filler {{ type: 'gaussian' std: 1 }}
            bias_filler {{ type: 'constant' value: 2 }} }}
            param {{ decay_mult: 1 }} param {{ decay_mult: 0 }} }}
        layer {{ type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip_blob'
          inner_product_param {{ num_output: {num_output}
            weight_filler {{ type: 'gaussian' std: 2.5 }}
            bias_filler {{ type: 'constant' value: -3 }} }} }}
        layer {{ type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip_blob' bottom: 'label' top: 'loss' }}
        """))
    return str(path)


@pytest.fixture
def simple_net(tmp_path):
    net = caffe.Net(simple_net_file(tmp_path), caffe.TRAIN)
    net.blobs["label"].data[...] = np.random.RandomState(0).randint(13, size=net.blobs["label"].data.shape)
    return net


@pytest.fixture(autouse=True)
def _cpu_mode():
    caffe.set_mode_cpu()
    yield
    caffe.set_mode_cpu()


# ----------------------------------------------------------------------------------------------------------------
# pycaffe's test_net.py
# ----------------------------------------------------------------------------------------------------------------

def test_inputs_outputs_names_and_layers(simple_net):
    net = simple_net
    assert net.inputs == [] and net.outputs == ["loss"]
    assert list(net.top_names.items()) == [("data", ["data", "label"]), ("conv", ["conv"]), ("ip", ["ip_blob"]),
                                           ("loss", ["loss"])]
    assert list(net.bottom_names.items()) == [("data", []), ("conv", ["data"]), ("ip", ["conv"]),
                                              ("loss", ["ip_blob", "label"])]
    assert list(net.layer_dict) == list(net._layer_names)
    assert [net.layer_dict[n].type for n in net._layer_names] == [l.type for l in net.layers] == \
        ["DummyData", "Convolution", "InnerProduct", "SoftmaxWithLoss"]
    assert [b.shape for b in net.params["conv"]] == [(11, 2, 2, 2), (11,)]
    assert list(net.params) == ["conv", "ip"]
    assert net.blobs["conv"].shape == (5, 11, 8, 9) and net.blobs["loss"].data.shape == ()
    assert (net.blobs["data"].num, net.blobs["data"].channels, net.blobs["label"].height) == (5, 2, 1)
    assert net.blob_loss_weights == {"data": 0, "label": 0, "conv": 0, "ip_blob": 0, "loss": 1}
    assert net.blobs["loss"].diff == 1.0  # Caffe sets a loss top's diff to its weight at set-up


def test_forward_backward_and_clear_param_diffs(simple_net):
    net = simple_net
    labels = net.blobs["label"].data.copy()
    out = net.forward()
    assert set(out) == {"loss"} and np.isfinite(out["loss"])
    assert np.array_equal(net.blobs["label"].data, labels)  # a constant DummyData top keeps what was written
    assert net.blobs["data"].data.std() > 0.5  # the gaussian top is refilled
    grads = net.backward()
    assert grads == {}  # the diffs of the (no) inputs
    assert np.abs(net.blobs["data"].diff).max() > 0  # force_backward: true reaches the data
    diff = net.params["conv"][0].diff
    first = diff.copy()
    assert first.max() > 0
    net.backward()  # Caffe's parameter diffs accumulate; the array held is the diff
    np.testing.assert_allclose(diff, 2 * first, rtol=1e-5)
    net.clear_param_diffs()
    assert (diff == 0).all()
    net.backward()
    np.testing.assert_allclose(diff, first, rtol=1e-5)


def test_forward_and_backward_start_end(simple_net):
    net = simple_net
    conv, ip = net.blobs["conv"], net.blobs["ip_blob"]
    rs = np.random.RandomState(1)
    conv.data[:] = rs.uniform(size=conv.data.shape).astype(np.float32)
    out = net.forward(start="ip", end="ip")
    assert "ip_blob" in out
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    manual = np.array([w @ conv.data[i].reshape(-1) + b for i in range(conv.data.shape[0])])
    np.testing.assert_allclose(ip.data, manual, rtol=1e-3, atol=1e-5)
    top = rs.uniform(size=ip.data.shape).astype(np.float32)
    ip.diff[:] = top
    out = net.backward(start="ip", end="ip")
    assert "conv" in out
    manual = np.array([w.T @ top[i] for i in range(top.shape[0])]).reshape(conv.data.shape)
    np.testing.assert_allclose(conv.diff, manual, rtol=1e-3, atol=1e-5)


def test_backward_before_any_forward(tmp_path):
    """pycaffe's test_backward_start_end runs on a fresh net: the layer's backward from the blobs as they are."""
    net = caffe.Net(simple_net_file(tmp_path), caffe.TRAIN)
    top = np.ones(net.blobs["ip_blob"].shape, np.float32)
    net.blobs["ip_blob"].diff[...] = top
    net.backward(start="ip", end="ip")
    # (sums of 10 products with cancellation: the BLAS's order of summation shows in the last bits, relative to
    # the terms rather than to the sum)
    np.testing.assert_allclose(net.blobs["conv"].diff.reshape(5, -1), top @ net.params["ip"][0].data, rtol=1e-5,
                               atol=1e-5)


def test_save_and_read_and_hdf5(simple_net, tmp_path):
    net = simple_net
    path = str(tmp_path / "m.caffemodel")
    net.save(path)
    net_file = simple_net_file(tmp_path)
    for other in (caffe.Net(net_file, path, caffe.TRAIN), caffe.Net(net_file, caffe.TRAIN, weights=path),
                  caffe.Net(net_file, phase=caffe.TRAIN, weights=path)):
        for name in net.params:
            for a, b in zip(net.params[name], other.params[name]):
                assert np.array_equal(a.data, b.data)
    h5 = str(tmp_path / "m.h5")
    net.save_hdf5(h5)
    other = caffe.Net(net_file, caffe.TRAIN)
    other.load_hdf5(h5)
    for name in net.params:
        for a, b in zip(net.params[name], other.params[name]):
            assert np.array_equal(a.data, b.data)
    other = caffe.Net(net_file, caffe.TRAIN)
    other.copy_from(h5)  # Caffe's CopyTrainedLayersFrom reads either format
    assert np.array_equal(other.params["ip"][0].data, net.params["ip"][0].data)
    # share_with: the data is shared (Caffe's ShareData), the diffs are not
    other = caffe.Net(net_file, caffe.TRAIN)
    other.share_with(net)
    net.params["ip"][1].data[...] += 1
    assert np.array_equal(other.params["ip"][1].data, net.params["ip"][1].data)
    net.clear_param_diffs()
    other.forward()
    other.backward()
    assert other.params["ip"][0].diff.any() and not net.params["ip"][0].diff.any()
    with pytest.raises(TypeError, match="needs the phase"):
        caffe.Net(net_file)
    with pytest.raises(RuntimeError, match="Could not open file"):
        caffe.Net(str(tmp_path / "missing.prototxt"), caffe.TEST)


def test_memory_outlives_the_net(simple_net):
    net = simple_net
    params = sum(map(list, net.params.values()), [])
    blobs = list(net.blobs.values())
    del net
    total = sum(float(p.data.sum() + p.diff.sum()) for p in params)
    total += sum(float(b.data.sum() + b.diff.sum()) for b in blobs)
    assert np.isfinite(total)


LEVELS = """
layer { name: "data" type: "DummyData" top: "data" dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: "NoLevel" type: "InnerProduct" bottom: "data" top: "NoLevel" inner_product_param { num_output: 1 } }
layer { name: "Level0Only" type: "InnerProduct" bottom: "data" top: "Level0Only"
        include { min_level: 0 max_level: 0 } inner_product_param { num_output: 1 } }
layer { name: "Level1Only" type: "InnerProduct" bottom: "data" top: "Level1Only"
        include { min_level: 1 max_level: 1 } inner_product_param { num_output: 1 } }
layer { name: "Level>=0" type: "InnerProduct" bottom: "data" top: "Level>=0"
        include { min_level: 0 } inner_product_param { num_output: 1 } }
layer { name: "Level>=1" type: "InnerProduct" bottom: "data" top: "Level>=1"
        include { min_level: 1 } inner_product_param { num_output: 1 } }
"""

STAGES = """
layer { name: "data" type: "DummyData" top: "data" dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: "A" type: "InnerProduct" bottom: "data" top: "A" include { stage: "A" }
        inner_product_param { num_output: 1 } }
layer { name: "B" type: "InnerProduct" bottom: "data" top: "B" include { stage: "B" }
        inner_product_param { num_output: 1 } }
layer { name: "AorB" type: "InnerProduct" bottom: "data" top: "AorB" include { stage: "A" } include { stage: "B" }
        inner_product_param { num_output: 1 } }
layer { name: "AandB" type: "InnerProduct" bottom: "data" top: "AandB" include { stage: "A" stage: "B" }
        inner_product_param { num_output: 1 } }
"""

ALL_IN_ONE = """
layer { name: "train_data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } }
  include { phase: TRAIN stage: "train" } }
layer { name: "val_data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } }
  include { phase: TEST stage: "val" } }
layer { name: "deploy_data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } }
  include { phase: TEST stage: "deploy" } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
  include: { phase: TRAIN stage: "train" } include: { phase: TEST stage: "val" } }
layer { name: "pred" type: "Softmax" bottom: "ip" top: "pred" include: { phase: TEST stage: "deploy" } }
"""


def test_levels_stages_and_all_in_one(tmp_path):
    def blobs(text, *args, **kw):
        (tmp_path / "n.prototxt").write_text(text)
        net = caffe.Net(str(tmp_path / "n.prototxt"), *args, **kw)
        return net, [b for b in net.blobs if "data" not in b]

    assert blobs(LEVELS, caffe.TEST)[1] == ["NoLevel", "Level0Only", "Level>=0"]
    assert blobs(LEVELS, caffe.TEST, level=1)[1] == ["NoLevel", "Level1Only", "Level>=0", "Level>=1"]
    assert blobs(STAGES, caffe.TEST, stages=["A"])[1] == ["A", "AorB"]
    assert blobs(STAGES, caffe.TEST, stages=["B"])[1] == ["B", "AorB"]
    assert blobs(STAGES, caffe.TEST, stages=["A", "B"])[1] == ["A", "B", "AorB", "AandB"]
    for phase, stage, outputs in ((caffe.TRAIN, "train", ["loss"]), (caffe.TEST, "val", ["loss"]),
                                  (caffe.TEST, "deploy", ["pred"])):
        net, _ = blobs(ALL_IN_ONE, phase, stages=[stage])
        assert list(net.blobs["data"].shape) == [1, 1, 10, 10] and net.outputs == outputs
    net, _ = blobs(ALL_IN_ONE, caffe.TEST, stages=["deploy"])
    assert net.inputs == ["data"]


# ----------------------------------------------------------------------------------------------------------------
# Caffe's own LeNet (tests/fixtures/caffe)
# ----------------------------------------------------------------------------------------------------------------

def _caffe_test_net_setup(caffe_fixtures):
    """From Caffe's training log, its TEST net: [(layer, bottoms, tops)], {layer: needs backward}, outputs."""
    log = lzma.decompress((caffe_fixtures / "lenet" / "train_lenet.log.xz").read_bytes()).decode()
    start = [m.start() for m in re.finditer(r"Creating Layer mnist\n", log)][1]
    text = log[start - 200:log.index("Network initialization done.", start)]
    layers, need = [], {}
    for line in text.splitlines():
        if m := re.search(r"Creating Layer (\S+)$", line):
            layers.append((m.group(1), [], []))
        elif m := re.search(r"\] (\S+) <- (\S+)$", line):
            layers[-1][1].append(m.group(2))
        elif m := re.search(r"\] (\S+) -> (\S+)( \(in-place\))?$", line):
            layers[-1][2].append(m.group(2))
        elif m := re.search(r"\] (\S+) (needs|does not need) backward computation", line):
            need[m.group(1)] = m.group(2) == "needs"
    return layers, need, re.findall(r"This network produces output (\S+)", text)


def test_lenet_test_net_is_caffes_net(in_fixture_workdir, caffe_fixtures):
    """Split layers, blob names, backward needs and outputs as Caffe set up the same TEST net, and the first
    test batch's figures of `caffe test` (caffe_test.log: Batch 0, accuracy = 0.93, loss = 0.318116)."""
    layers, need, outputs = _caffe_test_net_setup(caffe_fixtures)
    net = caffe.Net(LENET, caffe.TEST, weights=WEIGHTS)
    assert [(n, net.bottom_names[n], net.top_names[n]) for n in net._layer_names] == layers
    assert dict(zip(net._layer_names, net._layer_need)) == need
    assert net.outputs == outputs == ["accuracy", "loss"]
    assert list(net.blobs)[:4] == ["data", "label", "label_mnist_1_split_0", "label_mnist_1_split_1"]
    out = net.forward()
    assert float(out["accuracy"]) == pytest.approx(0.93, abs=1e-6)
    assert float(out["loss"]) == pytest.approx(0.318116, rel=1e-5)
    # Split tops share their bottom's data; the Split's backward sums its tops' diffs
    assert np.array_equal(net.blobs["ip2_ip2_0_split_1"].data, net.blobs["ip2"].data)
    net.backward()
    assert np.abs(net.blobs["ip2_ip2_0_split_1"].diff).max() > 0
    assert not net.blobs["ip2_ip2_0_split_0"].diff.any()  # accuracy runs no backward
    np.testing.assert_array_equal(net.blobs["ip2"].diff, net.blobs["ip2_ip2_0_split_1"].diff)
    # in place: ip1's data is relu1's output, its diff the gradient at ip1's own output (zero where cut)
    assert (net.blobs["ip1"].data >= 0).all()
    assert not net.blobs["ip1"].diff[net.blobs["ip1"].data == 0].any()
    assert net.blobs["ip1"].diff.any()


def test_train_net_matches_netcompress_net(in_fixture_workdir):
    """The same prototxt, weights and first batch: every blob, the loss and every parameter diff as the
    netcompress Net's forward and autograd backward give them."""
    net = caffe.Net(LENET, caffe.TRAIN, weights=WEIGHTS)
    core = CoreNet(LENET, phase="train", weights=WEIGHTS, verbose=False)
    out = net.forward()
    core()
    core.loss.backward()
    assert float(out["loss"]) == pytest.approx(float(core.loss.detach()), rel=1e-6)
    for name, t in core.blobs.items():
        np.testing.assert_allclose(net.blobs[name].data, t.detach().numpy(), rtol=1e-6, atol=1e-6)
    net.backward()
    for name, layer in core.named_layers():
        for blob, p in zip(net.params.get(name, []), layer.blobs()):
            np.testing.assert_allclose(blob.diff, p.grad.numpy(), rtol=1e-4, atol=1e-7)
    # net surgery: the params are the weights
    assert np.shares_memory(net.params["conv1"][0].data, net.netcompress_net.layer("conv1").weight.detach().numpy())


def test_save_writes_caffes_model_back_byte_for_byte(in_fixture_workdir, tmp_path):
    net = caffe.Net(LENET, caffe.TRAIN, weights=WEIGHTS)
    net.save(str(tmp_path / "again.caffemodel"))
    assert (tmp_path / "again.caffemodel").read_bytes() == (in_fixture_workdir / WEIGHTS).read_bytes()
    # a TEST net is saved with the Split layers Caffe's Net::ToProto writes (bottoms renamed to their tops)
    net = caffe.Net(LENET, caffe.TEST, weights=WEIGHTS)
    net.save(str(tmp_path / "test.caffemodel"))
    saved = pb.NetParameter()
    saved.ParseFromString((tmp_path / "test.caffemodel").read_bytes())
    assert [l.name for l in saved.layer] == net._layer_names
    split = saved.layer[net._layer_names.index("ip2_ip2_0_split")]
    assert (split.type, list(split.bottom), list(split.top), split.phase) == \
        ("Split", ["ip2"], ["ip2_ip2_0_split_0", "ip2_ip2_0_split_1"], pb.TEST)
    assert list(saved.layer[net._layer_names.index("loss")].bottom) == ["ip2_ip2_0_split_1", "label_mnist_1_split_1"]
    again = caffe.Net(LENET, caffe.TEST, weights=str(tmp_path / "test.caffemodel"))
    assert np.array_equal(again.params["ip2"][0].data, net.params["ip2"][0].data)


def test_net_surgery_changes_the_output_and_is_saved(in_fixture_workdir, tmp_path):
    net = caffe.Net(DEPLOY, caffe.TEST, weights=WEIGHTS)
    x = np.random.RandomState(0).rand(64, 1, 28, 28).astype(np.float32)
    before = net.forward(data=x)["prob"].copy()
    assert (before.argmax(1) != 7).any()
    net.params["ip2"][0].data[...] = 0
    net.params["ip2"][1].data[...] = np.eye(10, dtype=np.float32)[7] * 5
    after = net.forward(data=x)["prob"]
    assert (after.argmax(1) == 7).all()
    np.testing.assert_allclose(after[0], np.exp(5 * np.eye(10)[7]) / np.exp(5 * np.eye(10)[7]).sum(), rtol=1e-5)
    net.save(str(tmp_path / "surgery.caffemodel"))
    again = caffe.Net(DEPLOY, caffe.TEST, weights=str(tmp_path / "surgery.caffemodel"))
    assert np.array_equal(again.forward(data=x)["prob"], after)


def test_reshape_forward_all_and_input_checks(in_fixture_workdir):
    net = caffe.Net(DEPLOY, caffe.TEST, weights=WEIGHTS)
    weights = net.params["conv1"][0].data
    x = np.random.RandomState(1).rand(70, 1, 28, 28).astype(np.float32)
    full = net.forward_all(data=x)
    assert set(full) == {"prob"} and full["prob"].shape == (70, 10)
    batch = net.forward(data=x[:64])["prob"].copy()
    np.testing.assert_array_equal(full["prob"][:64], batch)
    with pytest.raises(ValueError, match="Input is not batch sized"):
        net.forward(data=x[:3])
    with pytest.raises(ValueError, match="do not match net inputs"):
        net.forward(image=x[:64])
    net.blobs["data"].reshape(3, 1, 28, 28)
    net.reshape()
    assert net.blobs["prob"].data.shape == (3, 10) and net.blobs["conv1"].shape == (3, 20, 24, 24)
    np.testing.assert_allclose(net.forward(data=x[:3])["prob"], batch[:3], rtol=1e-5, atol=1e-7)
    assert np.shares_memory(weights, net.params["conv1"][0].data)  # held parameter arrays stay valid
    np.testing.assert_allclose(net.forward_all(data=x[:7])["prob"], batch[:7], rtol=1e-5, atol=1e-7)
    # a deploy net contributes to no loss: Caffe runs no backward without force_backward
    assert not net.backward(prob=np.ones((3, 10), np.float32))["data"].any()


def test_backward_from_given_output_diffs_with_force_backward(in_fixture_workdir):
    param = text_format.Parse(open(DEPLOY).read(), pb.NetParameter())
    param.force_backward = True
    net = caffe.Net(param, caffe.TEST, weights=WEIGHTS)
    core = CoreNet(param, phase="test", weights=WEIGHTS, verbose=False)
    x = np.random.RandomState(2).rand(64, 1, 28, 28).astype(np.float32)
    top = np.random.RandomState(3).randn(64, 10).astype(np.float32)
    net.forward(data=x)
    grads = net.backward(prob=top)
    prob = core(data=torch.from_numpy(x))["prob"]
    prob.backward(torch.from_numpy(top))
    np.testing.assert_allclose(grads["data"], core.blobs["data"].grad.numpy(), rtol=1e-4, atol=1e-7)
    outs, diffs = net.forward_backward_all(data=x[:10], prob=top[:10])
    assert outs["prob"].shape == (10, 10) and diffs["data"].shape == (10, 1, 28, 28)
    np.testing.assert_allclose(diffs["data"], grads["data"][:10], rtol=1e-4, atol=1e-7)


def test_host_copies_stay_coherent_off_the_cpu(in_fixture_workdir, monkeypatch):
    """The GPU path (host copies of the parameters) run on the CPU: a write reaches the next forward, a solver
    update reaches the next read."""
    from netcompress.pycaffe import net as pnet

    monkeypatch.setattr(pnet, "_DIRECT_CPU_VIEWS", False)
    net = caffe.Net(DEPLOY, caffe.TEST, weights=WEIGHTS)
    bias = net.params["ip2"][1].data
    assert not np.shares_memory(bias, net.netcompress_net.layer("ip2").bias.detach().numpy())
    bias[...] = np.eye(10, dtype=np.float32)[4] * 100
    x = np.random.RandomState(0).rand(64, 1, 28, 28).astype(np.float32)
    assert (net.forward(data=x)["prob"].argmax(1) == 4).all()
    np.testing.assert_array_equal(net.netcompress_net.layer("ip2").bias.detach().numpy(), bias)


# ----------------------------------------------------------------------------------------------------------------
# Solvers
# ----------------------------------------------------------------------------------------------------------------

SOLVER = """net: "lenet/lenet_train_test.prototxt"
test_iter: 2 test_interval: 10 base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005
lr_policy: "inv" gamma: 0.0001 power: 0.75 display: 0 max_iter: 25 snapshot: 0
snapshot_prefix: "snap/lenet" snapshot_after_train: false random_seed: 1
"""


def test_sgd_solver_trains_lenet(in_fixture_workdir):
    os.makedirs("snap", exist_ok=True)
    (in_fixture_workdir / "pysolver.prototxt").write_text(SOLVER)
    solver = caffe.SGDSolver("pysolver.prototxt")
    assert isinstance(solver, caffe.SGDSolver) and solver.iter == 0 and solver.param.max_iter == 25
    assert solver.lr == pytest.approx(0.01)
    assert len(solver.test_nets) == 1
    test_w = solver.test_nets[0].params["conv1"][0].data
    assert np.shares_memory(test_w, solver.net.params["conv1"][0].data)  # the test net shares the weights
    before = test_w.copy()
    held = solver.net.blobs["ip2"].data  # an activation array a script keeps: CPU Caffe's is the blob's memory
    losses, held_seen = [], []
    for _ in range(20):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
        held_seen.append(held.copy())
    assert solver.iter == 20
    # The held array shows each step's values; a blob not asked for until now shows the last step's.
    assert not np.array_equal(held_seen[-1], held_seen[-2])
    assert held is solver.net.blobs["ip2"].data
    core = solver.netcompress_solver.net
    np.testing.assert_array_equal(held, core.blobs["ip2"].detach().numpy())
    np.testing.assert_array_equal(solver.net.blobs["conv1"].data, core.blobs["conv1"].detach().numpy())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert not np.array_equal(before, test_w)  # trained in place
    assert 0 < float(solver.test_nets[0].blobs["accuracy"].data) <= 1  # tested at iteration 10 (and 20)
    solver.snapshot()
    assert os.path.isfile("snap/lenet_iter_20.caffemodel") and os.path.isfile("snap/lenet_iter_20.solverstate")
    solver.step(2)
    assert solver.iter == 22
    solver.solve()
    assert solver.iter == 25
    other = caffe.get_solver("pysolver.prototxt")
    assert type(other) is caffe.SGDSolver
    other.restore("snap/lenet_iter_20.solverstate")
    assert other.iter == 20
    ref = caffe.Net(LENET, caffe.TEST, weights="snap/lenet_iter_20.caffemodel")
    assert np.array_equal(other.net.params["ip1"][0].data, ref.params["ip1"][0].data)


def test_solver_scenarios_of_pycaffe(tmp_path, monkeypatch):
    """test_solver.py: solve to max_iter, apply_update from a set diff, snapshot names, nets outliving the
    solver; and a net fed through its input blob trains on what the script writes."""
    monkeypatch.chdir(tmp_path)
    net_file = simple_net_file(tmp_path)
    (tmp_path / "s.prototxt").write_text(
        f"net: '{net_file}' test_iter: 10 test_interval: 10 base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 "
        "lr_policy: 'inv' gamma: 0.0001 power: 0.75 display: 100 max_iter: 100 snapshot_after_train: false "
        "snapshot_prefix: 'model' random_seed: 2")
    solver = caffe.SGDSolver(str(tmp_path / "s.prototxt"))
    rs = np.random.RandomState(0)
    for net in [solver.net, *solver.test_nets]:
        net.blobs["label"].data[...] = rs.randint(13, size=net.blobs["label"].data.shape)
    data = solver.net.layers[1].blobs[0].data[...]
    data[...] = 0
    solver.net.layers[1].blobs[0].diff[...] = 1
    solver.apply_update()
    assert np.abs(data - -0.01).max() < 1e-7
    solver.snapshot()
    assert os.path.isfile("model_iter_0.caffemodel") and os.path.isfile("model_iter_0.solverstate")
    calls = []
    solver.add_callback(lambda: calls.append("start"), lambda: calls.append("grad"))
    solver.solve()
    assert solver.iter == 100 and calls == ["start"] + ["grad"] * 100
    assert np.isfinite(solver.net.blobs["loss"].data)
    nets = [solver.net, *solver.test_nets]
    del solver
    assert all(np.isfinite(sum(float(p.data.sum() + p.diff.sum()) for ps in n.params.values() for p in ps))
               for n in nets)


def test_input_fed_solver_learns_what_the_script_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(textwrap.dedent("""\
        layer { name: "in" type: "Input" top: "x" top: "y"
                input_param { shape { dim: 8 dim: 3 } shape { dim: 8 dim: 1 } } }
        layer { name: "fc" type: "InnerProduct" bottom: "x" top: "p" inner_product_param { num_output: 1
                weight_filler { type: "constant" value: 0 } } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
        """))
    (tmp_path / "s.prototxt").write_text("net: 'net.prototxt' base_lr: 0.1 lr_policy: 'fixed' max_iter: 100 "
                                         "display: 0 snapshot_after_train: false random_seed: 1")
    solver = caffe.get_solver(str(tmp_path / "s.prototxt"))
    rs = np.random.RandomState(0)
    true_w = np.array([1.0, -2.0, 0.5], np.float32)
    for _ in range(60):
        x = rs.randn(8, 3).astype(np.float32)
        solver.net.blobs["x"].data[...] = x
        solver.net.blobs["y"].data[...] = (x @ true_w)[:, None]
        solver.step(1)
    np.testing.assert_allclose(solver.net.params["fc"][0].data.ravel(), true_w, atol=0.05)
    assert solver.net.blobs["loss"].data < 1e-2
    with pytest.raises(NotImplementedError, match="solver's net"):
        solver.net.blobs["x"].reshape(4, 3)
        solver.step(1)


# ----------------------------------------------------------------------------------------------------------------
# caffe.io
# ----------------------------------------------------------------------------------------------------------------

def test_transformer_order_of_operations():
    rs = np.random.RandomState(0)
    img = rs.rand(6, 5, 3).astype(np.float32)
    t = caffe.io.Transformer({"data": (1, 3, 6, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    mean = np.array([104.0, 117.0, 123.0])
    t.set_mean("data", mean)
    t.set_input_scale("data", 0.5)
    keep = img.copy()
    out = t.preprocess("data", img)
    expected = (img.transpose(2, 0, 1)[[2, 1, 0]] * 255 - mean[:, None, None]) * 0.5
    assert out.dtype == np.float32 and out.shape == (3, 6, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert np.array_equal(img, keep)
    np.testing.assert_allclose(t.deprocess("data", out[None]), img, rtol=1e-5, atol=1e-5)
    # an image mean of another size is resized to the input's
    t2 = caffe.io.Transformer({"data": (1, 3, 6, 5)})
    t2.set_mean("data", np.ones((3, 12, 10)) * np.array([100.0, 101.0, 102.0])[:, None, None])
    np.testing.assert_allclose(t2.mean["data"], np.ones((3, 6, 5)) * np.array([100.0, 101.0, 102.0])[:, None, None],
                               rtol=1e-6)
    # a constant mean image of another size stays that constant (pycaffe's normalisation divided by 0: NaN)
    t2.set_mean("data", np.full((3, 12, 10), 7.0))
    np.testing.assert_array_equal(t2.mean["data"], np.full((3, 6, 5), 7.0))
    with pytest.raises(ValueError, match="Mean channels"):
        t2.set_mean("data", np.zeros(4))
    with pytest.raises(ValueError, match="Mean channels"):  # an image of other channels (failed later, in preprocess)
        t2.set_mean("data", np.zeros((1, 6, 5)))
    with pytest.raises(ValueError, match="Mean shape invalid"):
        t2.set_mean("data", np.zeros((3, 0, 5)))
    for bad in (np.nan, np.inf):  # (pycaffe: numpy's warning, then every preprocessed value NaN)
        with pytest.raises(ValueError, match="Transformer.set_mean: the mean holds NaN or infinite values"):
            t2.set_mean("data", np.full((3, 6, 5), bad))
    zero = caffe.io.Transformer({"data": (1, 3, 6, 5)})
    zero.set_raw_scale("data", 0)  # (preprocess may: every value 0)
    assert not zero.preprocess("data", np.ones((6, 5, 3), np.float32)).any()
    with pytest.raises(ValueError, match="Transformer.deprocess: raw_scale of 'data' is 0: preprocess made every "
                                         "value 0, which cannot be undone"):  # (numpy's warning, NaN)
        zero.deprocess("data", np.zeros((3, 6, 5)))
    wide = np.zeros((3, 12, 10), np.float32)  # (of another size: resized through its span, which overflows
    wide[0, 0, 0], wide[0, 0, 1] = -3e38, 3e38  # float32: numpy's warning, a NaN mean)
    with pytest.raises(ValueError, match=r"the mean's values span \[-3e\+38, 3e\+38\], too wide for its type"):
        t2.set_mean("data", wide)
    t1 = caffe.io.Transformer({"data": (1, 1, 6, 5)})
    t1.set_mean("data", np.arange(12.0).reshape(3, 4))  # an H x W mean of another size (its transpose failed)
    assert t1.mean["data"].shape == (1, 6, 5)
    with pytest.raises(ValueError, match="not one of the net inputs"):
        t2.preprocess("label", img)
    with pytest.raises(ValueError, match="Transpose order"):
        t2.set_transpose("data", (1, 0))
    # an image of another size is resized before the transpose
    assert t.preprocess("data", rs.rand(12, 10, 3)).shape == (3, 6, 5)


def test_resize_image_is_scikit_images_bilinear_with_a_zero_border():
    im = np.array([[0.0, 1.0], [1.0, 1.0]])[:, :, None]  # in [0, 1]: no rescaling around it
    out = caffe.io.resize_image(im, (4, 4))
    # output pixel i samples input coordinate (i + 0.5) / 2 - 0.5: -0.25, 0.25, 0.75, 1.25
    w = np.array([[0.75, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 0.75]])  # weights of input pixels 0 and 1
    np.testing.assert_allclose(out[:, :, 0], w @ im[:, :, 0] @ w.T, rtol=1e-6)
    assert out.dtype == np.float32
    assert np.array_equal(caffe.io.resize_image(np.full((3, 3, 3), 0.4), (5, 2)), np.full((5, 2, 3), 0.4, np.float32))
    # the value range is kept: scaled to [0, 1] for the interpolation and back
    np.testing.assert_allclose(caffe.io.resize_image(im * 200 + 10, (4, 4)), out * 200 + 10, rtol=1e-5)


def test_resize_image_of_other_channel_counts_needs_scipy(monkeypatch):
    im = np.random.default_rng(0).random((4, 4, 5))
    monkeypatch.setitem(sys.modules, "scipy.ndimage", None)  # as if scipy were not installed
    with pytest.raises(ImportError, match=r"an image of 5 channels is resized by scipy.ndimage.zoom.*pip install"):
        caffe.io.resize_image(im, (8, 6))
    monkeypatch.undo()
    pytest.importorskip("scipy.ndimage", reason="scipy is not a netcompress dependency")
    assert caffe.io.resize_image(im, (8, 6)).shape == (8, 6, 5)  # scipy's zoom, as pycaffe


def test_oversample_crops_and_mirrors():
    im = np.arange(5 * 6 * 2, dtype=np.float32).reshape(5, 6, 2)
    crops = caffe.io.oversample([im, im + 1], (3, 4))
    assert crops.shape == (20, 3, 4, 2) and crops.dtype == np.float32
    corners = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]  # center corner: int(5/2 - 1.5), int(6/2 - 2)
    for k, (r, c) in enumerate(corners):
        assert np.array_equal(crops[k], im[r:r + 3, c:c + 4])
        assert np.array_equal(crops[5 + k], im[r:r + 3, c:c + 4][:, ::-1])
    assert np.array_equal(crops[10:], crops[:10] + 1)


def test_load_image_colour_gray_alpha_and_sixteen_bit(tmp_path):
    from PIL import Image

    rs = np.random.RandomState(0)
    rgb = rs.randint(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    img = caffe.io.load_image(str(tmp_path / "rgb.png"))
    assert img.dtype == np.float32 and img.shape == (7, 9, 3)
    np.testing.assert_allclose(img, rgb / 255.0, rtol=1e-6)
    gray = caffe.io.load_image(str(tmp_path / "rgb.png"), color=False)
    assert gray.shape == (7, 9, 1)
    np.testing.assert_allclose(gray[:, :, 0], (rgb / 255.0) @ [0.2125, 0.7154, 0.0721], rtol=1e-5)
    g = rs.randint(0, 256, (4, 5), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "g.png")
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "g.png")), np.repeat(g[:, :, None] / 255.0, 3, 2),
                               rtol=1e-6)
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "g.png"), color=False)[:, :, 0], g / 255.0,
                               rtol=1e-6)
    rgba = np.dstack([rgb, np.full((7, 9), 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "rgba.png")), rgb / 255.0, rtol=1e-6)
    g16 = (rs.randint(0, 65536, (3, 4))).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "g16.png"), color=False)[:, :, 0],
                               g16 / 65535.0, rtol=1e-6)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert caffe.io.load_image(str(tmp_path / "p.png")).shape == (7, 9, 3)


def test_blobproto_and_datum_round_trips():
    blob = pb.BlobProto()
    blob.data.extend(np.zeros(100).tolist())
    blob.num, blob.channels, blob.height, blob.width = 1, 1, 10, 10
    assert caffe.io.blobproto_to_array(blob).shape == (1, 1, 10, 10)
    blob = pb.BlobProto()
    blob.data.extend(np.zeros(100).tolist())
    blob.shape.dim.extend([10, 10])
    assert caffe.io.blobproto_to_array(blob).shape == (10, 10)
    blob = pb.BlobProto()
    blob.data.extend(np.zeros(100).tolist())
    with pytest.raises(ValueError):
        caffe.io.blobproto_to_array(blob)
    blob = pb.BlobProto()
    blob.data.append(123)
    assert caffe.io.blobproto_to_array(blob) == 123
    arr = np.random.RandomState(0).randn(2, 3, 4).astype(np.float32)
    back = caffe.io.blobproto_to_array(caffe.io.array_to_blobproto(arr, diff=2 * arr))
    assert back.dtype == np.float64 and np.array_equal(back, arr)
    assert np.array_equal(caffe.io.blobproto_to_array(caffe.io.array_to_blobproto(arr, 2 * arr), return_diff=True),
                          2 * arr)
    arrays = caffe.io.blobprotovector_str_to_arraylist(caffe.io.arraylist_to_blobprotovector_str([arr, arr[0]]))
    assert [a.shape for a in arrays] == [(2, 3, 4), (3, 4)] and np.array_equal(arrays[1], arr[0])
    d8 = np.random.RandomState(1).randint(0, 256, (3, 4, 5)).astype(np.uint8)
    datum = caffe.io.array_to_datum(d8, label=7)
    assert datum.data == d8.tobytes() and datum.label == 7 and not len(datum.float_data)
    assert np.array_equal(caffe.io.datum_to_array(datum), d8) and caffe.io.datum_to_array(datum).dtype == np.uint8
    assert np.array_equal(caffe.io.datum_to_array(caffe.io.array_to_datum(arr)), arr)
    assert len(caffe.io.array_to_datum(np.ones((10, 10, 3)), label=1).SerializeToString()) > \
        len(caffe.io.array_to_datum(np.ones((10, 10, 3))).SerializeToString())
    with pytest.raises(ValueError, match="Incorrect array shape"):
        caffe.io.array_to_datum(np.zeros((2, 2)))


# ----------------------------------------------------------------------------------------------------------------
# The rest of the module
# ----------------------------------------------------------------------------------------------------------------

def test_classifier_and_module_functions(in_fixture_workdir, caffe_split):
    clf = caffe.Classifier(DEPLOY, WEIGHTS, image_dims=(32, 32), raw_scale=1.0)
    images = [caffe_split["test_x"][i].transpose(1, 2, 0) / 255.0 for i in range(5)]
    probs = clf.predict(images, oversample=True)
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    assert clf.predict(images, oversample=False).shape == (5, 10)
    assert "Convolution" in caffe.layer_type_list() and caffe.TRAIN == 0 and caffe.TEST == 1
    caffe.set_mode_gpu()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            caffe.Net(DEPLOY, caffe.TEST)
    caffe.set_mode_cpu()
    assert issubclass(caffe.Detector, caffe.Net)  # tests/tools/test_detect.py
    timer = caffe.Timer()
    timer.start()
    timer.stop()
    assert timer.ms >= 0


def test_python_layer_imports_caffe_io_and_is_the_net_s_layer(tmp_path, monkeypatch):
    (tmp_path / "io_layer.py").write_text(textwrap.dedent('''\
        import caffe
        import caffe.io
        from caffe.proto import caffe_pb2


        class Double(caffe.Layer):
            def setup(self, bottom, top):
                self.calls = 0
                self.shape = caffe.io.blobproto_to_array(caffe.io.array_to_blobproto(bottom[0].data)).shape

            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)

            def forward(self, bottom, top):
                self.calls += 1
                top[0].data[...] = 2 * bottom[0].data

            def backward(self, top, propagate_down, bottom):
                bottom[0].diff[...] = 2 * top[0].diff
        '''))
    monkeypatch.chdir(tmp_path)
    had = {k: sys.modules.get(k) for k in ("caffe", "caffe.io", "caffe.proto", "caffe.proto.caffe_pb2")}
    try:
        (tmp_path / "n.prototxt").write_text(
            'force_backward: true input: "x" input_shape { dim: 2 dim: 3 }\n'
            'layer { type: "Python" name: "d" bottom: "x" top: "y"\n'
            '        python_param { module: "io_layer" layer: "Double" } }')
        net = caffe.Net(str(tmp_path / "n.prototxt"), caffe.TEST)
        layer = net.layers[1]
        assert type(layer).__name__ == "Double" and layer.shape == (2, 3) and layer.type == "Python"
        assert net.forward(x=np.ones((2, 3)))["y"].tolist() == [[2.0] * 3] * 2 and layer.calls == 1
        assert net.backward(y=np.ones((2, 3)))["x"].tolist() == [[2.0] * 3] * 2
    finally:
        sys.modules.pop("io_layer", None)
        for k, v in had.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


# ----------------------------------------------------------------------------------------------------------------
# A script's mistakes: a Python exception that says what was expected (found by random API misuse)
# ----------------------------------------------------------------------------------------------------------------
def test_net_and_solver_refuse_misuse_clearly(simple_net, tmp_path):
    net = simple_net
    with pytest.raises(ValueError, match="blob size exceeds INT_MAX"):  # (it took 8 GB and 18 s before)
        net.blobs["conv"].reshape(2 ** 31)
    with pytest.raises(ValueError, match="at most 32 axes"):
        caffe.Blob(tuple([1] * 33))
    with pytest.raises(ValueError, match="blob size exceeds INT_MAX"):  # (numpy's "array is too big" before)
        caffe.Blob((10**12, 0))  # as Caffe: each axis against the count before it
    assert caffe.Blob((0, 10**9)).count == 0
    with pytest.raises(TypeError, match="Net\\(stages=...\\) takes a list of stage names"):
        caffe.Net(DEPLOY, caffe.TEST, stages=np.array([1, 2]))  # (numpy's truth-value error before)
    assert caffe.Net(DEPLOY, caffe.TEST, stages=np.array(["a", "b"])).netcompress_net.param.state.stage == ["a", "b"]
    with pytest.raises(TypeError, match="share_with takes a caffe.Net, got str"):
        net.share_with("other.caffemodel")
    # a loss blob has no axes: its diff is one value (pycaffe indexed its empty shape)
    net.forward()
    once = net.backward(diffs=["data"])["data"].copy()
    twice = net.backward(diffs=["data"], loss=np.float32(2.0))["data"]  # (threaded sums: not bit for bit)
    np.testing.assert_allclose(twice, 2 * once, rtol=1e-5, atol=1e-6 * float(np.abs(once).max()))
    with pytest.raises(ValueError, match="Diff is not batch sized: 'loss' has shape \\[2\\]"):
        net.backward(loss=np.ones(2))
    deploy = caffe.Net(DEPLOY, caffe.TEST)
    with pytest.raises(ValueError, match=r"Input 'data' of shape \[64, 1, 27, 28\] does not fit .*\[64, 1, 28, 28\]"):
        deploy.forward(data=np.zeros((64, 1, 27, 28)))
    with pytest.raises(TypeError, match="Input 'data' takes real numbers, got an array of complex64"):
        deploy.forward(data=np.zeros((64, 1, 28, 28), np.complex64))
    with pytest.raises(KeyError, match="forward\\(blobs=...\\): 'conv9' is not a blob of net 'LeNet'"):
        deploy.forward(blobs=["conv9"])  # (checked before the net runs: it was a KeyError after the forward)
    with pytest.raises(TypeError, match=r"backward\(diffs=...\) takes a list of blob names, got the string 'data'"):
        net.backward(diffs="data")
    with pytest.raises(ValueError, match="'data' is a scalar"):
        deploy.forward_all(data=np.float32(1))
    with pytest.raises(ValueError, match="different numbers of samples .*'data' 3, 'label' 2"):
        net.forward_all(data=np.zeros((3, 2, 3, 4)), label=np.zeros((2, 1)))
    (tmp_path / "fed.prototxt").write_text(  # a net fed through Input whose output is its scalar loss
        'layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }'
        ' layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 2 } }'
        ' layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "y" top: "loss" }')
    fed = caffe.Net(str(tmp_path / "fed.prototxt"), caffe.TRAIN)
    out = fed.forward_all(blobs=["ip"], x=np.ones((5, 3)), y=np.zeros(5))  # (numpy's "zero-dimensional arrays
    assert out["loss"].shape == (3,) and out["ip"].shape == (5, 2)           # cannot be concatenated" before)
    (tmp_path / "memory.prototxt").write_text('layer { name: "d" type: "MemoryData" top: "data" top: "label" '
                                              'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }')
    memory = caffe.Net(str(tmp_path / "memory.prototxt"), caffe.TEST)
    with pytest.raises(TypeError, match="data array must be a numpy array, got list"):
        memory.set_input_arrays([[1.0]], np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="labels array must be a numpy array, got NoneType"):
        memory.set_input_arrays(np.zeros((2, 1, 2, 2), np.float32), None)
    with pytest.raises(ValueError, match="set_random_seed takes an integer seed, got 'a'"):
        caffe.set_random_seed("a")
    for bad in (-1, 2**32):  # (-1 gave fillers an unseeded, random stream; 2**64 was torch's overflow)
        with pytest.raises(ValueError, match=f"set_random_seed takes a seed from 0 to 4294967295 .*, got {bad}"):
            caffe.set_random_seed(bad)
    with pytest.raises(TypeError, match=r"Net\(level=...\) takes an integer, got \[1\]"):
        caffe.Net(DEPLOY, caffe.TEST, level=[1])
    with pytest.raises(ValueError, match=r"Net\(level=...\) takes a 32-bit integer"):  # (protobuf's range error)
        caffe.Net(DEPLOY, caffe.TEST, level=2**31)
    with pytest.raises(TypeError, match=r"Net\(stages=...\) takes a list of stage names, got 'deploy'"):
        caffe.Net(DEPLOY, caffe.TEST, stages="deploy")  # (a string is no list: it was its letters' stages)
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "simple.prototxt"}" base_lr: 0.01 '
                                              'lr_policy: "fixed" display: 0')
    solver = caffe.get_solver(os.fsencode(tmp_path / "solver.prototxt"))  # (a bytes path: as a str)
    with pytest.raises(ValueError, match=r"Solver.step\(2147483648\) from iteration 0 passes Caffe's int iteration counter"):  # (it ran for ever)
        solver.step(2 ** 31)
    for bad in (1.5, -1, "2"):
        with pytest.raises(ValueError, match="Solver.step takes a non-negative integer"):
            solver.step(bad)
    with pytest.raises(TypeError, match="share_weights takes a caffe.Net, got int"):
        solver.share_weights(3)
    assert solver.iter == 0


def test_classifier_predict_refuses_no_images_or_other_shapes(in_fixture_workdir, tmp_path):
    classifier = caffe.Classifier(DEPLOY, WEIGHTS)
    with pytest.raises(ValueError, match="predict needs at least one image"):
        classifier.predict([])
    with pytest.raises(ValueError, match=r"H x W x K images of one K: image 1 has shape \[28, 28\]"):
        classifier.predict([np.zeros((28, 28, 1)), np.zeros((28, 28))])
    for dims in (np.array([30, 31, 2]), "30", (0, 30)):  # (numpy's truth-value error, or int('/') at predict)
        with pytest.raises(ValueError, match=r"Classifier takes image_dims as \(height, width\)"):
            caffe.Classifier(DEPLOY, WEIGHTS, image_dims=dims)
    assert caffe.Classifier(DEPLOY, WEIGHTS, image_dims=np.array([30, 31])).predict(
        [np.zeros((28, 28, 1))]).shape == (1, 10)
    with pytest.raises(ValueError, match=r"image_dims \[10, 28\] are smaller than the net's input \[28, 28\]"):
        caffe.Classifier(DEPLOY, WEIGHTS, image_dims=(10, 28))  # (numpy's broadcast error in predict before)
    (tmp_path / "noinput.prototxt").write_text('name: "LeNet"\n')  # (a deploy net cut short: an IndexError)
    for cls in (caffe.Classifier, caffe.Detector):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: the net has no input blob to feed the images to"):
            cls(str(tmp_path / "noinput.prototxt"), WEIGHTS)


def test_io_refuses_misuse_clearly(tmp_path):
    with pytest.raises(TypeError, match="expected str, bytes or os.PathLike object, not int"):
        caffe.io.load_image(3)  # (PIL's "'int' object has no attribute 'read'" before)
    with pytest.raises(TypeError, match=r"Transformer takes \{input name: blob shape\}, got list"):
        caffe.io.Transformer([(1, 3, 4, 4)])
    h5py = pytest.importorskip("h5py")
    h5 = str(tmp_path / "weights.h5")
    with h5py.File(h5, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(OSError, match=f"cannot read '{re.escape(h5)}' as an image: cannot find loader"):
        caffe.io.load_image(h5)  # (Pillow's "cannot find loader for this HDF5 file" named no file)
    with pytest.raises(ValueError, match=r"the BlobProto's data holds 3 values, its shape \[2, 2\] needs 4"):
        caffe.io.blobproto_to_array(pb.BlobProto(data=[1, 2, 3], shape=pb.BlobShape(dim=[2, 2])))
    with pytest.raises(ValueError, match=r"the diff's shape \[3\] is not the array's \[2\]"):
        caffe.io.array_to_blobproto(np.zeros(2), np.zeros(3))
    for fn, arr in ((caffe.io.array_to_blobproto, np.zeros(2, np.complex128)),
                    (caffe.io.array_to_datum, np.zeros((1, 2, 2), np.complex64))):
        with pytest.raises(TypeError, match="takes real numbers, got an array of complex"):
            fn(arr)
    with pytest.raises(TypeError, match="array_to_blobproto takes real numbers, got an array of <U1"):
        caffe.io.array_to_blobproto(np.array(["x"]))  # (numpy's "could not convert string to float")
    assert caffe.io.blobproto_to_array(caffe.io.array_to_blobproto(np.array([1, 2], dtype=object))).tolist() == [1, 2]
    with pytest.raises(ValueError, match="label 1099511627776 is outside a Datum's 32-bit labels"):
        caffe.io.array_to_datum(np.zeros((1, 2, 2), np.uint8), 2**40)  # (protobuf's "Value out of range")
    with pytest.raises(ValueError, match=r"the shape of input 'data' must be a blob shape, e.g. \(N, K, H, W\); got 3"):
        caffe.io.Transformer({"data": 3})  # (an IndexError at set_channel_swap before)
    im = np.random.RandomState(0).rand(8, 8, 3).astype(np.float32)
    assert caffe.io.resize_image(im, np.array([4, 5])).shape == (4, 5, 3)
    assert caffe.io.resize_image(np.zeros((8, 8, 3), object), (4, 4)).shape == (4, 4, 3)  # (an object array)
    untransposed = caffe.io.Transformer({"data": (1, 3, 8, 8)})
    untransposed.set_mean("data", np.zeros(3))
    with pytest.raises(ValueError, match=r"is \[8, 8, 3\] after the transpose, its mean \[3, 1, 1\] .* is "
                                         r"set_transpose\(in_, \(2, 0, 1\)\) missing\?"):
        untransposed.preprocess("data", im)  # (numpy's "operands could not be broadcast together")
    for dims in ((4,), (0, 3), (4.5, 3), None):
        with pytest.raises(ValueError, match=r"resize_image takes new_dims as \(height, width\)"):
            caffe.io.resize_image(im, dims)
    with pytest.raises(ValueError, match=r"resize_image takes an H x W x K image, got an array of shape \[8, 8\]"):
        caffe.io.resize_image(im[:, :, 0], (4, 4))
    with pytest.raises(ValueError, match=r"crop_dims \[9, 9\] are larger than the images \(8 x 8\)"):
        caffe.io.oversample([im], (9, 9))
    with pytest.raises(ValueError, match=r"image 1 has shape \[4, 8, 3\], image 0 \[8, 8, 3\]"):
        caffe.io.oversample([im, im[:4]], (2, 2))
    assert caffe.io.oversample([im, np.zeros((9, 9, 3))], (4, 4)).shape == (20, 4, 4, 3)  # larger ones: as pycaffe
    t = caffe.io.Transformer({"data": (1, 3, 4, 4)})
    with pytest.raises(ValueError, match="each once; got \\(2, 2, 1\\)"):
        t.set_transpose("data", (2, 2, 1))
    with pytest.raises(ValueError, match="channel numbers 0 to 2; got \\(3, 1, 0\\)"):
        t.set_channel_swap("data", (3, 1, 0))
    with pytest.raises(TypeError, match="set_channel_swap takes integers"):  # (numpy's "only ... size 1" before)
        t.set_channel_swap("data", np.zeros((3, 2), int))
    for setter in (t.set_raw_scale, t.set_input_scale):
        for bad in (float("nan"), "255", None):
            with pytest.raises(ValueError, match="takes a finite number"):
                setter("data", bad)
    t.set_transpose("data", (2, 0, 1))
    assert t.preprocess("data", im).shape == (3, 4, 4)
    with pytest.raises(ValueError, match=r"has shape \[4, 4\]; its transpose \(2, 0, 1\) takes 3 axes"):
        t.preprocess("data", np.zeros((4, 4)))


def test_net_spec_and_coord_map_errors_name_the_layer_and_field():
    from netcompress.pycaffe import coord_map, layers as L

    def proto(**kw):
        n = caffe.NetSpec()
        n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
        n.c = L.Convolution(n.data, kernel_size=3, **kw)
        return n.to_proto()

    # (protobuf's words vary: "'str'", or "has type <class 'str'>")
    with pytest.raises(TypeError, match="layer 'c' \\(Convolution\\): convolution_param.num_output='4': .*\\bstr\\b"):
        proto(num_output="4")
    with pytest.raises(TypeError, match="ConvolutionParameter.num_output holds one value, not a list"):
        proto(num_output=[4])
    with pytest.raises(AttributeError, match="layer 'c' \\(Convolution\\): no field 'nmu_output' in "
                                             "convolution_param nor LayerParameter"):
        proto(nmu_output=4)
    with pytest.raises(AttributeError, match="weight_filler=.*FillerParameter has no field 'typ'"):
        proto(num_output=4, weight_filler=dict(typ="xavier"))
    layer = proto(num_output=4, name="conv", loss_weight=0.5, param=[dict(lr_mult=1), dict(lr_mult=2)]).layer[1]
    assert (layer.name, list(layer.loss_weight), [p.lr_mult for p in layer.param], layer.convolution_param.num_output) \
        == ("conv", [0.5], [1, 2], 4)  # fields of the layer itself still go there
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.relu = L.ReLU(n.data)
    with pytest.raises(coord_map.CoordMapError, match="nothing to crop"):  # (a TypeError on None + 1 before)
        coord_map.crop(n.relu, n.data)
    with pytest.raises(TypeError, match="top_to must be a net_spec Top"):
        coord_map.crop(n.relu, "data")
