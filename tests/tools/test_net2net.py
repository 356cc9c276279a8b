"""net2wider, net2deeper, net2net_mutate and net2net_search (recipes-spec 1.1, 1.2, 1.4, 5.5, T5)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from netcompress import cli
from netcompress import io as ncio
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.tools import net2net

REPO = Path(__file__).resolve().parents[2]
LENET = "lenet/lenet_train_test.prototxt"
LENET_W = "lenet/lenet_iter_5000.caffemodel"
TEACHER_ACC = 0.968  # caffe_test.log of the fixture


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def blobs(path: str) -> dict[str, list[np.ndarray]]:
    p = ncio.read_caffemodel(path)
    return {l.name: [ncio.blob_to_array(b) for b in l.blobs] for l in p.layer if len(l.blobs)}


def lenet_logits(prototxt: str, weights: str) -> tuple[np.ndarray, np.ndarray, float]:
    """ip2 on the 1,000 test digits (10 batches of 100), the labels, and the Accuracy layer's mean."""
    net = Net(prototxt, phase="test", verbose=False)
    net.copy_from(weights)
    logits, labels, acc = [], [], 0.0
    with torch.no_grad():
        for _ in range(10):
            out = net()
            logits.append(net.blobs["ip2"].double().numpy().copy())
            labels.append(net.blobs["label"].numpy().copy())
            acc += float(out["accuracy"])
    return np.concatenate(logits), np.concatenate(labels), acc / 10


_TEACHER: dict = {}


def teacher(workdir: Path):
    if "t" not in _TEACHER:
        _TEACHER["t"] = lenet_logits(LENET, LENET_W)
    return _TEACHER["t"]


def make_model(tmp_path: Path, text: str, seed: int = 0, name: str = "net") -> tuple[str, str]:
    """Write `text`, fill every blob with random values (BatchNorm: positive variances, scale
    factor 2) and save the model; returns (prototxt, caffemodel)."""
    proto = tmp_path / f"{name}.prototxt"
    proto.write_text(text)
    net = Net(str(proto), phase="test", verbose=False)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for _, layer in net.named_layers():
            for bn in layer.blob_names:
                t = getattr(layer, bn)
                if layer.type_name == "BatchNorm":
                    vals = {"mean": rng.standard_normal(t.shape), "variance": rng.uniform(0.5, 2, t.shape),
                            "scale_factor": np.full(t.shape, 2.0)}[bn]
                elif layer.type_name == "PReLU":
                    vals = rng.uniform(-0.5, 0.5, t.shape)
                else:
                    vals = rng.standard_normal(t.shape) * 0.3
                t.copy_(torch.as_tensor(vals, dtype=torch.float32))
    model = tmp_path / f"{name}.caffemodel"
    net.save(str(model))
    return str(proto), str(model)


def outputs(prototxt: str, weights: str, x: np.ndarray) -> dict[str, np.ndarray]:
    net = Net(prototxt, phase="test", verbose=False)
    net.copy_from(weights)
    with torch.no_grad():
        out = net(data=torch.as_tensor(x, dtype=torch.float32))
    return {k: v.double().numpy() for k, v in out.items()}


def assert_same_function(a: dict, b: dict, rel: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = max(1e-12, float(np.abs(a[k]).max()))
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=rel * scale, err_msg=k)


INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 10 dim: 10 } } }\n'


def conv(name, bottom, n, k=3, extra=""):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f'convolution_param {{ num_output: {n} kernel_size: {k} {extra} }} }}\n')


def ip(name, bottom, n, extra=""):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
            f'inner_product_param {{ num_output: {n} {extra} }} }}\n')


def layer(name, type_, bottoms, tops, extra=""):
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{type_}" {b} {t} {extra} }}\n'


# ----------------------------------------------------------------------------------------------
# T5 on the Caffe-trained LeNet
# ----------------------------------------------------------------------------------------------

T5_SURGERIES = {
    "wider_ip1": (net2net.net2wider_main, ["--layer", "ip1", "--width", "1000"]),
    "wider_conv1": (net2net.net2wider_main, ["--layer", "conv1", "--width", "40"]),
    "deeper_conv2": (net2net.net2deeper_main, ["--after", "conv2"]),
    "deeper_ip1": (net2net.net2deeper_main, ["--after", "ip1"]),
}


@pytest.mark.parametrize("surgery", list(T5_SURGERIES))
def test_t5_surgery_preserves_caffes_lenet_exactly(in_fixture_workdir, tmp_path, capsys, surgery):
    main, args = T5_SURGERIES[surgery]
    out_p, out_w = str(tmp_path / "s.prototxt"), str(tmp_path / "s.caffemodel")
    extra = ["--noise", "0", "--seed", "3"] if main is net2net.net2wider_main else []
    assert main([LENET, LENET_W, out_p, out_w] + args + extra) == 0
    printed = capsys.readouterr().out.splitlines()
    t_logits, t_labels, t_acc = teacher(in_fixture_workdir)
    assert round(t_acc, 6) == TEACHER_ACC
    logits, labels, acc = lenet_logits(out_p, out_w)
    np.testing.assert_array_equal(labels, t_labels)
    assert np.abs(logits - t_logits).max() <= 1e-5 * np.abs(t_logits).max()
    assert int((logits.argmax(1) == labels).sum()) == 968 and round(acc, 6) == TEACHER_ACC
    # the widened caffemodel loads into the TRAIN net as well (Caffe's own data layer set-up)
    Net(out_p, phase="train", weights=out_w, verbose=False)
    src, got = blobs(LENET_W), blobs(out_w)
    if surgery == "wider_ip1":
        assert printed[0].startswith("net2wider: layer 'ip1' (InnerProduct): 500 -> 1000 outputs (500 new units)")
        assert printed[1] == "  consumer 'ip2' (InnerProduct): 500 -> 1000 inputs"
        assert got["ip1"][0].shape == (1000, 800) and got["ip2"][0].shape == (10, 1000)
        pairs = printed[3].split(": ", 1)[1].split()
        g = [int(p.split("<-")[1]) for p in pairs]
        assert [int(p.split("<-")[0]) for p in pairs] == list(range(500, 1000))
        np.testing.assert_array_equal(got["ip1"][0][500:], src["ip1"][0][g])  # copies, no incoming noise
        np.testing.assert_array_equal(got["ip1"][1][500:], src["ip1"][1][g])
        for k in ("conv1", "conv2"):  # untouched layers keep their stored values
            for a, b in zip(src[k], got[k]):
                np.testing.assert_array_equal(a, b)
    elif surgery == "wider_conv1":
        assert printed[0].startswith("net2wider: layer 'conv1' (Convolution): 20 -> 40 outputs")
        assert printed[1] == "  consumer 'conv2' (Convolution): 20 -> 40 inputs"  # through pool1
        assert got["conv2"][0].shape == (50, 40, 5, 5)
    elif surgery == "deeper_conv2":
        assert printed[:2] == ["net2deeper: inserted 'conv2_deeper' (Convolution 50 -> 50, kernel 3, pad 1, "
                               "identity) after 'conv2'", "  no ReLU follows 'conv2', so none was added"]
        assert got["conv2_deeper"][0].shape == (50, 50, 3, 3)
    else:
        assert printed[:2] == ["net2deeper: inserted 'ip1_deeper' (InnerProduct 500 -> 500, identity) after "
                               "'relu1'", "  and 'ip1_deeper_relu' (ReLU, a copy of 'relu1')"]
        param = ncio.read_net(out_p)
        order = [l.name for l in param.layer]
        assert order[order.index("relu1") + 1: order.index("relu1") + 3] == ["ip1_deeper", "ip1_deeper_relu"]
        assert [l for l in param.layer if l.name == "ip2"][0].bottom[0] == "ip1_deeper"
        np.testing.assert_array_equal(got["ip1_deeper"][0], np.eye(500, dtype=np.float32))


@pytest.mark.parametrize("layer_, width", [("ip1", 1000), ("conv1", 40)])
def test_t5_default_noise_keeps_accuracy_within_0_3_points(in_fixture_workdir, tmp_path, capsys, layer_, width):
    out_p, out_w = str(tmp_path / "s.prototxt"), str(tmp_path / "s.caffemodel")
    assert net2net.net2wider_main([LENET, LENET_W, out_p, out_w, "--layer", layer_, "--width", str(width),
                                   "--seed", "5"]) == 0
    assert "noise 0.05, incoming noise 0, seed 5" in capsys.readouterr().out
    _, _, acc = lenet_logits(out_p, out_w)
    assert abs(acc - TEACHER_ACC) <= 0.003
    # Summed over a unit and its copies, the outgoing weights are the teacher's plus the copies' noise,
    # whose std is 0.05 of the divided copies' std (1.1-4).
    consumer = "ip2" if layer_ == "ip1" else "conv2"
    w0, w1 = blobs(LENET_W)[consumer][0], blobs(out_w)[consumer][0].astype(np.float64)
    old = w0.shape[1]
    # the same draw again, in memory: the copied units
    r = net2net.widen(net2net.load_model(LENET, LENET_W), layer_, width=width, seed=5)
    g = np.array(r.copied)
    counts = np.bincount(g, minlength=old) + 1
    np.testing.assert_allclose(w1[:, :old], w0 / counts.reshape(1, -1, *([1] * (w0.ndim - 2))), rtol=1e-6)
    expected = w0[:, g] / counts[g].reshape(1, -1, *([1] * (w0.ndim - 2)))
    noise = w1[:, old:] - expected
    assert abs(noise.std() / (0.05 * expected.std()) - 1) < 0.1
    summed = w1[:, :old].copy()
    np.add.at(summed, (slice(None), g), w1[:, old:])
    noise_per_unit = np.zeros_like(w0, dtype=np.float64)
    np.add.at(noise_per_unit, (slice(None), g), noise)
    np.testing.assert_allclose(summed, w0 + noise_per_unit, atol=1e-6)


def _finetune_loss(prototxt: str, weights: str) -> float:
    from netcompress.solvers import Solver

    sp = pb.SolverParameter(net=prototxt, base_lr=0.001, momentum=0.9, weight_decay=0.0, lr_policy="fixed",
                            max_iter=63, test_interval=0, display=0, snapshot=0, random_seed=1,
                            snapshot_after_train=False)
    sp.test_iter.append(10)
    s = Solver(sp, weights=weights, verbose=False)
    s.solve()
    return dict(s.test(0))["loss"]


@pytest.mark.slow
def test_t5_finetune_ordering_net2net_beats_random_baselines(in_fixture_workdir, tmp_path, capsys):
    """One epoch (63 iterations of 64) at lr 0.001, momentum 0.9, as the Keras example's students.
    As there, the wider student widens conv1 and ip1, the deeper one inserts after conv2 and ip1.
    Seeds calibrated once (surgery seed 11, solver seed 1); the ordering is what is asserted."""
    losses = {}
    for kind, init in (("wider", "net2wider"), ("wider", "random-pad"), ("deeper", "net2deeper"),
                       ("deeper", "random-init")):
        a_p, a_w = str(tmp_path / f"{init}_a.prototxt"), str(tmp_path / f"{init}_a.caffemodel")
        b_p, b_w = str(tmp_path / f"{init}_b.prototxt"), str(tmp_path / f"{init}_b.caffemodel")
        if kind == "wider":
            assert net2net.net2wider_main([LENET, LENET_W, a_p, a_w, "--layer", "conv1", "--width", "40",
                                           "--init", init, "--seed", "11"]) == 0
            assert net2net.net2wider_main([a_p, a_w, b_p, b_w, "--layer", "ip1", "--width", "1000",
                                           "--init", init, "--seed", "12"]) == 0
        else:
            assert net2net.net2deeper_main([LENET, LENET_W, a_p, a_w, "--after", "conv2", "--init", init,
                                            "--seed", "11"]) == 0
            assert net2net.net2deeper_main([a_p, a_w, b_p, b_w, "--after", "ip1", "--init", init,
                                            "--seed", "12"]) == 0
        losses[init] = _finetune_loss(b_p, b_w)
    capsys.readouterr()
    assert losses["net2wider"] <= losses["random-pad"], losses
    assert losses["net2deeper"] <= losses["random-init"], losses


# ----------------------------------------------------------------------------------------------
# net2wider on small nets: every channel-wise layer, Concat offsets, Flatten, several consumers
# ----------------------------------------------------------------------------------------------

CHANNELWISE = (INPUT + conv("side", "data", 3)  # a Concat input before the widened one: an offset
               + conv("c1", "data", 5)
               + layer("bn", "BatchNorm", ["c1"], ["c1"], "batch_norm_param { use_global_stats: true }")
               + layer("sc", "Scale", ["c1"], ["c1"], "scale_param { bias_term: true }")
               + layer("bias", "Bias", ["c1"], ["c1"])
               + layer("pr", "PReLU", ["c1"], ["c1"])
               + layer("pool", "Pooling", ["c1"], ["p1"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
               + layer("side_pool", "Pooling", ["side"], ["sp"], "pooling_param { pool: AVE kernel_size: 2 stride: 2 }")
               + layer("drop", "Dropout", ["p1"], ["p1"])
               + layer("cat", "Concat", ["sp", "p1"], ["cat"])
               + conv("c2", "cat", 6, k=1)  # reads the Concat
               + layer("flat", "Flatten", ["cat"], ["flat"])
               + ip("fc", "flat", 7)  # a channel owns 16 consecutive inputs
               + ip("fct", "p1", 2, "transpose: true"))  # weights [K, N]


def test_net2wider_follows_channelwise_layers_to_every_consumer(tmp_path, capsys):
    proto, model = make_model(tmp_path, CHANNELWISE, seed=1)
    out_p, out_w = str(tmp_path / "w.prototxt"), str(tmp_path / "w.caffemodel")
    assert net2net.net2wider_main([proto, model, out_p, out_w, "--layer", "c1", "--width", "9", "--noise", "0",
                                   "--seed", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:4] == ["  consumer 'c2' (Convolution): 8 -> 12 inputs",
                          "  consumer 'fc' (InnerProduct): 128 -> 192 inputs",
                          "  consumer 'fct' (InnerProduct): 80 -> 144 inputs"]
    assert lines[4:8] == ["  per-channel state of 'bn' replicated: BatchNorm mean, variance",
                          "  per-channel state of 'sc' replicated: Scale gamma, beta",
                          "  per-channel state of 'bias' replicated: Bias",
                          "  per-channel state of 'pr' replicated: PReLU slopes"]
    x = np.random.default_rng(0).standard_normal((4, 3, 10, 10))
    assert_same_function(outputs(proto, model, x), outputs(out_p, out_w, x))
    src, got = blobs(model), blobs(out_w)
    g = [int(p.split("<-")[1]) for p in lines[-2].split(": ", 1)[1].split()]
    idx = list(range(5)) + g
    np.testing.assert_array_equal(got["pr"][0], src["pr"][0][idx])  # Q1: slopes kept and replicated
    np.testing.assert_array_equal(got["bn"][0], src["bn"][0][idx])
    np.testing.assert_array_equal(got["bn"][1], src["bn"][1][idx])
    np.testing.assert_array_equal(got["bn"][2], src["bn"][2])  # the scale factor is unchanged
    np.testing.assert_array_equal(got["sc"][1], src["sc"][1][idx])
    # Concat: the side branch keeps channels 0..2, the widened ones follow, new ones at the end
    c2, c2s = got["c2"][0][:, :, 0, 0], src["c2"][0][:, :, 0, 0]
    np.testing.assert_array_equal(c2[:, :3], c2s[:, :3])
    counts = np.bincount(g, minlength=5) + 1
    np.testing.assert_allclose(c2[:, 3:8], c2s[:, 3:8] / counts, rtol=1e-6)
    np.testing.assert_allclose(c2[:, 8:], c2s[:, 3:8][:, g] / counts[g], rtol=1e-6)
    assert got["fct"][0].shape == (144, 2)


def test_net2wider_split_to_two_consumers(tmp_path, capsys):
    text = INPUT + conv("c1", "data", 4) + layer("r", "ReLU", ["c1"], ["c1"]) + conv("a", "c1", 3) + conv("b", "c1", 2)
    proto, model = make_model(tmp_path, text, seed=3)
    out_p, out_w = str(tmp_path / "w.prototxt"), str(tmp_path / "w.caffemodel")
    assert net2net.net2wider_main([proto, model, out_p, out_w, "--layer", "c1", "--ratio", "2.6", "--noise", "0",
                                   "--seed", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("net2wider: layer 'c1' (Convolution): 4 -> 10 outputs (6 new units)")
    assert lines[1:3] == ["  consumer 'a' (Convolution): 4 -> 10 inputs", "  consumer 'b' (Convolution): 4 -> 10 inputs"]
    x = np.random.default_rng(1).standard_normal((4, 3, 10, 10))
    assert_same_function(outputs(proto, model, x), outputs(out_p, out_w, x))


def test_random_pad_baseline(tmp_path, capsys):
    text = INPUT + conv("c1", "data", 4) + layer("flat", "Flatten", ["c1"], ["flat"]) + ip("fc", "flat", 300)
    text += ip("out", "fc", 400)
    proto, model = make_model(tmp_path, text, seed=4)
    out_p, out_w = str(tmp_path / "w.prototxt"), str(tmp_path / "w.caffemodel")
    assert net2net.net2wider_main([proto, model, out_p, out_w, "--layer", "fc", "--width", "600",
                                   "--init", "random-pad", "--seed", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("net2wider: layer 'fc' (InnerProduct): 300 -> 600 outputs (300 new units), "
                        "init random-pad, seed 0")
    assert lines[2] == "  new units: 300 random units (weights N(0, 0.1^2), biases 0.1); no unit copied"
    src, got = blobs(model), blobs(out_w)
    np.testing.assert_array_equal(got["fc"][0][:300], src["fc"][0])  # the originals untouched
    np.testing.assert_array_equal(got["fc"][1][:300], src["fc"][1])
    np.testing.assert_array_equal(got["out"][0][:, :300], src["out"][0])
    np.testing.assert_array_equal(got["fc"][1][300:], np.float32(0.1))
    for new in (got["fc"][0][300:], got["out"][0][:, 300:]):
        assert abs(new.mean()) < 0.005 and abs(new.std() - 0.1) < 0.005


def test_incoming_noise_is_off_by_default_and_a_switch(tmp_path, capsys):
    text = INPUT + conv("c1", "data", 8) + conv("c2", "c1", 2)
    proto, model = make_model(tmp_path, text, seed=5)
    src = blobs(model)
    for extra, noisy in (([], False), (["--incoming-noise", "0.05"], True)):
        out_p, out_w = str(tmp_path / "w.prototxt"), str(tmp_path / "w.caffemodel")
        assert net2net.net2wider_main([proto, model, out_p, out_w, "--layer", "c1", "--width", "400",
                                       "--seed", "1"] + extra) == 0
        g = [int(p.split("<-")[1]) for p in capsys.readouterr().out.splitlines()[-2].split(": ", 1)[1].split()]
        got = blobs(out_w)
        copied = src["c1"][0][g].astype(np.float64)
        diff = got["c1"][0][8:] - copied
        if not noisy:
            assert np.all(diff == 0) and np.all(got["c1"][1][8:] == src["c1"][1][g])
        else:
            assert abs(diff.std() / (0.05 * copied.std()) - 1) < 0.1
            assert np.any(got["c1"][1][8:] != src["c1"][1][g])


# ----------------------------------------------------------------------------------------------
# Refusals: each names the layer
# ----------------------------------------------------------------------------------------------

REFUSALS = {
    "lrn": (INPUT + conv("c1", "data", 4) + layer("norm", "LRN", ["c1"], ["n"], "lrn_param { local_size: 3 }")
            + conv("c2", "n", 2), "c1",
            "layer 'norm' (LRN) normalizes ACROSS_CHANNELS, so a copied channel would change its neighbours' "
            "outputs (it reads the widened blob 'c1'); net2wider refuses it"),
    "eltwise": (INPUT + conv("c1", "data", 4) + conv("c0", "data", 4)
                + layer("sum", "Eltwise", ["c1", "c0"], ["s"]) + conv("c2", "s", 2), "c1",
                "layer 'sum' (Eltwise) combines the widened blob element-wise with 'c0', whose channels would no "
                "longer line up (it reads the widened blob 'c1'); net2wider refuses it"),
    "slice": (INPUT + conv("c1", "data", 4) + layer("sl", "Slice", ["c1"], ["s1", "s2"], "slice_param { slice_point: 2 }")
              + conv("c2", "s1", 2) + conv("c3", "s2", 2), "c1",
              "layer 'sl' (Slice) slices the widened blob, so its slice points would move (it reads the widened "
              "blob 'c1'); net2wider refuses it"),
    "group_consumer": (INPUT + conv("c1", "data", 4) + conv("c2", "c1", 2, extra="group: 2"), "c1",
                       "layer 'c2' (Convolution) is a group convolution (group 2): the copied channels would be "
                       "read by another group (it reads the widened blob 'c1'); net2wider refuses it"),
    "group_widened": (INPUT + conv("c1", "data", 6, extra="group: 3") + conv("c2", "c1", 2), "c1",
                      "layer 'c1' (Convolution) has group 3: net2wider refuses group convolutions"),
    "output": (INPUT + conv("c1", "data", 4) + ip("fc", "c1", 3), "fc",
               "the outputs of 'fc' reach the net output 'fc'"),
    "loss": (INPUT.replace('top: "data" input_param { shape {', 'top: "data" top: "label" input_param { shape {')
             .replace("dim: 10 } }", "dim: 10 } shape { dim: 4 } }")
             + ip("fc", "data", 3) + layer("loss", "SoftmaxWithLoss", ["fc", "label"], ["loss"]), "fc",
             "the outputs of 'fc' reach layer 'loss' (SoftmaxWithLoss) through blob 'fc'"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_net2wider_refusals_name_the_layer(tmp_path, capsys, case):
    text, target, message = REFUSALS[case]
    proto, model = make_model(tmp_path, text, seed=6)
    out_p, out_w = tmp_path / "w.prototxt", tmp_path / "w.caffemodel"
    rc = net2net.net2wider_main([proto, model, str(out_p), str(out_w), "--layer", target, "--width", "12"])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and err.startswith("Error: ")
    assert not out_p.exists() and not out_w.exists()


def test_the_tools_refuse_layers_that_share_a_name(tmp_path, capsys):
    # (net2wider raised AttributeError: the name found the last layer so named, here the second, a ReLU)
    text = INPUT + conv("c1", "data", 4) + layer("c1", "ReLU", ["c1"], ["c1"]) + conv("c2", "c1", 2)
    proto, model = make_model(tmp_path, text, seed=6)
    o = [str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel")]
    assert net2net.net2wider_main([proto, model, *o, "--layer", "c1", "--width", "8"]) == 1
    assert "more than one layer of the TEST-phase net is named 'c1'; the Net2Net tools find layers by name" \
        in capsys.readouterr().err
    assert net2net.net2deeper_main([proto, model, *o, "--after", "c2"]) == 1
    assert "is named 'c1'" in capsys.readouterr().err
    assert not Path(o[0]).exists() and not Path(o[1]).exists()


def test_net2wider_refuses_a_train_only_consumer(tmp_path, capsys):
    text = (INPUT + conv("c1", "data", 4) + conv("c2", "c1", 2)
            + conv("aux", "c1", 2).replace("} }\n", "} include { phase: TRAIN } }\n"))
    proto, model = make_model(tmp_path, text, seed=6)
    o = [str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel")]
    assert net2net.net2wider_main([proto, model, *o, "--layer", "c1", "--width", "8"]) == 1
    assert ("layer 'aux' (Convolution) reads the widened blob 'c1' in the TRAIN phase only"
            in capsys.readouterr().err)


def test_net2wider_refuses_dns_layers(tmp_path, capsys):
    text = INPUT + conv("c1", "data", 4).replace('"Convolution"', '"DNSConvolution"') + conv("c2", "c1", 2)
    proto, model = make_model(tmp_path, text, seed=6)
    o = [str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel")]
    assert net2net.net2wider_main([proto, model, *o, "--layer", "c1", "--width", "8"]) == 1
    assert "layer 'c1' is a DNSConvolution layer; net2wider widens Convolution and InnerProduct" in capsys.readouterr().err


def test_net2wider_argument_errors(tmp_path, capsys):
    proto, model = make_model(tmp_path, INPUT + conv("c1", "data", 4) + conv("c2", "c1", 2))
    o = [str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel")]
    assert net2net.net2wider_main([proto, model, *o, "--layer", "c1", "--width", "4"]) == 1
    assert "layer 'c1' has 4 outputs; the new width must be larger, got 4" in capsys.readouterr().err
    assert net2net.net2wider_main([proto, model, *o, "--layer", "nope", "--width", "8"]) == 1
    assert "no layer 'nope' in the TEST-phase net" in capsys.readouterr().err
    assert net2net.net2wider_main([proto, model, *o, "--layer", "c1"]) == 2  # --width or --ratio is required
    assert net2net.net2wider_main([proto, str(tmp_path / "missing.caffemodel"), *o, "--layer", "c1",
                                   "--width", "8"]) == 1
    assert "missing.caffemodel does not exist!" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# net2deeper on small nets
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("act, message", [
    ('layer { name: "pr" type: "PReLU" bottom: "c1" top: "c1" }', "'pr', a PReLU activation"),
    ('layer { name: "sg" type: "Sigmoid" bottom: "c1" top: "c1" }', "'sg', a Sigmoid activation"),
    ('layer { name: "lk" type: "ReLU" bottom: "c1" top: "c1" relu_param { negative_slope: 0.1 } }',
     "'lk', a leaky ReLU (negative_slope 0.1)"),
])
def test_net2deeper_refuses_other_activations(tmp_path, capsys, act, message):
    proto, model = make_model(tmp_path, INPUT + conv("c1", "data", 4) + act + "\n" + conv("c2", "c1", 2))
    rc = net2net.net2deeper_main([proto, model, str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel"),
                                  "--after", "c1"])
    err = capsys.readouterr().err
    assert rc == 1 and f"layer 'c1' is followed by {message}; net2deeper needs a plain ReLU or no activation" in err


def test_net2deeper_conv_with_relu_kernel_name_and_random_init(tmp_path, capsys):
    text = INPUT + conv("c1", "data", 4, extra='weight_filler { type: "xavier" }') + layer("r1", "ReLU", ["c1"], ["c1"])
    text += conv("c2", "c1", 2)
    proto, model = make_model(tmp_path, text, seed=7)
    out_p, out_w = str(tmp_path / "d.prototxt"), str(tmp_path / "d.caffemodel")
    assert net2net.net2deeper_main([proto, model, out_p, out_w, "--after", "c1", "--kernel", "5",
                                    "--name", "grown"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "net2deeper: inserted 'grown' (Convolution 4 -> 4, kernel 5, pad 2, identity) after 'r1'",
        "  and 'grown_relu' (ReLU, a copy of 'r1')"]
    x = np.random.default_rng(2).standard_normal((4, 3, 10, 10))
    assert_same_function(outputs(proto, model, x), outputs(out_p, out_w, x))
    w = blobs(out_w)["grown"][0]
    assert w.shape == (4, 4, 5, 5) and w.sum() == 4 and np.all(w[:, :, 2, 2] == np.eye(4))
    # random-init: the fillers of the layer it follows (xavier), seeded
    outs = []
    for k in range(2):
        p, m = str(tmp_path / f"r{k}.prototxt"), str(tmp_path / f"r{k}.caffemodel")
        assert net2net.net2deeper_main([proto, model, p, m, "--after", "c1", "--init", "random-init",
                                        "--seed", "9"]) == 0
        outs.append(blobs(m)["c1_deeper"])
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    bound = np.sqrt(3.0 / (4 * 3 * 3))
    assert np.abs(outs[0][0]).max() <= bound and outs[0][0].std() > bound / 3
    np.testing.assert_array_equal(outs[0][1], 0)
    # errors
    assert net2net.net2deeper_main([proto, model, out_p, out_w, "--after", "c1", "--kernel", "4"]) == 1
    assert "--kernel must be a positive odd number" in capsys.readouterr().err
    assert net2net.net2deeper_main([proto, model, out_p, out_w, "--after", "c1", "--name", "c2"]) == 1
    assert "--name c2: a layer or blob of that name exists already" in capsys.readouterr().err
    assert net2net.net2deeper_main([proto, model, out_p, out_w, "--after", "r1"]) == 1
    assert "layer 'r1' is a ReLU layer; net2deeper inserts after Convolution and InnerProduct" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Mutation
# ----------------------------------------------------------------------------------------------

GA_NET = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 32 dim: 32 } } }\n'
          + conv("c1", "data", 6, extra="pad: 1") + layer("r1", "ReLU", ["c1"], ["c1"])
          + layer("p1", "Pooling", ["c1"], ["p1"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
          + conv("c2", "p1", 5, extra="pad: 1") + layer("r2", "ReLU", ["c2"], ["c2"])
          + conv("c3", "c2", 4, extra="pad: 1")
          + layer("gp", "Pooling", ["c3"], ["gp"], "pooling_param { pool: MAX global_pooling: true }")
          + ip("fc", "gp", 3))


def test_operation_weights_follow_the_seed(tmp_path):
    proto, model = make_model(tmp_path, GA_NET, seed=8)
    m = net2net.load_model(proto, model)
    # 32x32: P_lim = floor(log2 32) - 2 = 3; P = 1 max pooling (the global one is not counted); depth 3
    assert net2net.op_weights(m, net2net.MUTATION_OPS) == {
        "deeper": 10, "deeper_pool": 17, "wider": 10, "skip": 2, "group": 2}


def test_lenet_op_weights(in_fixture_workdir):
    m = net2net.load_model(LENET, LENET_W)
    # 28x28: P_lim = 4 - 2 = 2 = P, so no more poolings; depth 2
    assert net2net.op_weights(m, ["deeper_pool", "wider", "skip"]) == {"deeper_pool": 0, "wider": 10, "skip": 2}


@pytest.mark.parametrize("op", ["deeper", "skip", "group", "wider", "deeper_pool"])
def test_each_mutation_writes_a_loadable_model(tmp_path, capsys, op):
    proto, model = make_model(tmp_path, GA_NET, seed=9)
    out = tmp_path / "child"
    assert net2net.net2net_mutate_main([proto, model, str(out), "--ops", op, "--seed", "4", "--max-width", "12"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"net2net_mutate: {op}")
    info = json.loads((out / "mutation.json").read_text())
    assert info["op"] == op and info["seed"] == 4
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32))
    a, b = outputs(proto, model, x), outputs(str(out / "net.prototxt"), str(out / "net.caffemodel"), x)
    if op in ("deeper", "skip", "group"):  # function-preserving insertions
        assert_same_function(a, b)
    assert info["params_after"] > info["params_before"]
    types = [l.type for l in ncio.read_net(str(out / "net.prototxt")).layer]
    assert {"skip": "Eltwise", "group": "Concat", "deeper_pool": "Pooling"}.get(op, "Convolution") in types


def test_mutation_refuses_unknown_ops(tmp_path, capsys):
    proto, model = make_model(tmp_path, GA_NET, seed=9)
    assert net2net.net2net_mutate_main([proto, model, str(tmp_path / "o"), "--ops", "deeper,shrink"]) == 1
    assert "--ops: unknown operation(s) shrink" in capsys.readouterr().err


@pytest.mark.parametrize("tool, extra, said", [
    # (each was an unexpected error, numpy's 29 TiB "out of memory" or, for the noises, a model of NaN weights)
    ("net2wider", ["--layer", "ip1", "--ratio", "nan"], "--ratio must be a finite number above 1, got nan"),
    ("net2wider", ["--layer", "ip1", "--ratio", "inf"], "--ratio must be a finite number above 1, got inf"),
    ("net2wider", ["--layer", "ip1", "--ratio", "1e300"], "a width of 5e+302 is more than a Caffe blob's"),
    ("net2wider", ["--layer", "ip1", "--width", "3000000"],
     "layer 'ip1' widened to 3000000 outputs would hold 2,400,000,000 weights, more than a Caffe blob's"),
    ("net2wider", ["--layer", "conv2", "--width", "400000"],
     "layer 'ip1' reading the 6400000 inputs of the widened 'conv2' would hold 3,200,000,000 weights"),
    ("net2wider", ["--layer", "ip1", "--width", "600", "--noise", "inf"],
     "--noise and --incoming-noise must be finite and >= 0, got inf and 0"),
    ("net2wider", ["--layer", "ip1", "--width", "600", "--incoming-noise", "nan"],
     "--noise and --incoming-noise must be finite and >= 0, got 0.05 and nan"),
    # (each blob fits, the model does not: a caffemodel past 2 GiB could not be written, the widened conv2's weights
    # took about 40 bytes of memory a value on the way; --width 3000000 of a 20-output ip1 was killed for memory)
    ("net2wider", ["--layer", "conv2", "--width", "100000"],
     "widening 'conv2' to 100000 outputs would make a model of 850,106,030 values, 3.2 GiB as a caffemodel: more "
     "than the 2,147,483,647 bytes a caffemodel may have"),
    ("net2deeper", ["--after", "conv1", "--kernel", "2001"],
     "a 2001x2001 convolution of 20 channels would make a model of 1,602,031,500 values, 6.0 GiB as a caffemodel"),
    ("net2deeper", ["--after", "conv1", "--kernel", "99999"],
     "layer 'conv1_deeper' (20 channels, --kernel 99999) would hold 3,999,920,000,400 weights"),
    ("net2deeper", ["--after", "conv1", "--kernel", str(2**32 + 1)], "--kernel 4294967297) would hold"),
    ("net2deeper", ["--after", "conv1", "--name", ""], "--name must name the new layer, got ''"),
])
def test_surgery_refuses_values_out_of_range(in_fixture_workdir, tmp_path, capsys, tool, extra, said):
    main = {"net2wider": net2net.net2wider_main, "net2deeper": net2net.net2deeper_main}[tool]
    out_p, out_w = str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel")
    assert main([LENET, LENET_W, out_p, out_w] + extra) == 1
    assert said in capsys.readouterr().err
    assert not os.path.exists(out_p) and not os.path.exists(out_w)


def test_search_refuses_bad_arguments_before_it_scores(in_fixture_workdir, tmp_path, capsys):
    # (--ops and --max-width were checked by the first mutation, after the start model's test run; a
    # negative --seed was numpy's "expected non-negative integer" as an unexpected error; --iters past
    # INT_MAX protobuf's range error on the child solver)
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "lenet/lenet_train_test.prototxt"\ntest_iter: 2\nbase_lr: 0.001\nmax_iter: 3\n')
    out = tmp_path / "search"
    for extra, said in ((["--ops", "bogus"], "--ops: unknown operation(s) bogus; choose from deeper"),
                        (["--max-width", "0"], "--max-width must be at least 1, got 0"),
                        (["--iters", str(2**31)], "--iters takes at most 2147483647"),
                        (["--seed", "-1"], "argument --seed: a seed is an integer from 0 to 9223372036854775807, "
                                           "got -1")):
        rc = net2net.net2net_search_main([LENET, LENET_W, str(solver), str(out)] + extra)
        assert rc == (2 if extra[0] == "--seed" else 1)  # (argparse's usage error)
        err = capsys.readouterr()
        assert said in err.err and "generation 0" not in err.out, (extra, err)
        assert not out.exists()  # nothing written
    with pytest.raises(net2net.ToolError, match="a seed is an integer from 0 to 9223372036854775807, got -3"):
        net2net.mutate(net2net.load_model(LENET, LENET_W), seed=-3)


def test_search_log_json_and_plot(in_fixture_workdir, tmp_path, capsys):
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "lenet/lenet_train_test.prototxt"\ntest_iter: 2\ntest_interval: 0\nbase_lr: 0.001\n'
                      'momentum: 0.9\nlr_policy: "fixed"\nmax_iter: 3\ndisplay: 0\nrandom_seed: 1\n')
    out = tmp_path / "search"
    assert net2net.net2net_search_main([LENET, LENET_W, str(solver), str(out), "--generations", "2",
                                        "--population", "1", "--ops", "deeper", "--seed", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    log = (out / "search.log").read_text().splitlines()
    assert log == printed
    assert log[1].startswith("#0   generation 0  start") and "acc 0.9600" in log[1]  # 2 batches of 100
    assert log[2].startswith("#1   generation 1  from #0: deeper after ")
    assert log[3].startswith("     generation 1 keeps #")
    s = json.loads((out / "search.json").read_text())
    assert [r["id"] for r in s["individuals"]] == [0, 1, 2]
    assert s["individuals"][2]["parent"] in (0, 1)
    for r in s["individuals"][1:]:
        assert os.path.isfile(r["weights"]) and r["params"] > s["individuals"][0]["params"]
        # a net2deeper child starts as its parent
        assert r["accuracy_after_mutation"] == pytest.approx(s["individuals"][r["parent"]]["accuracy"])
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"
    train_log = (out / "ind1" / "train.log").read_text()  # the fine-tuning's own log, in glog format
    assert "Solving LeNet" in train_log and "Snapshotting to binary proto file" in train_log
    assert log[-2].startswith(f"best: #{s['best']} ")


# ----------------------------------------------------------------------------------------------
# Scripts and subcommands
# ----------------------------------------------------------------------------------------------

def test_scripts_and_subcommands(tmp_path, capsys):
    from netcompress.commands import COMMANDS

    for name in ("net2wider", "net2deeper", "net2net_mutate", "net2net_search"):
        assert name in COMMANDS, name
        assert (REPO / "compression_scripts" / f"{name}.py").is_file(), name
    proto, model = make_model(tmp_path, INPUT + conv("c1", "data", 4) + conv("c2", "c1", 2))
    assert cli.main(["net2deeper", proto, model, str(tmp_path / "d.prototxt"), str(tmp_path / "d.caffemodel"),
                     "--after", "c1"]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout, whatever is installed
    r = subprocess.run([sys.executable, str(REPO / "compression_scripts" / "net2wider.py"), proto, model,
                        str(tmp_path / "w.prototxt"), str(tmp_path / "w.caffemodel"), "--layer", "c1",
                        "--width", "6", "--seed", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("net2wider: layer 'c1' (Convolution): 4 -> 6 outputs (2 new units)")
