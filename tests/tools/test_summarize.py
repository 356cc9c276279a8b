"""netcompress summarize (Caffe's tools/extra/summarize.py)."""
from __future__ import annotations

import pytest

from netcompress import io as ncio
from netcompress.tools.summarize import format_table, main, summarize_net

NET = """
name: "small"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { name: "w" lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 1 } }
layer { name: "rect" type: "Convolution" bottom: "conv1" top: "rect"
        convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 1 group: 2 } }
layer { name: "relu" type: "ReLU" bottom: "rect" top: "rect" }
layer { name: "gpool" type: "Pooling" bottom: "rect" top: "gpool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "pool" type: "Pooling" bottom: "rect" top: "pool" pooling_param { kernel_size: 2 stride: 2 } }
layer { name: "py" type: "Python" bottom: "pool" top: "py" python_param { module: "mymod" layer: "MyLayer" } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "gpool" bottom: "label" top: "loss" loss_weight: 0.5 }
layer { name: "orphan" type: "ReLU" bottom: "nowhere" top: "out" include { phase: TRAIN } }
"""


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    return path


def test_rows(net_file):
    rows = summarize_net(ncio.read_net(str(net_file)))
    assert rows == [
        ["data", "Input", "", "", "->", "data, label", ""],
        ["conv1", "Convolution", "(w, x2 Dx0)", "data", "->", "conv1", "3/2+1 4"],
        ["rect", "Convolution", "", "conv1", "->", "rect", "3x1+1x0 4/2"],
        ["relu", "ReLU", "", "rect", "->", "rect", ""],
        ["gpool", "Pooling", "", "rect", "->", "gpool", "global"],
        ["pool", "Pooling", "", "rect", "->", "pool", "2/2"],
        ["py", "mymod.MyLayer", "", "pool", "->", "py", ""],
        ["loss", "SoftmaxWithLoss", "", "gpool, label", "->", "0.5 * loss", ""],
        ["orphan", "ReLU", "", "nowhere", "->", "out", ""],
    ]


def test_colours(net_file):
    rows = summarize_net(ncio.read_net(str(net_file)), color=True)
    assert rows[0][5] == "\033[92mdata\033[0m, \033[93mlabel\033[0m"
    assert rows[1][3] == "\033[92mdata\033[0m"            # a bottom in its top's colour
    assert rows[8][3] == "\033[41mnowhere\033[0m"         # nothing wrote it: red
    assert rows[7][5] == "\033[43;30m\033[1;4m0.5 * loss\033[0m"  # an output of the net: bold, underlined


def test_table_layout():
    text = format_table([["a", "Long-type-name", "x"], ["bbb", "T", "\033[92my\033[0m"]], max_width=5)
    # columns 4, 5 and 2 wide; the long cell overflows and pushes the next one right
    assert text == "a   Long-type-name x\nbbb T    \033[92my\033[0m\n"


def test_cli(net_file, capsys):
    assert main([str(net_file), "--phase", "TEST"]) == 0
    out = capsys.readouterr().out
    assert "orphan" not in out and "\033[" not in out   # not a terminal: no colour codes
    assert out.splitlines()[1].split() == ["conv1", "Convolution", "(w,", "x2", "Dx0)", "data", "->", "conv1",
                                           "3/2+1", "4"]
    assert main([str(net_file), "--color", "always", "-w", "8"]) == 0
    out = capsys.readouterr().out
    assert "orphan" in out and "\033[41mnowhere" in out


def test_bad_input(tmp_path, capsys):
    assert main([str(tmp_path / "absent.prototxt")]) == 1
    assert "absent.prototxt" in capsys.readouterr().err
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "x" type: "ReLU" bottom: "a" top: "a"\n  convolution_param { kernel_size: }\n}\n')
    assert main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.prototxt" in err and ":2" in err
    assert main([str(bad), "-w", "0"]) == 1
    assert "--max-width must be at least 1" in capsys.readouterr().err
