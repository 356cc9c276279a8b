"""ε-ResNet generator and `compress_epsilon_resnet` (recipes-spec §3.5, §5.5, T8), the BVLC check."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from netcompress import io as ncio
from netcompress.errors import NetcompressError
from netcompress.log import GlogFormatter
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.tools._common import ToolError
from netcompress.tools.bvlc_check import BVLC_LAYER_TYPES, check_bvlc_net
from netcompress.tools.eresnet import (compress_epsilon_resnet, compress_epsilon_resnet_main, find_blocks,
                                       make_epsilon_resnet, make_epsilon_resnet_main, read_discard_log)

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------
# The generator
# ------------------------------------------------------------------------------------------------

def test_generator_builds_the_cifar_110_layer_net():
    net = make_epsilon_resnet(110)
    assert sum(l.type == "StrictIdentity" for l in net.layer) == 54
    assert sum(l.type == "Convolution" for l in net.layer) == 109  # conv0 + 2 per unit; + linear = 110
    names = [l.name for l in net.layer]
    assert "side_output/res2.9/loss" in names  # after res2.{n//2}, n = 18
    side = net.layer[names.index("side_output/res2.9/loss")]
    assert list(side.loss_weight) == [pytest.approx(0.1)]
    assert net.layer[names.index("side_output/res2.9/bn")].bottom == ["res2.9"]
    pads = [l for l in net.layer if l.type == "ChannelPad"]
    assert [(l.name, l.channel_pad_param.pad_before, l.channel_pad_param.pad_after) for l in pads] == \
        [("res2.0_pad", 8, 8), ("res3.0_pad", 16, 16)]
    blocks = find_blocks(net)
    assert [b.name for b in blocks][:3] == ["res1.0", "res1.1", "res1.2"] and len(blocks) == 54


def test_generator_unit_is_pre_activation_with_a_gate():
    net = make_epsilon_resnet(20, widths=(8, 16, 32), input_shape=(1, 28, 28), batch_size=4, epsilon=1.5)
    by = {l.name: l for l in net.layer}
    assert by["res1.0_conv1"].bottom == ["conv0"]                 # the first unit has no BN-ReLU
    assert by["res1.1_bn1"].bottom == ["res1.0"] and by["res1.1_conv1"].bottom == ["res1.1_pre"]
    assert by["res2.0_conv1"].convolution_param.stride == [2]
    assert by["res2.0_pool"].bottom == ["res1.2"] and by["res2.0"].bottom == ["res2.0_gF", "res2.0_shortcut"]
    assert by["res2.1_gate"].strict_identity_param.epsilon == 1.5
    assert by["res2.1_conv2"].convolution_param.bias_term is False
    t = Net(net, phase=pb.TRAIN, verbose=False)
    t(torch.randn(4, 1, 28, 28), torch.zeros(4))
    assert t.blob_shapes["res2.0"] == (4, 16, 14, 14) and t.blob_shapes["res3.2"] == (4, 32, 7, 7)
    assert t.blob_shapes["linear"] == (4, 10) and set(t.loss_weights) == {"loss", "side_output/res2.1/loss"}


def test_generator_command_and_errors(tmp_path, capsys):
    out = tmp_path / "net.prototxt"
    assert make_epsilon_resnet_main(["--depth", "8", "--widths", "4,8,16", "--input", "1,8,8",
                                     "--no-side-output", "--out", str(out)]) == 0
    net = ncio.read_net(str(out))
    assert sum(l.type == "StrictIdentity" for l in net.layer) == 3
    assert "3 gated units" in capsys.readouterr().out
    assert make_epsilon_resnet_main(["--depth", "21", "--out", str(out)]) == 1
    assert "depth must be 6n + 2" in capsys.readouterr().err
    for args, said in (  # (each was written into the net: NaN gates, batch 0, 3e9 units for hours, or an
                       # unexpected error from protobuf's range or float())
            (["--epsilon", "nan"], "epsilon must be a finite number >= 0, got nan"),
            (["--side-weight", "inf"], "side_weight must be a finite number, got inf"),
            (["--mean-value", "x"], "--mean-value: expected comma-separated finite numbers, got 'x'"),
            (["--classes", "4294967296"], "num_classes takes at most 2147483647"),
            (["--train-source", "a", "--test-source", "b", "--batch-size", "0"], "batch_size must be at least 1"),
            (["--epsilon-start-epoch", "-3"], "epsilon_start_epoch must be at least 0, got -3"),
            (["--widths", "16,99999999999,64"], "widths must lie in 1..2147483647"),
            (["--depth", "6000000002"], "3,000,000,000 in all, more than the 10,000 this generator writes")):
        out.unlink(missing_ok=True)
        assert make_epsilon_resnet_main((["--depth", "8"] if args[0] != "--depth" else []) + args
                                        + ["--out", str(out)]) == 1, args
        assert said in capsys.readouterr().err
        assert not out.exists()
    with pytest.raises(ToolError, match="side_after 'res9.9'"):
        make_epsilon_resnet(8, side_after="res9.9")


# ------------------------------------------------------------------------------------------------
# Compression without training: blocks chosen by a hand-written log, weights of those zeroed
# ------------------------------------------------------------------------------------------------

GLOG = "I0101 00:00:00.000000 4242 epsilon_adaptive.py:1] "


def _untrained(tmp_path, zero: list[str], side=True, eps=0.1):
    """An Input-fed ε-ResNet with sane BN statistics whose `zero` units have all-zero conv2."""
    p = make_epsilon_resnet(20, widths=(4, 8, 16), input_shape=(1, 12, 12), batch_size=6, epsilon=eps,
                            side_output=side)
    proto = tmp_path / "train_val.prototxt"
    ncio.write_text_proto(str(proto), p)
    net = Net(p, phase=pb.TEST, seed=5, verbose=False)
    gen = torch.Generator().manual_seed(5)  # the same model whatever ran before
    with torch.no_grad():
        for name, layer in net.named_layers():
            if layer.type_name == "BatchNorm":
                layer.mean.uniform_(-0.2, 0.2, generator=gen)
                layer.variance.uniform_(0.5, 1.5, generator=gen)
                layer.scale_factor.fill_(1.0)
            if layer.type_name == "Scale":
                layer.weight.uniform_(0.5, 1.5, generator=gen)
            if name.endswith("_conv2") and name[:-len("_conv2")] in zero:
                layer.weight.zero_()
    model = tmp_path / "w.caffemodel"
    net.save(str(model))
    return proto, model, net


def _log(path: Path, step: int, values: dict[str, float], tensorpack: bool = False) -> None:
    """An epoch-end block as the solver logs it (or with tensorpack's header), between other lines."""
    header = (f"Epoch {step // 100} (global_step {step}) finished" if tensorpack
              else f"Epoch {step // 100} done (iteration {step}, 100 iterations per epoch)")
    stats = [f"{k}_gate/is_discarded: {v:.5g}" for k, v in values.items()]
    lines = [f"Iteration {step - 1}, lr = 0.1", header, *stats[:2], "some_callback: 7 things done",
             *stats[2:], "discarded_cnt: 2", f"Snapshotting to binary proto file x_iter_{step}.caffemodel",
             f"Iteration {step}, Testing net (#0)", "    Test net output #0: accuracy = 0.8765",
             f"Iteration {step}, lr = 0.1", "res1.0_gate/is_discarded: 1"]  # the last: after the block
    path.write_text("".join(GLOG + l + "\n" for l in lines))


def _logits(net: Net, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        net(data=x)
    return net.blobs["linear"].detach().clone()


UNITS = [f"res{g}.{k}" for g in (1, 2, 3) for k in range(3)]


@pytest.mark.parametrize("gone,first,structure,tensorpack", [
    (["res1.0", "res2.1", "res2.2"], [1, 0, 0], [2, 1, 3], False),   # Q9: a discarded res1.0 is the identity
    (["res1.2", "res3.0", "res3.1", "res3.2"], [0, 0, 1], [2, 3, 0], True),
])
def test_compression_from_a_log_is_exact(tmp_path, capsys, gone, first, structure, tensorpack):
    proto, model, net = _untrained(tmp_path, gone)
    _log(tmp_path / "train.log", 300, {u: (1.0 if u in gone else 0.31) for u in UNITS}, tensorpack)
    out_p, out_m = tmp_path / "deploy.prototxt", tmp_path / "deploy.caffemodel"
    res = compress_epsilon_resnet(str(proto), str(model), str(out_p), str(out_m),
                                  log_path=str(tmp_path / "train.log"), iteration=300)
    assert res.discarded == gone and res.discard_first_block == first and res.structure == structure
    assert res.val_error == [0.1235]
    printed = capsys.readouterr().out
    for g, k in zip((1, 2, 3), structure):
        assert f"#block in group{g}: {k}\n" in printed
    cfg = (tmp_path / "compressed_model_300.cfg").read_text()
    assert cfg == (f"N: 3\nmodel: {out_m}\nstep: 300\ndiscarded_block: {gone}\nis_cifar_model: True\n"
                   f"discard_first_block: {first}\nstructure: {structure}\nval_error: [0.1235]\n")
    deploy = Net(str(out_p), weights=str(out_m), verbose=False)
    types = {l.type for l in ncio.read_net(str(out_p)).layer}
    assert "StrictIdentity" not in types and "SoftmaxWithLoss" not in types and "Accuracy" not in types
    assert not any("side_output" in n for n in deploy.layer_names)
    x = torch.randn(6, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    ref = _logits(net, x)
    assert torch.equal(_logits(deploy, x), ref)
    kept = [u for u in UNITS if u not in gone]
    gates = [net.layer(f"{u}_gate").last_gate for u in UNITS]
    assert gates == [0.0 if u in gone else 1.0 for u in UNITS]  # the premise of equivalence
    assert sum(n.endswith("_conv2") for n in deploy.layer_names) == len(kept)


def test_renumbering_moves_the_weights(tmp_path, capsys):
    gone = ["res1.1", "res2.0", "res3.2"]
    proto, model, net = _untrained(tmp_path, gone)
    _log(tmp_path / "train.log", 200, {u: (1.0 if u in gone else 0.0) for u in UNITS})
    out_m = tmp_path / "d.caffemodel"
    res = compress_epsilon_resnet(str(proto), str(model), str(tmp_path / "d.prototxt"), str(out_m),
                                  log_path=str(tmp_path / "train.log"), iteration=200, quiet=True)
    assert res.renamed == {"res1.2": "res1.1"}
    stored = {l.name: l for l in ncio.read_caffemodel(str(out_m)).layer}
    assert np.array_equal(ncio.blob_to_array(stored["res1.1_conv1"].blobs[0]),
                          net.layer("res1.2_conv1").weight.detach().numpy())
    assert "res1.2_conv1" not in stored and "res2.0_conv1" not in stored and "res3.2_conv1" not in stored
    assert {"res2.0_pool", "res2.0_pad", "res2.1_conv1", "res3.1_conv2"} <= set(stored)


def test_caffe_compatible_output_passes_the_bvlc_check(tmp_path, capsys):
    gone = ["res2.0", "res3.1"]
    proto, model, net = _untrained(tmp_path, gone)
    _log(tmp_path / "train.log", 100, {u: (1.0 if u in gone else 0.0) for u in UNITS})
    out_p, out_m = tmp_path / "bvlc.prototxt", tmp_path / "bvlc.caffemodel"
    rc = compress_epsilon_resnet_main([str(proto), str(model), str(out_p), str(out_m), "--log",
                                       str(tmp_path / "train.log"), "--iter", "100", "--caffe-compatible",
                                       "--cfg", str(tmp_path / "x.cfg")])
    assert rc == 0, capsys.readouterr().err
    layers = ncio.read_net(str(out_p)).layer
    assert {l.type for l in layers} <= BVLC_LAYER_TYPES
    pads = {l.name: l for l in layers if l.name.endswith("_pad")}
    assert set(pads) == {"res2.0_pad", "res3.0_pad"} and all(l.type == "Convolution" for l in pads.values())
    assert pads["res3.0_pad"].param[0].lr_mult == 0 and not pads["res3.0_pad"].convolution_param.bias_term
    report = check_bvlc_net(str(out_p), str(out_m))
    assert report.checked_blobs > 0
    deploy = Net(str(out_p), weights=str(out_m), verbose=False)
    x = torch.randn(6, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_logits(deploy, x), _logits(net, x), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "x.cfg").read_text().startswith("N: 3\n")


@pytest.mark.parametrize("criterion", ["ema1", "gate"])
def test_compression_from_a_solverstate(tmp_path, capsys, criterion):
    gone = ["res1.2", "res2.1"]
    proto, model, net = _untrained(tmp_path, gone)
    # the EMAs travel in the caffemodel (discard_ema blobs); a Caffe-style snapshot has no sidecar
    with torch.no_grad():
        for u in UNITS:
            net.layer(f"{u}_gate").discard_ema.fill_(0.999996 if u in gone else 0.99999)  # '1' vs '0.99999'
    net.save(str(model))
    state = tmp_path / "s_iter_700.solverstate"
    ncio.write_binary_proto(str(state), pb.SolverState(iter=700, learned_net=str(model)))
    out_p, out_m = tmp_path / "d.prototxt", tmp_path / "d.caffemodel"
    extra = ["--criterion", "gate", "--gate-iters", "2"] if criterion == "gate" else []
    rc = compress_epsilon_resnet_main([str(proto), str(model), str(out_p), str(out_m), "--solverstate", str(state),
                                       *extra])
    assert rc == 0, capsys.readouterr().err
    cfg = (tmp_path / "compressed_model_700.cfg").read_text().splitlines()
    assert cfg[2:4] == ["step: 700", f"discarded_block: {gone}"] and cfg[-1] == "val_error: []"
    x = torch.randn(6, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    ref = _logits(net, x)
    assert [net.layer(f"{u}_gate").last_gate for u in UNITS] == [0.0 if u in gone else 1.0 for u in UNITS]
    assert torch.equal(_logits(Net(str(out_p), weights=str(out_m), verbose=False), x), ref)


def test_bvlc_check_refuses_netcompress_types_and_bad_shapes(tmp_path):
    proto, model, _ = _untrained(tmp_path, [])
    with pytest.raises(ToolError, match=r"layer 'res1.0_gate' has type 'StrictIdentity'"):
        check_bvlc_net(str(proto), str(model))
    plain = tmp_path / "plain.prototxt"
    plain.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }\n'
                     'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                     'inner_product_param { num_output: 2 } }\n')
    bad = pb.NetParameter()
    l = bad.layer.add(name="fc", type="InnerProduct")
    ncio.array_to_blob(np.zeros((2, 4), np.float32), l.blobs.add())
    ncio.array_to_blob(np.zeros((2,), np.float32), l.blobs.add())
    ncio.write_caffemodel(str(tmp_path / "bad.caffemodel"), bad)
    with pytest.raises(ToolError, match=r"layer 'fc' \(InnerProduct\) blob 0: .* has shape \[2, 4\], "
                                        r"the net builds \[2, 3\]"):
        check_bvlc_net(str(plain), str(tmp_path / "bad.caffemodel"))


def test_log_errors_name_the_file_and_the_step(tmp_path):
    _log(tmp_path / "train.log", 300, {"res1.0": 1.0})
    with pytest.raises(ToolError, match=r"train.log: no epoch-end line 'Epoch E done \(iteration 30, ...\)'.*300"):
        read_discard_log(str(tmp_path / "train.log"), 30)
    proto, model, _ = _untrained(tmp_path, [])
    with pytest.raises(ToolError, match="no 'res1.1_gate/is_discarded' line"):
        compress_epsilon_resnet(str(proto), str(model), str(tmp_path / "a"), str(tmp_path / "b"),
                                log_path=str(tmp_path / "train.log"), iteration=300, quiet=True)
    # a train prototxt that does not build gives a deploy net that does not: named after it (was "<NetParameter>")
    param = ncio.read_net(str(proto))
    del next(lp for lp in param.layer if lp.name == "res1.2").top[:]
    ncio.write_text_proto(str(proto), param)
    _log(tmp_path / "train.log", 300, {u: 0.0 for u in UNITS})
    with pytest.raises(NetcompressError, match=re.escape(f"the deploy net made from {proto}: Unknown bottom blob "
                                                         "'res1.2' (layer 'res2.0_bn1'")):
        compress_epsilon_resnet(str(proto), str(model), str(tmp_path / "a"), str(tmp_path / "b"),
                                log_path=str(tmp_path / "train.log"), iteration=300, quiet=True)


def test_scripts_are_registered():
    from netcompress.commands import COMMANDS, load_command

    assert load_command("compress_epsilon_resnet") is compress_epsilon_resnet_main
    assert load_command("make_epsilon_resnet") is make_epsilon_resnet_main
    assert {"compress_epsilon_resnet", "make_epsilon_resnet"} <= set(COMMANDS)
    for name in ("compress_epsilon_resnet", "make_epsilon_resnet"):
        r = subprocess.run([sys.executable, str(REPO / "compression_scripts" / f"{name}.py"), "-h"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert r.returncode == 0 and f"netcompress {name}" in r.stdout


# ------------------------------------------------------------------------------------------------
# T8: train on real digits, force three blocks out, compress, compare
# ------------------------------------------------------------------------------------------------

SOLVER = """
net: "{net}"
test_iter: 10 test_interval: 500 test_initialization: false
base_lr: 0.05 momentum: 0.9 weight_decay: 0.0001 lr_policy: "epsilon_adaptive"
epoch_iters: 100 max_iter: 500 display: 0 random_seed: 7
snapshot_prefix: "{prefix}"
adaptive_lr {{ init {{ epoch: 0 value: 0.05 }} init {{ epoch: 2 value: 0 }} reset {{ epoch: 0 value: 0 }} }}
"""


@pytest.fixture(scope="module")
def t8_run(tmp_path_factory):
    from netcompress.data.mnist5k import ensure_mnist5k
    from netcompress.solvers.solver import Solver

    root = tmp_path_factory.mktemp("t8")
    train_db, test_db = ensure_mnist5k(str(root / "data"))
    net = make_epsilon_resnet(20, widths=(8, 16, 32), input_shape=(1, 28, 28), epsilon=0.1,
                              train_source=train_db, test_source=test_db, batch_size=8,
                              test_batch_size=100, scale=0.00390625)
    ncio.write_text_proto(str(root / "train_val.prototxt"), net)
    (root / "solver.prototxt").write_text(SOLVER.format(net=root / "train_val.prototxt", prefix=root / "eres"))
    handler = logging.FileHandler(root / "train.log")
    handler.setFormatter(GlogFormatter())
    logger = logging.getLogger("netcompress")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        solver = Solver(str(root / "solver.prototxt"), verbose=False)
        solver.step(200)
        solver.trained_accuracy = dict(solver.test(0))["accuracy"]
        with torch.no_grad():  # force three blocks out: their gate is 0 on every batch from now on
            for u in ("res1.1", "res2.0", "res3.2"):
                w = solver.net.layer(f"{u}_conv2").weight
                w.zero_()
                i = next(k for k, e in enumerate(solver.params) if e.tensor is w)
                for h in solver.history[i]:
                    h.zero_()
        solver.solve()  # 300 more iterations at lr 0 (the adaptive schedule), snapshot, final test
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(old_level)
    return root, solver


@pytest.mark.slow  # 500 training iterations: about a minute on 2 shared cores
def test_t8_compressed_net_equals_the_uncompressed_test_net(t8_run, capsys):
    root, solver = t8_run
    weights = root / "eres_iter_500.caffemodel"
    assert weights.exists()
    emas = {u: solver.net.layer(f"{u}_gate").ema for u in UNITS}
    assert {u for u, v in emas.items() if "{:.5g}".format(v) == "1"} == {"res1.1", "res2.0", "res3.2"}
    out_p, out_m = root / "deploy.prototxt", root / "deploy.caffemodel"
    rc = compress_epsilon_resnet_main([str(root / "train_val.prototxt"), str(weights), str(out_p), str(out_m),
                                       "--log", str(root / "train.log"), "--iter", "500"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "#block in group1: 2\n#block in group2: 2\n#block in group3: 2\n" in printed
    acc = dict(solver.last_test_scores)
    val_error = [float("%.6g" % (1 - float("%g" % acc[k]))) for k in ("accuracy", "side_output/res2.1/accuracy")]
    assert solver.trained_accuracy > 0.5  # the net learned before three of its units were forced out
    cfg = (root / "compressed_model_500.cfg").read_bytes()
    assert cfg == (f"N: 3\nmodel: {out_m}\nstep: 500\ndiscarded_block: ['res1.1', 'res2.0', 'res3.2']\n"
                   "is_cifar_model: True\ndiscard_first_block: [0, 1, 0]\nstructure: [2, 2, 2]\n"
                   f"val_error: {val_error}\n").encode()
    # the 1,000 TEST digits through the uncompressed TEST net and through the deploy net
    test_net = Net(str(root / "train_val.prototxt"), phase=pb.TEST, weights=str(weights), verbose=False)
    deploy = Net(str(out_p), weights=str(out_m), verbose=False)
    bvlc_p, bvlc_m = root / "bvlc.prototxt", root / "bvlc.caffemodel"
    compress_epsilon_resnet(str(root / "train_val.prototxt"), str(weights), str(bvlc_p), str(bvlc_m),
                            solverstate=str(root / "eres_iter_500.solverstate"), caffe_compatible=True,
                            cfg_path=str(root / "bvlc.cfg"), quiet=True)
    assert {l.type for l in ncio.read_net(str(bvlc_p)).layer} <= BVLC_LAYER_TYPES
    check_bvlc_net(str(bvlc_p), str(bvlc_m))
    bvlc = Net(str(bvlc_p), weights=str(bvlc_m), verbose=False)
    labels, ref, got, got_bvlc = [], [], [], []
    with torch.no_grad():
        for _ in range(10):
            test_net()
            x = test_net.blobs["data"]
            labels.append(test_net.blobs["label"].clone())
            ref.append(test_net.blobs["linear"].clone())
            got.append(_logits(deploy, x))
            got_bvlc.append(_logits(bvlc, x))
    labels = torch.cat(labels)
    ref, got, got_bvlc = torch.cat(ref), torch.cat(got), torch.cat(got_bvlc)
    assert len(set(labels.tolist())) == 10 and len(labels) == 1000
    scale = ref.abs().max()
    assert float((got - ref).abs().max()) <= 1e-5 * float(scale)
    assert float((got_bvlc - ref).abs().max()) <= 1e-5 * float(scale)
    # the compressed net scores what the TEST net scored at step 500
    assert float((got.argmax(1) == labels).float().mean()) == pytest.approx(acc["accuracy"], abs=1e-6)
    assert (root / "bvlc.cfg").read_text().splitlines()[3:7] == (
        "discarded_block: ['res1.1', 'res2.0', 'res3.2']\nis_cifar_model: True\n"
        "discard_first_block: [0, 1, 0]\nstructure: [2, 2, 2]").splitlines()


@pytest.mark.slow
def test_t8_training_log_has_the_epoch_end_lines(t8_run):
    root, _ = t8_run
    text = (root / "train.log").read_text()
    assert "] Epoch 5 done (iteration 500, 100 iterations per epoch)\n" in text
    dl = read_discard_log(str(root / "train.log"), 500)
    assert dl.epoch == 5 and dl.stats["res1.1_gate/is_discarded"] == "1"
    assert float(dl.stats["discarded_cnt"]) == pytest.approx(3.0, abs=1e-4)
    assert float(dl.stats["discarded_ratio"]) == pytest.approx(3.0 / 9, abs=1e-4)


def test_example_net_is_the_generator_output_and_its_solver_parses(tmp_path, capsys):
    """examples/eresnet: the committed prototxt is what the command in its header writes."""
    from netcompress.recipes.eresnet import EpsilonAdaptiveSchedule

    ex = REPO / "examples" / "eresnet"
    header = [l[1:].strip().rstrip("\\").strip() for l in (ex / "eresnet20_mnist.prototxt").read_text().splitlines()
              if l.startswith("#")]
    start = header.index("Written by (from the repository root):") + 1
    cmd = " ".join(header[start:start + 4]).split()
    assert cmd[:2] == ["netcompress", "make_epsilon_resnet"] and "--out" in cmd
    args = cmd[2:]
    args[args.index("--out") + 1] = str(tmp_path / "net.prototxt")
    assert make_epsilon_resnet_main(args) == 0
    assert ncio.read_net(str(ex / "eresnet20_mnist.prototxt")) == ncio.read_net(str(tmp_path / "net.prototxt"))
    sp = ncio.read_solver(str(ex / "eresnet20_mnist_solver.prototxt"))
    assert sp.net == "examples/eresnet/eresnet20_mnist.prototxt" and sp.epoch_iters == 125
    s = EpsilonAdaptiveSchedule(sp)
    for e, cnt in enumerate([0, 0, 0, 0, 3.9, 4, 4, 4, 4, 4, 4, 4], start=1):
        s.epoch_end(e, cnt)
    assert s.last_changed == 5 and s.rate() == pytest.approx(0.001)
