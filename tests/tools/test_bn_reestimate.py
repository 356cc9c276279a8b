"""`bn_reestimate` (recipes-spec §4.7, §5.5): TRAIN-phase forwards with no update, PyTorch's running average of
the batch statistics (against an independent computation from the LMDB records), Caffe's (mean·s, var·s, s)
blobs, ActQuant calibration off and the best-test / last selection."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from netcompress import io as ncio
from netcompress.errors import NetcompressError
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.tools.bn_reestimate import bn_reestimate, main

NET = """
name: "bnre"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 } data_param { source: "@SRC@" batch_size: 4 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.00390625 } data_param { source: "@SRC@" batch_size: 6 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.2 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "bn1" batch_norm_param { moving_average_fraction: 0.9 } }
layer { name: "bn1_scale" type: "Scale" bottom: "bn1" top: "bn1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "bn1" top: "bn1" }
layer { name: "act1" type: "ActQuant" bottom: "bn1" top: "q1" act_quant_param { bitwidth: 4 } }
layer { name: "conv2" type: "QuantConvolution" bottom: "q1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } }
        weight_quant_param { bitwidth: 4 } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" @BN2@ }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "ip" type: "InnerProduct" bottom: "conv2" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include { phase: TEST } }
"""

N, B = 24, 4


@pytest.fixture
def setup(tmp_path, lmdb_writer, band_digits):
    imgs, labels = band_digits(N, 8)
    lmdb_writer(tmp_path / "lmdb", imgs, labels)

    def make(bn2="", calibrated=True):
        proto = tmp_path / "net.prototxt"
        proto.write_text(NET.replace("@SRC@", str(tmp_path / "lmdb")).replace("@BN2@", bn2))
        net = Net(str(proto), phase=pb.TRAIN, seed=2, verbose=False)
        with torch.no_grad():
            for name in ("bn1", "bn2"):
                bn = net.layer(name)
                bn.mean.fill_(0.3)       # statistics 0.1 and 2.0 stored with s = 3
                bn.variance.fill_(6.0)
                bn.scale_factor.fill_(3.0)
            if calibrated:
                net.layer("act1").alpha.fill_(0.05)
        model = tmp_path / "in.caffemodel"
        net.save(str(model))
        return str(proto), str(model), net

    return make, imgs


def expected_bn1(net, imgs, forwards, momentum=0.1):
    """The EMA of conv1's batch statistics over the records in LMDB order (wrapping), in float64."""
    w, b = net.layer("conv1").weight.detach(), net.layer("conv1").bias.detach()
    mean, var = np.full(3, 0.1), np.full(3, 2.0)
    for t in range(forwards):
        idx = [(t * B + k) % N for k in range(B)]
        x = torch.from_numpy(imgs[idx].astype(np.float32)) * 0.00390625
        y = F.conv2d(x, w, b).double().numpy()
        n = y.size // 3
        bm = y.mean(axis=(0, 2, 3))
        bv = y.var(axis=(0, 2, 3)) * n / (n - 1)
        mean = (1 - momentum) * mean + momentum * bm
        var = (1 - momentum) * var + momentum * bv
    return mean, var


def stored(path, layer):
    l = next(l for l in ncio.read_caffemodel(path).layer if l.name == layer)
    return [ncio.blob_to_array(b) for b in l.blobs]


def test_running_average_matches_an_independent_computation(setup, tmp_path):
    make, imgs = setup
    proto, model, net = make()
    out = str(tmp_path / "out.caffemodel")
    r = bn_reestimate(proto, model, out, epochs=2, select="last", seed=1)
    assert r["iters"] == N // B and r["layers"] == ["bn1", "bn2"] and r["selected"] == 2
    mean, var, s = stored(out, "bn1")
    assert s[0] == 3.0  # the loaded scale factor is kept
    em, ev = expected_bn1(net, imgs, 2 * N // B)
    np.testing.assert_allclose(mean / s[0], em, rtol=2e-5)
    np.testing.assert_allclose(var / s[0], ev, rtol=2e-5)
    # Caffe's BatchNorm (TEST phase) computes with those statistics
    test = Net(proto, phase=pb.TEST, weights=out, verbose=False)
    bn = test.layer("bn1")
    x = torch.randn(2, 3, 4, 4)
    ref = (x - torch.from_numpy(em).float().view(1, 3, 1, 1)) / torch.sqrt(torch.from_numpy(ev).float() + 1e-5).view(1, 3, 1, 1)
    torch.testing.assert_close(bn(x), ref, rtol=1e-4, atol=1e-5)
    # nothing else changed: no update, ActQuant alpha and w_alpha as loaded
    for layer in ("conv1", "conv2", "ip", "act1", "bn1_scale"):
        for a, b in zip(stored(out, layer), stored(model, layer)):
            np.testing.assert_array_equal(a, b)
    m2 = stored(out, "bn2")
    assert not np.allclose(m2[0] / m2[2], 0.1)  # the second BatchNorm was re-estimated too


def test_momentum_one_keeps_the_last_batch(setup, tmp_path):
    make, imgs = setup
    proto, model, net = make()
    out = str(tmp_path / "out.caffemodel")
    bn_reestimate(proto, model, out, epochs=1, select="last", momentum=1.0, iters=3)
    mean, var, s = stored(out, "bn1")
    em, ev = expected_bn1(net, imgs, 3, momentum=1.0)
    np.testing.assert_allclose(mean / s[0], em, rtol=2e-5)


def test_best_test_selection(setup, tmp_path):
    make, _ = setup
    proto, model, _ = make()
    out = str(tmp_path / "best.caffemodel")
    r = bn_reestimate(proto, model, out, epochs=3, select="best-test", seed=1)
    scores = r["scores"]
    assert len(scores) == 4 and r["test_iters"] == N // 6
    best = int(np.argmax(scores))  # the first maximum: a later epoch must be strictly better
    assert r["selected"] == best
    test = Net(proto, phase=pb.TEST, weights=out, verbose=False)
    acc = np.mean([float(test()["accuracy"]) for _ in range(r["test_iters"])])
    assert acc == pytest.approx(scores[best], abs=1e-6)


def test_frozen_batchnorm_is_left_alone_and_errors(setup, tmp_path, capsys, monkeypatch):
    make, _ = setup
    proto, model, _ = make(bn2="batch_norm_param { use_global_stats: true }")
    out = str(tmp_path / "out.caffemodel")
    r = bn_reestimate(proto, model, out, epochs=1, select="last")
    assert r["layers"] == ["bn1"]
    np.testing.assert_array_equal(stored(out, "bn2")[0], stored(model, "bn2")[0])
    proto, model, _ = make(calibrated=False)
    with pytest.raises(NetcompressError, match="ActQuant layer 'act1' holds no calibrated alpha"):
        bn_reestimate(proto, model, out, epochs=1)
    assert main([proto, model, out, "--momentum", "0"]) == 1
    assert "--momentum must be in (0, 1], got 0" in capsys.readouterr().err
    proto, model, _ = make()
    assert main([proto, model, out, "--metric", "nope"]) == 1
    assert "no output 'nope' to select by" in capsys.readouterr().err
    import netcompress.net as ncnet  # a TRAIN net whose blobs cannot fit is refused before its first forward
    monkeypatch.setattr(ncnet, "device_memory", lambda device: 64)
    assert main([proto, model, str(tmp_path / "big.caffemodel")]) == 1
    assert f"{proto}: the TRAIN net needs 0.0 GiB for its blobs and weights" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "big.caffemodel")


def test_command_prints_the_scores(setup, tmp_path, capsys):
    make, _ = setup
    proto, model, _ = make()
    out = str(tmp_path / "out.caffemodel")
    assert main([proto, model, out, "--epochs", "2", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "re-estimated 2 BatchNorm layers, 6 TRAIN forwards per epoch" in text
    assert "as loaded: accuracy = " in text and "epoch 2: accuracy = " in text and "<- written" in text
    assert f"Wrote {out}" in text
