"""The command line: dispatch, `time`, errors, and the terminal progress line."""
from __future__ import annotations

import io
import re

import pytest

from netcompress.cli import main as cli_main
from netcompress.log import StatusLine

LENET_DEPLOY = "examples/mnist/lenet.prototxt"


def test_usage_and_unknown_command(capsys):
    assert cli_main([]) == 2
    out = capsys.readouterr().out
    for cmd in ("train", "test", "time", "upgrade", "plot", "pipeline", "mnist5k", "dns_to_normal",
                "encode_compact", "report"):
        assert f"  {cmd} " in out
    assert cli_main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_time_prints_caffes_benchmark_lines(capsys):
    from pathlib import Path
    model = str(Path(__file__).resolve().parents[1] / LENET_DEPLOY)
    assert cli_main(["time", "--model", model, "--iterations", "2"]) == 0
    err = capsys.readouterr().err
    assert "*** Benchmark begins ***" in err and "*** Benchmark ends ***" in err
    for layer in ("conv1", "pool1", "conv2", "ip1", "ip2", "prob"):
        assert re.search(rf"\]\s+{layer}\tforward: [\d.e+-]+ ms\.", err), layer
        assert re.search(rf"\]\s+{layer}\tbackward: [\d.e+-]+ ms\.", err), layer
    for what in ("Average Forward pass", "Average Backward pass", "Average Forward-Backward", "Total Time"):
        assert re.search(rf"\] {what}: [\d.e+-]+ ms\.", err), what


def test_test_command_errors_are_clear(tmp_path, capsys):
    assert cli_main(["test", "--model", str(tmp_path / "none.prototxt"), "--weights", "x"]) == 1
    assert "none.prototxt: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "a" type: "NoSuchLayer" top: "x" }\n')
    assert cli_main(["test", "--model", str(bad), "--weights", "x"]) == 1
    assert "Unknown layer type: 'NoSuchLayer'" in capsys.readouterr().err


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_on_a_terminal_only():
    tty = FakeTTY()
    with StatusLine(100, 0, stream=tty) as bar:
        bar.update(50, "loss 0.1")
    text = tty.getvalue()
    assert "50/100" in text and "it/s" in text and "ETA" in text and "loss 0.1" in text
    assert text.endswith("\r\x1b[K")  # cleared on exit
    pipe = io.StringIO()
    with StatusLine(100, 0, stream=pipe) as bar:
        bar.update(50)
    assert pipe.getvalue() == ""  # logs written to files and pipes stay exactly Caffe's
