"""The command line: dispatch, `time`, errors, and the terminal progress line."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
import torch

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
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'\n" in err and "did you mean" not in err
    assert cli_main(["trian"]) == 2
    assert "unknown command 'trian'; did you mean 'train'?" in capsys.readouterr().err


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


def test_caffes_single_dash_flags_work_for_every_tool_verb(tmp_path, capsys):
    # (Caffe's own usage, `caffe test -model M -weights W -iterations 100`, was refused: "--model is required")
    from pathlib import Path

    from netcompress.net import Net

    model = str(Path(__file__).resolve().parents[1] / LENET_DEPLOY)
    weights = str(tmp_path / "w.caffemodel")
    Net(model, phase="test").save(weights)
    assert cli_main(["time", "-model", model, "-weights", weights, "-iterations", "1", "-phase", "TEST",
                     "-level", "0", "-stage", "a,b", "-gpu", ""]) == 0
    assert "*** Benchmark ends ***" in capsys.readouterr().err
    net = tmp_path / "fed.prototxt"  # (test needs a net whose data it can draw: DummyData and a loss)
    net.write_text('layer { name: "d" type: "DummyData" top: "data" top: "label" dummy_data_param { '
                   'shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n'
                   'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                   'inner_product_param { num_output: 2 } }\n'
                   'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n')
    Net(str(net), phase="test").save(weights)
    assert cli_main(["test", "-model", str(net), "-weights", weights, "-iterations", "3", "-phase", "TEST",
                     "-level", "0", "-stage", "a"]) == 0
    assert "Batch 2, loss = " in capsys.readouterr().err


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
    assert pipe.getvalue() == ""  # no progress line before 30 s (see below), no terminal codes


class FakeClock:
    """A monotonic clock that the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_without_a_terminal_every_30_seconds():
    clock, pipe = FakeClock(), io.StringIO()
    with StatusLine(1000, 100, stream=pipe, label="lenet", clock=clock) as bar:
        for it, t in ((110, 10.0), (150, 29.9)):
            clock.now = 1000.0 + t
            bar.update(it, "loss 0.5")
        assert pipe.getvalue() == ""  # nothing before 30 s
        clock.now = 1030.0
        bar.update(160, "loss 0.25")
        clock.now = 1040.0
        bar.update(170)  # 10 s after the last line: quiet
        clock.now = 1061.0
        bar.update(300, "loss 0.125")
    lines = pipe.getvalue().splitlines()
    assert len(lines) == 2
    assert re.match(r"I\d{4} [\d:.]+ +\d+ log\.py:0\] progress lenet: iteration 160/1000 \(7%\), 2\.0 it/s, "
                    r"ETA 7:00, loss 0\.25$", lines[0])
    # 200 iterations in 61 s: 3.3 it/s, 700 left
    assert lines[1].endswith("progress lenet: iteration 300/1000 (22%), 3.3 it/s, ETA 3:33, loss 0.125")
    assert not re.search(r"Iteration \d", pipe.getvalue())  # Caffe's parse_log.py keys on "Iteration N"


def test_training_without_a_terminal_prints_progress(tmp_path, monkeypatch, capsys):
    """A solver whose output is a file: a progress line whenever 30 s have passed (fake clock: each
    look at the clock advances it 31 s)."""
    from netcompress import log as nclog
    from netcompress.proto import caffe_pb2 as pb
    from netcompress.solvers import Solver
    from google.protobuf import text_format

    ticks = iter(range(10**6))
    monkeypatch.setattr(nclog, "progress_clock", lambda: 31.0 * next(ticks))
    net = text_format.Parse("""
        layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 } } }
        layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 1 } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }""", pb.NetParameter())
    sp = pb.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=3, display=0, snapshot_after_train=False,
                            snapshot_prefix=str(tmp_path / "tiny"))
    sp.net_param.CopyFrom(net)
    solver = Solver(sp, verbose=False)
    solver.net.set_input(x=torch.ones(2, 3), t=torch.zeros(2, 1))
    solver.solve()
    lines = [l for l in capsys.readouterr().err.splitlines() if "] progress " in l]
    assert [l.split("] ")[1].split(",")[0] for l in lines] == [
        "progress tiny: iteration 1/3 (33%)", "progress tiny: iteration 2/3 (67%)", "progress tiny: iteration 3/3 (100%)"]
    assert all(re.search(r", loss [\d.e+-]+$", l) for l in lines)


def test_file_tools_skip_the_thread_and_allocator_set_up(tmp_path, capsys):
    """Commands that only read or write files (Command.computes False) log no CPU-thread or malloc lines."""
    from netcompress.commands import COMMANDS

    assert not COMMANDS["summarize"].computes and COMMANDS["train"].computes
    net = tmp_path / "n.prototxt"
    net.write_text('layer { name: "d" type: "Input" top: "x" input_param { shape { dim: 1 } } }')
    assert cli_main(["summarize", str(net), "--color", "never"]) == 0
    captured = capsys.readouterr()
    assert "CPU threads" not in captured.err and "CPU memory" not in captured.err
    assert captured.out.split() == ["d", "Input", "->", "x"]


@pytest.mark.parametrize("cmd", ["train", "net2wider", "pipeline"])
def test_a_commands_help_is_the_usage_alone(capsys, cmd):
    # (a computing command logged its CPU-thread and allocator lines before the usage)
    try:
        code = cli_main([cmd, "--help"])
    except SystemExit as e:  # argparse's own exit (the tools' run_main returns it instead)
        code = e.code
    assert code == 0
    captured = capsys.readouterr()
    assert "CPU threads" not in captured.err and "CPU memory" not in captured.err
    assert captured.out.startswith("usage: ")


def test_help_lists_every_command_once_by_section(capsys):
    from netcompress.commands import COMMANDS, SECTIONS

    names = [n for _, group in SECTIONS for n in group]
    assert sorted(names) == sorted(COMMANDS) and len(names) == len(set(names))
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "  Caffe's tool verbs:\n    train " in out and "other:" not in out
    assert out.index("    pipeline ") > out.index("    compress_epsilon_resnet ")


def test_info_names_the_optional_packages_and_what_they_enable(monkeypatch):
    import shutil

    from netcompress import info

    real = info._version
    monkeypatch.setattr(info, "_version", lambda m: "not installed" if m == "plyvel" else real(m))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    opt = info._optional()
    assert opt["plyvel"] == ("not installed: LevelDB sources and --backend=leveldb (Caffe's default backend) need it "
                             "(pip install plyvel)")
    assert opt["graphviz dot"].startswith("not found: draw_net writes .dot/.gv/.raw only")
    text = info.format_info({**info.collect_info(), "optional": opt})
    assert "\noptional\n  plyvel: not installed" in text and "  Pillow: " in text


def test_the_extension_imports_first_and_the_package_stays_light(tmp_path):
    """`import netcompress._C` as a process's first import loads torch first (the extension links to libc10
    without a path to it); `import netcompress` alone does not import torch."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    r = subprocess.run([sys.executable, "-c", "import netcompress._C as c; print(c.__name__)"], cwd=tmp_path,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "netcompress._C", r.stderr
    r = subprocess.run([sys.executable, "-c", "import sys, netcompress; print('torch' in sys.modules)"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr


def test_a_closed_output_pipe_ends_a_command_quietly():
    """`netcompress ... | head`: once the reader has gone, the command stops with a shell's SIGPIPE status and
    nothing on stderr (it printed "error: broken pipe", and Python its own complaint at exit); a broken pipe
    elsewhere is still an error."""
    script = ("import sys\nfrom netcompress.boundary import guarded\n"
              "sys.exit(guarded(lambda: [print('x' * 1000) for _ in range(10 ** 5)], 'p', 'p: error: '))")
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    assert os.read(r, 10) == b"x" * 10
    os.close(r)
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (141, b"")
    other = ("import sys\nfrom netcompress.boundary import guarded\n"
             "def body():\n    raise BrokenPipeError(32, 'Broken pipe')\n"
             "sys.exit(guarded(body, 'p', 'p: error: '))")
    done = subprocess.run([sys.executable, "-c", other], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr.strip()) == (1, "p: error: broken pipe")
