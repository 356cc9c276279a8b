"""parse_log and extract_seconds (Caffe's tools/extra scripts) on Caffe's own LeNet log and on netcompress logs."""
from __future__ import annotations

import csv
import lzma
import math
import os
import re

import pytest

from netcompress.errors import NetcompressError
from netcompress.tools._common import ToolError
from netcompress.tools.logs import csv_text, extract_seconds, extract_seconds_main, parse_caffe_log, parse_log_main


@pytest.fixture
def caffe_log(caffe_fixtures, tmp_path):
    """Caffe's 5,000-iteration LeNet training log (glog 0.6 prefixes: I20261122 04:44:21.121960)."""
    path = tmp_path / "train_lenet.log"
    path.write_bytes(lzma.decompress((caffe_fixtures / "lenet" / "train_lenet.log.xz").read_bytes()))
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_caffe_lenet_log_tables(caffe_log):
    t = parse_caffe_log(str(caffe_log))
    assert [r["NumIters"] for r in t.train] == [float(i) for i in range(0, 5000, 100)]
    assert [r["NumIters"] for r in t.test] == [float(i) for i in range(0, 5001, 500)]
    # Caffe logs "Iteration 100, lr = 0.00992565" after iteration 100's outputs: its row keeps the rate of
    # iteration 0's display, 0.01; the first row takes the second's (here the same).
    assert t.train[0] == {"NumIters": 0.0, "Seconds": 0.197207, "LearningRate": 0.01, "loss": 2.27565}
    assert t.train[1]["LearningRate"] == 0.01 and t.train[2]["LearningRate"] == 0.00992565
    assert t.test[1] == {"NumIters": 500.0, "Seconds": 12.317109, "LearningRate": 0.00971013, "accuracy": 0.962,
                         "loss": 0.152135}
    assert t.test[-1]["accuracy"] == 0.968 and t.test[-1]["loss"] == 0.125635
    assert all(0 < a["Seconds"] < b["Seconds"] for a, b in zip(t.train[1:], t.train[2:]))


def test_cli_writes_caffe_csv(caffe_log, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert parse_log_main([str(caffe_log), str(out), "--verbose"]) == 0
    printed = capsys.readouterr().out
    assert f"Wrote {out / 'train_lenet.log.train'}" in printed and f"Wrote {out / 'train_lenet.log.test'}" in printed
    raw = (out / "train_lenet.log.test").read_bytes()
    assert raw.startswith(b"NumIters,Seconds,LearningRate,accuracy,loss\r\n0.0,0.172174,0.00971013,0.099,2.35697\r\n")
    train = read_csv(out / "train_lenet.log.train")
    assert train[0] == ["NumIters", "Seconds", "LearningRate", "loss"] and len(train) == 51
    assert train[-1][0] == "4900.0"
    # a tab delimiter
    assert parse_log_main([str(caffe_log), str(out), "--delimiter", "\\t"]) == 0
    assert (out / "train_lenet.log.train").read_text().startswith("NumIters\tSeconds\tLearningRate\tloss")


def test_prefixes_without_a_year_read_the_same(caffe_log, tmp_path):
    """glog before 0.6 writes I1122 04:44:21.121960; the year comes from --year (or the file's ctime)."""
    old = tmp_path / "old.log"
    old.write_text(re.sub(r"^([IWEF])2026", r"\1", caffe_log.read_text(), flags=re.M))
    assert parse_caffe_log(str(old), year=2026) == parse_caffe_log(str(caffe_log))
    assert extract_seconds(str(old), year=2026) == extract_seconds(str(caffe_log))
    # without --year, the file's change time gives the year: the same seconds unless it is Feb 29
    assert parse_caffe_log(str(old)).train[5]["Seconds"] == parse_caffe_log(str(caffe_log)).train[5]["Seconds"]


def test_a_log_an_editor_saved_with_a_byte_order_mark_reads_the_same(caffe_log, tmp_path):
    """(the mark stuck to the first line: "the 'Solving' line has no glog time prefix")"""
    from netcompress.solvers.logparse import parse_log

    text = caffe_log.read_bytes()
    text = text[text.rindex(b"\n", 0, text.index(b"Solving")) + 1:]  # (from the 'Solving' line, which the mark hid)
    plain, bom = tmp_path / "plain.log", tmp_path / "bom.log"
    plain.write_bytes(text)
    bom.write_bytes(b"\xef\xbb\xbf" + text)
    assert parse_caffe_log(str(bom)) == parse_caffe_log(str(plain))
    assert extract_seconds(str(bom)) == extract_seconds(str(plain))
    a, b = parse_log(str(bom)), parse_log(str(plain))  # (the plot command's reader)
    assert (a.train_loss, a.lr, a.test) == (b.train_loss, b.lr, b.test) and a.train_loss


LOG_ACROSS_NEW_YEAR = """\
I1231 23:59:59.500000  7 solver.py:1] Solving LeNet
I1231 23:59:59.600000  7 solver.py:2] Iteration 0, Testing net (#0)
I1231 23:59:59.700000  7 solver.py:3]     Test net output #0: accuracy = 0.1
I1231 23:59:59.700000  7 solver.py:3] Iteration 0, Testing net (#1)
I1231 23:59:59.800000  7 solver.py:3]     Test net output #0: accuracy = 0.2
I1231 23:59:59.900000  7 solver.py:4] Iteration 0 (0 iter/s, 0s/10 iters), loss = 2.5
I1231 23:59:59.900000  7 solver.py:5]     Train net output #0: loss = 2.5 (* 1 = 2.5 loss)
I1231 23:59:59.900000  7 solver.py:6] Iteration 0, lr = 0.1
Resuming messages without a glog prefix: Train net output #0: loss = 9
I0101 00:00:01.500000  7 solver.py:4] Iteration 10 (5 iter/s, 2s/10 iters), loss = 1.25
I0101 00:00:01.500000  7 solver.py:5]     Train net output #0: loss = 1.25 (* 1 = 1.25 loss)
I0101 00:00:01.500000  7 solver.py:6] Iteration 10, lr = 0.05
"""


def test_new_year_second_test_net_and_unprefixed_lines(tmp_path):
    path = tmp_path / "run.log"
    path.write_text(LOG_ACROSS_NEW_YEAR)
    t = parse_caffe_log(str(path), year=2025)
    # the month goes back: 2026-01-01, two seconds after the start
    assert t.train == [{"NumIters": 0.0, "Seconds": 0.4, "LearningRate": 0.1, "loss": 2.5},
                       {"NumIters": 10.0, "Seconds": 2.0, "LearningRate": 0.1, "loss": 1.25}]
    # test net #1's outputs have their own column (Caffe's script overwrote net #0's with them)
    (row,) = t.test
    assert math.isnan(row.pop("LearningRate"))  # no rate logged before it, and no second row to take one from
    assert row == {"NumIters": 0.0, "Seconds": 0.2, "accuracy": 0.1, "accuracy#1": 0.2}
    assert extract_seconds(str(path), year=2025) == [0.1, 0.2, 0.4, 0.4, 2.0, 2.0]


def test_single_row_and_missing_columns(tmp_path):
    path = tmp_path / "one.log"
    path.write_text("\n".join(LOG_ACROSS_NEW_YEAR.splitlines()[:8]) + "\n")
    t = parse_caffe_log(str(path), year=2025)
    assert len(t.train) == 1 and len(t.test) == 1   # Caffe's script kept a lone row back and wrote nothing
    text = csv_text([{"NumIters": 0.0, "a": 1.0}, {"NumIters": 1.0, "b": 2.0}])
    assert text == "NumIters,a,b\r\n0.0,1.0,\r\n1.0,,2.0\r\n"


def test_bad_input(tmp_path, capsys):
    with pytest.raises(NetcompressError, match=r"nope.log: no such file"):
        parse_caffe_log(str(tmp_path / "nope.log"))
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)  # a pipe would block a reader: refused before it is opened
    with pytest.raises(NetcompressError, match=r"fifo.log: is a FIFO \(named pipe\), expected a training log"):
        parse_caffe_log(str(fifo))
    test_log = tmp_path / "caffe_test.log"
    test_log.write_text("I1122 04:47:00.000000 7 caffe.cpp:1] Batch 0, accuracy = 0.97\n")
    with pytest.raises(ToolError, match=r"caffe_test.log: no 'Solving' line: not a Caffe or netcompress training"):
        parse_caffe_log(str(test_log))
    bare = tmp_path / "bare.log"
    bare.write_text("Solving LeNet\nIteration 0, loss = 1\n")
    with pytest.raises(ToolError, match=r"bare.log:1: the 'Solving' line has no glog time prefix"):
        parse_caffe_log(str(bare))
    # the command line: one error line, exit 1; a missing output folder is named
    good = tmp_path / "run.log"
    good.write_text(LOG_ACROSS_NEW_YEAR)
    assert parse_log_main([str(good), str(tmp_path / "absent")]) == 1
    assert "absent: no such directory" in capsys.readouterr().err
    assert parse_log_main([str(test_log), str(tmp_path)]) == 1
    assert not list(tmp_path.glob("*.train"))
    capsys.readouterr()
    assert parse_log_main([str(good), str(tmp_path), "--delimiter", ";;"]) == 2
    assert "a delimiter is one character, got ';;'" in capsys.readouterr().err


def test_extract_seconds_cli(caffe_log, tmp_path):
    out = tmp_path / "seconds.txt"
    assert extract_seconds_main([str(caffe_log), str(out)]) == 0
    lines = out.read_text().splitlines()
    after_start = caffe_log.read_text().split("Solving LeNet", 1)[1]
    assert len(lines) == after_start.count("Iteration")
    assert lines[0] == "0.001185"  # "Iteration 0, Testing net (#0)", 1.185 ms after "Solving LeNet"
    assert [float(x) for x in lines] == sorted(float(x) for x in lines)


def test_plot_training_log_chart_types(caffe_log, tmp_path, capsys):
    from netcompress.tools.logs import CHART_TYPES, chart_series, plot_training_log_main

    assert CHART_TYPES[0] == "Test accuracy  vs. Iters" and CHART_TYPES[7] == "Train loss  vs. Seconds"
    x, y = chart_series(str(caffe_log), 0)   # test net #0's output #0 by iteration
    assert x == [float(i) for i in range(0, 5001, 500)] and y[0] == 0.099 and y[-1] == 0.968
    x, y = chart_series(str(caffe_log), 3)   # its output #1 (loss) by seconds since "Solving"
    assert len(x) == 11 and x[1] == pytest.approx(12.317215) and y[-1] == 0.125635
    x, y = chart_series(str(caffe_log), 4)   # "Iteration N, lr = X"
    assert x[:2] == [0.0, 100.0] and y[:2] == [0.01, 0.00992565] and len(x) == 50
    x, y = chart_series(str(caffe_log), 6)   # the display lines' loss, the final "Iteration 5000, loss" included
    assert x[-1] == 5000.0 and y[0] == 2.27565 and len(x) == 51
    out = tmp_path / "chart.png"
    assert plot_training_log_main(["6", str(out), str(caffe_log), str(caffe_log)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_training_log_main(["8", str(out), str(caffe_log)]) == 1
    assert "8 is not a valid chart type (0-7)" in capsys.readouterr().err
    assert plot_training_log_main(["1", str(out), str(tmp_path / "none.log")]) == 1
    assert "none.log: no such file" in capsys.readouterr().err
