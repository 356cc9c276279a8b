"""make_sdn_net and sdn_early_exit (recipes-spec 2.2, 2.3, 5.5, T7)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from netcompress import cli
from netcompress import io as ncio
from netcompress.errors import NetcompressError
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.tools import sdn

REPO = Path(__file__).resolve().parents[2]


def _conv(name: str, bottom: str, top: str, k: int = 3) -> str:
    pad = f"pad: {k // 2} " if k > 1 else ""
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}" '
            f'convolution_param {{ num_output: 16 kernel_size: {k} {pad}bias_term: false '
            f'weight_filler {{ type: "msra" variance_norm: FAN_OUT }} }} }}\n')


def _bn(prefix: str, blob: str) -> str:
    return (f'layer {{ name: "{prefix}_bn" type: "BatchNorm" bottom: "{blob}" top: "{blob}" }}\n'
            f'layer {{ name: "{prefix}_scale" type: "Scale" bottom: "{blob}" top: "{blob}" '
            f'scale_param {{ bias_term: true }} }}\n')


def _cell(project: bool) -> str:
    c = "cell${k}"
    text = (_conv(f"{c}_conv1", "${bottom}", f"{c}_conv1") + _bn(f"{c}_1", f"{c}_conv1")
            + f'layer {{ name: "{c}_relu1" type: "ReLU" bottom: "{c}_conv1" top: "{c}_conv1" }}\n'
            + _conv(f"{c}_conv2", f"{c}_conv1", f"{c}_conv2") + _bn(f"{c}_2", f"{c}_conv2"))
    shortcut = "${bottom}"
    if project:  # INRIA: a 1x1 conv + BN shortcut where the input is not 16 channels wide
        text += _conv(f"{c}_proj", "${bottom}", f"{c}_proj", k=1) + _bn(f"{c}_p", f"{c}_proj")
        shortcut = f"{c}_proj"
    # The IC reads the pre-ReLU sum (${tap}); the block output is ReLU(sum) (${top}).
    text += (f'layer {{ name: "{c}_sum" type: "Eltwise" bottom: "{c}_conv2" bottom: "{shortcut}" top: "${{tap}}" }}\n'
             f'layer {{ name: "{c}_relu" type: "ReLU" bottom: "${{tap}}" top: "${{top}}" }}\n')
    return text


# The INRIA 'iterative'/'dense' network (spec 2.3.1) at batch 2 on 32x32 inputs.
INPUT = ('layer { name: "data" type: "Input" top: "data" top: "label" '
         'input_param { shape { dim: 2 dim: 3 dim: 32 dim: 32 } shape { dim: 2 } } }\n')


def _stem(data_layer: str = INPUT) -> str:
    return ('name: "inria"\n' + data_layer + _conv("conv0", "data", "conv0") + _bn("stem", "conv0")
            + 'layer { name: "relu0" type: "ReLU" bottom: "conv0" top: "conv0" }\n')


STEM = _stem()
END = ('layer { name: "end_pool" type: "Pooling" bottom: "${bottom}" top: "end_pool" '
       'pooling_param { pool: AVE kernel_size: 8 stride: 8 } }\n'
       'layer { name: "fc" type: "InnerProduct" bottom: "end_pool" top: "fc" param { lr_mult: 1 } '
       'param { lr_mult: 2 } inner_product_param { num_output: 10 weight_filler { type: "xavier" } '
       'bias_filler { type: "constant" } } }\n')
TEMPLATE = STEM + "# @cell\n" + _cell(False) + "# @dense_cell\n" + _cell(True) + "# @end\n" + END

GROWTH_EPOCHS = [25, 50, 75]


@pytest.fixture
def template(tmp_path) -> str:
    p = tmp_path / "cells.prototxt-template"
    p.write_text(TEMPLATE)
    return str(p)


def make(template, tmp_path, *args) -> str:
    out = str(tmp_path / "train_val.prototxt")
    assert sdn.make_sdn_net_main([template, *args, "--out", out]) == 0
    return out


def stage_net(prototxt: str, k: int, phase=pb.TRAIN) -> Net:
    """The net the solver builds at growth stage k: stages grow0..growk (spec 5.3.2)."""
    return Net(prototxt, phase=phase, stages=[f"grow{i}" for i in range(k + 1)], verbose=False,
               seed=1, dtype=torch.float64)


def cells_of(net: Net) -> list[int]:
    return sorted(int(m.group(1)) for n in net.layer_names if (m := re.fullmatch(r"cell(\d+)_conv1", n)))


def sdn_losses(net: Net) -> list[str]:
    return [n for n in net.layer_names if net.layer(n).type_name == "SDNLoss"]


# --- make_sdn_net -------------------------------------------------------------------------------------

def test_growth_schedule_grows_3_3_2_1_cells_and_the_final_classifier_at_epoch_75(template, tmp_path, capsys):
    out = make(template, tmp_path, "--ics", "0,0,1,0,0,1,0,1,0", "--growth")
    printed = capsys.readouterr().out
    assert "stage grow0: cells 1-3, IC ic1" in printed
    assert "stage grow3: cell 9, the final classifier (fc)" in printed
    assert "outputs (cascade order): ic1,ic2,ic3,fc" in printed
    grown, finals, x = [], {}, torch.randn(2, 3, 32, 32, dtype=torch.float64)
    previous: list[int] = []
    for k in range(4):
        net = stage_net(out, k)
        cells = cells_of(net)
        assert cells[:len(previous)] == previous  # growth only appends
        grown.append(len(cells) - len(previous))
        previous = cells
        # one SDNLoss, over the outputs grown so far (the newest weighs 1), then the label
        (loss,) = sdn_losses(net)
        outputs = ["ic1", "ic2", "ic3", "fc"][:k + 1]
        assert loss == f"sdn_loss_grow{k}" and net._bottoms[net.layer_names.index(loss)] == outputs + ["label"]
        finals[k] = net.has_layer("fc")
        net.layer(loss).epoch_iters = 10  # what the solver passes on
        net.set_iteration(0)
        net(data=x, label=torch.tensor([1.0, 7.0], dtype=torch.float64))
        assert torch.isfinite(net.loss)
        net.loss.backward()
        newest = net.layer(outputs[-1])
        assert newest.weight.grad is not None and newest.weight.grad.abs().sum() > 0
    assert grown == [3, 3, 2, 1]
    # growth epochs [25, 50, 75]: the stage of epoch e is the number of growth epochs <= e
    active = {e: finals[sum(g <= e for g in GROWTH_EPOCHS)] for e in (1, 24, 25, 50, 74, 75, 100)}
    assert active == {1: False, 24: False, 25: False, 50: False, 74: False, 75: True, 100: True}
    # the TEST net of each stage scores every output it has
    test3 = stage_net(out, 3, phase=pb.TEST)
    assert [n for n in test3.layer_names if n.startswith("accuracy_")] == \
        ["accuracy_ic1", "accuracy_ic2", "accuracy_ic3", "accuracy_final"]
    assert [n for n in stage_net(out, 1, phase=pb.TEST).layer_names if n.startswith("accuracy_")] == \
        ["accuracy_ic1", "accuracy_ic2"]


def test_ics_read_the_pre_relu_sum_through_mixed_pooling(template, tmp_path):
    out = make(template, tmp_path, "--ics", "0,1", "--growth")
    net = stage_net(out, 0)
    i = net.layer_names.index("ic1_pool")
    assert net._bottoms[i] == ["cell2_tap"] and net.layer("ic1_pool").type_name == "MixedPooling"
    assert net.blob_shapes["ic1_pool"] == (2, 16, 4, 4)  # r = 32 // 4 = 8
    layers = {l.name: l for l in ncio.read_net(out).layer}
    # the ICs copy the final classifier's fillers and param specs
    assert layers["ic1"].inner_product_param.weight_filler.type == "xavier"
    assert [p.lr_mult for p in layers["ic1"].param] == [1.0, 2.0]
    assert layers["ic1"].inner_product_param.num_output == 10
    assert list(layers["cell1_conv1"].include[0].stage) == ["grow0"]
    assert not len(layers["conv0"].include)  # the stem has no stage


def test_dense_ics_1_1_1_cell_inputs_16_32_48_and_end_ip_1024(template, tmp_path, capsys):
    out = make(template, tmp_path, "--ics", "1,1,1", "--dense", "--growth")
    printed = capsys.readouterr().out
    assert "stage grow3: no cells, the final classifier (fc)" in printed
    net = stage_net(out, 3)
    assert cells_of(net) == [1, 2, 3]
    conv1_inputs = [net.blob_shapes[net._bottoms[net.layer_names.index(f"cell{k}_conv1")][0]][1] for k in (1, 2, 3)]
    assert conv1_inputs == [16, 32, 48]
    assert net.layer("fc").K == 1024 and net.blob_shapes["end_in"] == (2, 64, 32, 32)
    # cell 1 keeps the identity shortcut, cells 2 and 3 project (the template's dense_cell)
    assert not net.has_layer("cell1_proj") and net.has_layer("cell2_proj") and net.has_layer("cell3_proj")
    # one cell per stage; the fourth growth adds only the final classifier (no INRIA quirk Q6)
    assert [len(cells_of(stage_net(out, k))) for k in range(4)] == [1, 2, 3, 3]
    assert [stage_net(out, k).has_layer("fc") for k in range(4)] == [False, False, False, True]


def test_without_growth_one_loss_over_every_output_and_no_stages(template, tmp_path):
    out = make(template, tmp_path, "--ics", "0,1,0,1", "--policy", "INRIA", "--ramp-epochs", "250")
    param = ncio.read_net(out)
    assert not any(r.stage for l in param.layer for r in l.include)
    net = Net(out, phase=pb.TRAIN, verbose=False, seed=1)
    assert cells_of(net) == [1, 2, 3, 4]
    (loss,) = sdn_losses(net)
    assert net._bottoms[net.layer_names.index(loss)] == ["ic1", "ic2", "fc", "label"]
    layer = net.layer(loss)
    assert layer.policy == pb.SDNLossParameter.INRIA and layer.ramp_epochs == 250
    assert layer.max_coeff == pytest.approx([0.01 + 1 / 3, 0.01 + 2 / 3])


def test_cell_include_rules_keep_their_conditions_and_gain_the_stage(tmp_path):
    # the first BatchNorm of the cell only in TRAIN (unusual, but a rule the tagging must keep)
    cell = _cell(False).replace('top: "cell${k}_conv1" }\n', 'top: "cell${k}_conv1" include { phase: TRAIN } }\n', 1)
    p = tmp_path / "t.prototxt"
    p.write_text(STEM + "# @cell\n" + cell + "# @end\n" + END)
    sdn.make_sdn_net(str(p), str(tmp_path / "o.prototxt"), [1, 0], growth=True)
    layers = {l.name: l for l in ncio.read_net(str(tmp_path / "o.prototxt")).layer}
    rules = [(r.phase if r.HasField("phase") else None, list(r.stage)) for r in layers["cell1_1_bn"].include]
    assert rules == [(pb.TRAIN, ["grow0"])]
    assert [list(r.stage) for r in layers["cell2_1_bn"].include] == [["grow1"]]


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t.replace("# @end\n", "# @tail\n"), "unknown section marker '# @tail'"),
    (lambda t: t.split("# @end\n")[0], "no '# @end' section"),
    (lambda t: t.replace('bottom: "${tap}" top: "${top}"', 'bottom: "${tap}" top: "${tap}"'),
     "produces no ${top} blob"),
    (lambda t: t.replace('top: "${tap}" }\n', 'top: "${tap}" }\nlayer { name: "cell${k}_r" type: "ReLU" '
                         'bottom: "${tap}" top: "${tap}" }\n', 1), "writes ${tap} in place"),
    (lambda t: t.replace('name: "cell${k}_relu1"', 'name: "relu1"', 1), "two layers are named 'relu1'"),
    (lambda t: t.replace("${bottom}", "${input}", 1), "uses the placeholder ${input}"),
    (lambda t: t.replace('top: "label"', 'top: "lbl"'), "no stem layer produces the label blob 'label'"),
    (lambda t: t.replace('layer { name: "fc" type: "InnerProduct"', 'layer { name: "fc" type: "Convolution"')
     .replace("inner_product_param { num_output: 10", "convolution_param { num_output: 10"), "no InnerProduct"),
    (lambda t: t + 'layer { name: "l" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" }\n',
     "holds the loss layer 'l'"),
    (lambda t: t.replace('name: "cell${k}_relu1"', 'exclude { phase: TEST } name: "cell${k}_relu1"', 1),
     "has exclude rules"),
])
def test_template_errors_name_the_file_and_the_problem(tmp_path, mutate, message):
    p = tmp_path / "bad.prototxt-template"
    p.write_text(mutate(TEMPLATE))
    with pytest.raises(NetcompressError, match=re.escape(message)) as e:
        sdn.make_sdn_net(str(p), str(tmp_path / "o.prototxt"), [0, 1, 1], growth=True)
    assert str(p) in str(e.value)
    assert not (tmp_path / "o.prototxt").exists()


def test_make_sdn_net_cli_errors(template, tmp_path, capsys):
    out = str(tmp_path / "o.prototxt")
    assert sdn.make_sdn_net_main([template, "--ics", "0,2,1", "--out", out]) == 1
    assert "--ics takes only 0 or 1, got '0,2,1'" in capsys.readouterr().err
    assert sdn.make_sdn_net_main([template, "--ics", "1,1", "--feature-size", "32,16,8", "--out", out]) == 1
    assert "--feature-size takes one size (1..2147483647) or one per cell (2)" in capsys.readouterr().err
    for flag, value, said in (  # (each was protobuf's "Value out of range" as an unexpected error)
            ("--num-classes", "4294967296", "--num-classes takes at most 2147483647 (a Caffe blob's size limit)"),
            ("--feature-size", "99999999999", "--feature-size takes one size (1..2147483647) or one per cell"),
            ("--ramp-epochs", "4294967296", "--ramp-epochs takes at most 2147483647"),
            ("--ramp-epochs", "0", "--ramp-epochs must be at least 1, got 0")):
        assert sdn.make_sdn_net_main([template, "--ics", "0,1,1", flag, value, "--out", out]) == 1, flag
        assert said in capsys.readouterr().err
    assert not os.path.exists(out)
    assert sdn.make_sdn_net_main([str(tmp_path / "missing"), "--ics", "1", "--out", out]) == 1
    assert "does not exist!" in capsys.readouterr().err
    bad = tmp_path / "syntax.prototxt-template"
    bad.write_text(TEMPLATE.replace('name: "cell${k}_relu1"', 'nme: "cell${k}_relu1"'))
    assert sdn.make_sdn_net_main([str(bad), "--ics", "1", "--out", out]) == 1
    line = TEMPLATE.splitlines().index(next(l for l in TEMPLATE.splitlines() if 'cell${k}_relu1' in l)) + 1
    assert f"{bad}:{line}" in capsys.readouterr().err  # the template's own line number
    binary = tmp_path / "binary.prototxt-template"
    binary.write_bytes(TEMPLATE.encode()[:40] + b"\xff\xfe" + TEMPLATE.encode()[40:])
    assert sdn.make_sdn_net_main([str(binary), "--ics", "1", "--out", out]) == 1
    head = TEMPLATE[:40]
    assert (f"{binary}:{head.count(chr(10)) + 1}:{len(head) - head.rfind(chr(10))}: byte 0xFF is not UTF-8 text"
            in capsys.readouterr().err)
    assert not os.path.exists(out)


def test_small_feature_maps_get_a_plain_linear_ic(template, tmp_path):
    out = make(template, tmp_path, "--ics", "1,0", "--feature-size", "3,32", "--num-classes", "7")
    layers = {l.name: l for l in ncio.read_net(out).layer}
    assert "ic1_pool" not in layers and list(layers["ic1"].bottom) == ["cell1_tap"]
    assert layers["ic1"].inner_product_param.num_output == 7


# --- sdn_early_exit -----------------------------------------------------------------------------------

# Hand-made 3-output net: the data holds each output's logits side by side, and InnerProducts with
# fixed 0/1 weights pick them out, so the test chooses every confidence.
LOGITS = {  # sample: (label, ic1, ic2, final)
    0: (0, [3, 0, 0], [5, 0, 0], [0, 5, 0]),
    1: (2, [0, 0, 0], [0, 1, 0], [0, 0, 5]),
    2: (2, [0, 1, 0], [0, 0, 3], [1, 0, 0]),
    3: (1, [0, 0, 0], [0, 0, 0], [0, 0, 1]),
    4: (2, [0, 0, 5], [0, 0, 0], [0, 0, 0]),
    5: (1, [1, 0, 0], [0, 3, 0], [0, 3, 0]),  # ic2 and final equally confident: the first answers
}
# max softmax of [a, 0, 0]: a=0 0.333, a=1 0.576, a=3 0.909, a=5 0.987.
EXIT_NET = """
name: "three_outputs"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "%s" batch_size: 3 } }
layer { name: "ic1" type: "InnerProduct" bottom: "data" top: "ic1" inner_product_param { num_output: 3 } }
layer { name: "ic2" type: "InnerProduct" bottom: "data" top: "ic2" inner_product_param { num_output: 3 } }
layer { name: "final" type: "InnerProduct" bottom: "data" top: "final" inner_product_param { num_output: 3 } }
layer { name: "acc" type: "Accuracy" bottom: "final" bottom: "label" top: "acc" }
"""


@pytest.fixture
def exit_net(tmp_path):
    import h5py

    x = np.array([sum((v[1], v[2], v[3]), []) for v in LOGITS.values()], dtype=np.float32)
    y = np.array([v[0] for v in LOGITS.values()], dtype=np.float32)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["data"], f["label"] = x, y
    (tmp_path / "list.txt").write_text(str(tmp_path / "d.h5") + "\n")
    proto = tmp_path / "net.prototxt"
    proto.write_text(EXIT_NET % (tmp_path / "list.txt"))
    net = Net(str(proto), phase=pb.TEST, verbose=False)
    for i, name in enumerate(("ic1", "ic2", "final")):
        w = np.zeros((3, 9), np.float32)
        w[np.arange(3), 3 * i + np.arange(3)] = 1
        with torch.no_grad():
            net.layer(name).weight.copy_(torch.from_numpy(w))
            net.layer(name).bias.zero_()
    net.save(str(tmp_path / "w.caffemodel"))
    return str(proto), str(tmp_path / "w.caffemodel")


def test_early_exit_accounting_on_a_hand_made_net(exit_net, tmp_path, capsys):
    proto, weights = exit_net
    r = sdn.sdn_early_exit(proto, weights, ["ic1", "ic2", "final"], [0.5, 0.95], "auto", iterations=2)
    assert r["samples"] == 6
    with pytest.raises(NetcompressError, match=r"--iterations takes at most 2147483647 \(Caffe's int flag\)"):
        sdn.sdn_early_exit(proto, weights, ["ic1", "ic2", "final"], [0.5, 0.95], "auto", iterations=2 ** 31)
    # auto ops: each InnerProduct is 9 x 3 = 27 MACs; output i needs outputs 1..i
    assert r["ops_per_output"] == [27, 54, 81]
    # each output alone: ic1 right on 0, 4; ic2 on 0, 2, 5; final on 1, 5
    assert r["output_accuracy"] == pytest.approx([2 / 6, 3 / 6, 2 / 6])
    q50, q95 = r["thresholds"]
    # q = 0.5: samples 0, 2, 4, 5 exit at ic1 (0 and 4 right), 1 at ic2 (wrong); 3 is not confident
    # anywhere, the final output answers it (wrong) -> 2/6, ops (4*27 + 54 + 81) / 6
    assert (q50["early"], q50["late"], q50["late_answered"], q50["correct"]) == ([4, 1], 1, [0, 0, 1], 2)
    assert q50["average_ops"] == pytest.approx(243 / 6) and q50["accuracy"] == pytest.approx(2 / 6)
    # q = 0.95: 4 exits at ic1, 0 at ic2 (both right); 1, 2, 3, 5 are charged the last output:
    # 1 and 3 answered by final (1 right), 2 and 5 by ic2 (right; 5 is a tie with final) -> 5/6
    assert (q95["early"], q95["late"], q95["late_answered"], q95["correct"]) == ([1, 1], 4, [0, 2, 2], 5)
    assert q95["average_ops"] == pytest.approx((27 + 54 + 4 * 81) / 6)
    # given ops instead of counted ones, through the command line, with the JSON and the plot
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    assert sdn.sdn_early_exit_main([proto, weights, "--outputs", "ic1,ic2,final", "--thresholds", "0.5,0.95",
                                    "--ops-per-output", "1,2,4", "--iterations", "2", "--json", str(js),
                                    "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "6 samples" in printed and "exit@ic1" in printed
    saved = json.loads(js.read_text())
    assert [row["average_ops"] for row in saved["thresholds"]] == pytest.approx([10 / 6, (1 + 2 + 16) / 6])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_early_exit_errors(exit_net, tmp_path, capsys, monkeypatch):
    proto, weights = exit_net
    assert sdn.sdn_early_exit_main([proto, weights, "--outputs", "ic1,ic9,final"]) == 1
    assert "has no blob 'ic9'" in capsys.readouterr().err
    assert sdn.sdn_early_exit_main([proto, weights, "--outputs", "ic1,final", "--ops-per-output", "1"]) == 1
    assert "2 outputs need 2 values, got 1" in capsys.readouterr().err
    inp = tmp_path / "input.prototxt"
    inp.write_text('layer { name: "d" type: "Input" top: "data" top: "label" input_param { shape { dim: 1 dim: 9 } '
                   'shape { dim: 1 } } }\n' + EXIT_NET.split("\n", 3)[3])
    assert sdn.sdn_early_exit_main([str(inp), weights, "--outputs", "ic1,final"]) == 1
    assert "has Input layers" in capsys.readouterr().err
    import netcompress.net as ncnet  # a TEST net whose blobs cannot fit is refused before its first forward
    monkeypatch.setattr(ncnet, "device_memory", lambda device: 64)
    assert sdn.sdn_early_exit_main([proto, weights, "--outputs", "ic1,final"]) == 1
    assert f"{proto}: the TEST net needs 0.0 GiB for its blobs and weights" in capsys.readouterr().err


def test_auto_ops_count_conv_deconv_and_inner_product_macs():
    net = Net(ncio.parse_text_proto("""
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
        layer { name: "conv1" type: "Convolution" bottom: "data" top: "c1"
                convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
        layer { name: "relu1" type: "ReLU" bottom: "c1" top: "c1" }
        layer { name: "ic1_pool" type: "MixedPooling" bottom: "c1" top: "p1"
                mixed_pooling_param { kernel_size: 4 stride: 4 } }
        layer { name: "ic1" type: "InnerProduct" bottom: "p1" top: "ic1" inner_product_param { num_output: 5 } }
        layer { name: "conv2" type: "Convolution" bottom: "c1" top: "c2"
                convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 2 } }
        layer { name: "up" type: "Deconvolution" bottom: "c2" top: "u"
                convolution_param { num_output: 2 kernel_size: 2 stride: 2 } }
        layer { name: "side" type: "InnerProduct" bottom: "c2" top: "side" inner_product_param { num_output: 3 } }
        layer { name: "fc" type: "InnerProduct" bottom: "u" top: "fc" inner_product_param { num_output: 5 } }
    """, pb.NetParameter()), phase=pb.TEST, verbose=False)
    ops, macs = sdn.ops_per_output(net, ["ic1", "fc"])
    expected = {"conv1": 4 * 8 * 8 * 3 * 9,       # outputs x (C_in / group) x kernel area
                "ic1": 4 * 2 * 2 * 5,
                "conv2": 4 * 8 * 8 * 2 * 9,
                "up": 4 * 8 * 8 * 2 * 4,          # inputs x (C_out / group) x kernel area
                "side": 4 * 8 * 8 * 3,
                "fc": 2 * 16 * 16 * 5}
    assert macs == expected
    # ic1: conv1 + ic1; fc adds conv2, up and fc (not the side branch no output needs)
    assert ops == [expected["conv1"] + expected["ic1"],
                   expected["conv1"] + expected["ic1"] + expected["conv2"] + expected["up"] + expected["fc"]]


def test_auto_ops_count_layers_sharing_a_name_each():
    # Caffe lets layers share a name: each is counted, and only into the outputs that need it.
    net = Net(ncio.parse_text_proto("""
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }
        layer { name: "fc" type: "InnerProduct" bottom: "data" top: "a" inner_product_param { num_output: 4 } }
        layer { name: "fc" type: "InnerProduct" bottom: "data" top: "b" inner_product_param { num_output: 3 } }
    """, pb.NetParameter()), phase=pb.TEST, verbose=False)
    ops, macs = sdn.ops_per_output(net, ["a", "b"])
    assert macs == {"fc": 24, "fc#2": 18}
    assert ops == [24, 42]  # "b" reached: both layers counted once each


def test_early_exit_table_boundaries():
    # conf >= q exits (SDN's comparison); the final output is never tested against q
    x = np.log(np.array([[2.0, 1.0, 1.0]]))   # softmax max exactly 0.5
    rows = sdn.early_exit_table([x, x], np.array([0]), [0.5, 0.5000001], [1, 3])
    assert (rows[0]["early"], rows[0]["late"]) == ([1], 0)
    assert (rows[1]["early"], rows[1]["late"], rows[1]["average_ops"]) == ([0], 1, 3.0)
    # the final output alone (--outputs fc): every sample is answered late, by it
    rows = sdn.early_exit_table([np.log(np.array([[2.0, 1.0], [1.0, 3.0]]))], np.array([0, 0]), [0.5], [7])
    assert (rows[0]["early"], rows[0]["late"], rows[0]["late_answered"]) == ([], 2, [2])
    assert (rows[0]["correct"], rows[0]["average_ops"]) == (1, 7.0)


# --- scripts ------------------------------------------------------------------------------------------

def test_scripts_are_registered_and_have_shims(template, tmp_path):
    from netcompress.commands import COMMANDS

    for name in ("make_sdn_net", "sdn_early_exit"):
        assert name in COMMANDS
        assert (REPO / "compression_scripts" / f"{name}.py").is_file()
    out = tmp_path / "n.prototxt"
    assert cli.main(["make_sdn_net", template, "--ics", "1", "--out", str(out)]) == 0 and out.is_file()
    r = subprocess.run([sys.executable, str(REPO / "compression_scripts" / "make_sdn_net.py"), "--help"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and "# @cell" in r.stdout and "--growth" in r.stdout


def test_early_exit_on_a_grown_make_sdn_net_counts_the_cascade(tmp_path, capsys):
    import h5py

    g = np.random.default_rng(0)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["data"] = g.standard_normal((4, 3, 32, 32)).astype(np.float32)
        f["label"] = g.integers(0, 10, 4).astype(np.float32)
    (tmp_path / "list.txt").write_text(str(tmp_path / "d.h5") + "\n")
    stem = _stem(f'layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" '
                 f'hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 2 }} }}\n')
    p = tmp_path / "cells.prototxt-template"
    p.write_text(stem + "# @cell\n" + _cell(False) + "# @end\n" + END)
    out = make(str(p), tmp_path, "--ics", "1,0,1", "--growth")
    net = Net(out, phase=pb.TEST, stages=["grow0", "grow1", "grow2"], verbose=False, seed=3)
    net.save(str(tmp_path / "w.caffemodel"))
    assert sdn.sdn_early_exit_main([out, str(tmp_path / "w.caffemodel"), "--outputs", "ic1,ic2,fc",
                                    "--iterations", "2", "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["stages"] == ["grow0", "grow1", "grow2"] and r["samples"] == 4  # fully grown by default
    stem_conv, cell_conv, head = 16 * 32 * 32 * 3 * 9, 16 * 32 * 32 * 16 * 9, 16 * 4 * 4 * 10
    assert r["ops_per_output"] == [stem_conv + 2 * cell_conv + head,
                                   stem_conv + 6 * cell_conv + 2 * head,
                                   stem_conv + 6 * cell_conv + 3 * head]
    assert len(r["thresholds"]) == 11  # SDN's thresholds by default
    for row in r["thresholds"]:
        assert sum(row["early"]) + row["late"] == 4 and sum(row["late_answered"]) == row["late"]
