"""Caffe's log tools on Python 3: tools/extra/parse_log.py, extract_seconds.py and plot_training_log.py.

`netcompress parse_log LOG OUTDIR` writes `OUTDIR/<LOG's name>.train` and `.test`: CSV tables (Excel dialect,
as Caffe's script writes them) with the columns NumIters, Seconds, LearningRate and then every net output in
the order the log first names them, one row per iteration that logged outputs. `netcompress extract_seconds
LOG OUT` writes the seconds since "Solving" of every line that names an iteration. Both read Caffe's logs and
netcompress's alike; Caffe's own scripts are Python 2 only and, with glog 0.6's year-stamped prefixes
(`I20261122 04:44:21.121960 ...`), skip every line; here both prefixes are read.

What they keep from Caffe's scripts, so a user's plotting scripts read the same numbers:
- rows start at the first line naming an iteration and times count from the first "Solving" line; a line
  without a glog prefix is skipped (a resumed run's messages);
- LearningRate is the last `lr = X` logged before the row's outputs (Caffe's solver logs a display's rate
  after its outputs, so a train row carries the previous display's rate) and the first row takes the
  second's; NumIters is written as a float ("500.0");
- a prefix without a year takes it from the log file's change time, adding one whenever the month goes
  back (a run across New Year).
What they do differently, each a defect of Caffe's script:
- the last row is written even when it is the only one (Caffe's keeps a row back until the next iteration
  or a complete later row);
- outputs of test net #k > 0 get their own columns, named `name#k` (Caffe's overwrites net #0's values
  with them);
- a log without a "Solving" line is an error naming the file, not a crash.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import io
import math
import os
import re
from typing import Iterator, Sequence

from .. import io as ncio
from ..log import get_logger
from ..solvers.logparse import LEARNING_RATE, TEST_OUTPUT, TESTING, TRAIN_LOSS
from ._common import ToolError, numbered_inputs, refuse_overwrite, refuse_overwrites, run_tool

__all__ = ["GlogLine", "glog_lines", "CaffeLogTables", "parse_caffe_log", "csv_text", "extract_seconds",
           "CHART_TYPES", "chart_series", "plot_training_log", "parse_log_main", "extract_seconds_main",
           "plot_training_log_main"]

log = get_logger("tools.logs")

# Caffe's patterns (tools/extra/parse_log.py), as regular expressions over a whole line.
_ITERATION = re.compile(r"Iteration (\d+)")
_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
_LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
# glog's prefix: severity, [year]month day, time with microseconds.
_PREFIX = re.compile(r"^\s*[IWEF](\d{4})?(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+)\s")


@dataclasses.dataclass(frozen=True)
class GlogLine:
    number: int                          # 1-based line number in the file
    time: datetime.datetime | None       # None: the line has no glog prefix
    text: str


def glog_lines(path: str, year: int | None = None) -> Iterator[GlogLine]:
    """The lines of a glog-format log with their times. A prefix without a year (glog before 0.6) takes
    `year`, by default the file's change time's year, and one more each time the month goes back."""
    # (utf-8-sig: a byte-order mark an editor left is skipped)
    text_all = ncio.read_input_bytes(path, "training log").decode("utf-8-sig", errors="replace")
    if year is None:
        year = datetime.datetime.fromtimestamp(os.path.getctime(path)).year
    last_month = 0
    for number, text in enumerate(io.StringIO(text_all, newline=None), 1):  # as a text file reads
        m = _PREFIX.match(text)
        when = None
        if m:
            month = int(m.group(2))
            if m.group(1):
                line_year = int(m.group(1))
            else:
                if month < last_month:
                    year += 1
                line_year = year
            last_month = month
            try:
                when = datetime.datetime(line_year, month, int(m.group(3)), int(m.group(4)), int(m.group(5)),
                                         int(m.group(6)), int(m.group(7)[:6].ljust(6, "0")))
            except ValueError:  # a prefix-like line with an impossible date
                when = None
        yield GlogLine(number, when, text)


@dataclasses.dataclass
class CaffeLogTables:
    train: list[dict[str, float]]
    test: list[dict[str, float]]


class _Rows:
    """Rows keyed by iteration: a row is closed when the next iteration's output arrives."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def add(self, iteration: int, seconds: float, rate: float, name: str, value: float) -> None:
        if not self.rows or self.rows[-1]["NumIters"] != iteration:
            self.rows.append({"NumIters": float(iteration), "Seconds": seconds, "LearningRate": rate})
        self.rows[-1][name] = value

    def done(self) -> list[dict[str, float]]:
        if len(self.rows) > 1 and math.isnan(self.rows[0]["LearningRate"]):
            self.rows[0]["LearningRate"] = self.rows[1]["LearningRate"]
        return self.rows


def _solving_time(lines: Iterator[GlogLine], path: str) -> datetime.datetime:
    """The time of the solver's "Solving" line, which the log tools count seconds from (`lines` is left after
    it, as Caffe's get_start_time leaves its file)."""
    for line in lines:
        if "Solving" in line.text:
            if line.time is None:
                raise ToolError(f"{path}:{line.number}: the 'Solving' line has no glog time prefix "
                                "(IMMDD hh:mm:ss.uuuuuu or IYYYYMMDD ...)")
            return line.time
    raise ToolError(f"{path}: no 'Solving' line: not a Caffe or netcompress training log (the log tools time "
                    "every row from the solver's start)")


def parse_caffe_log(path: str, year: int | None = None) -> CaffeLogTables:
    """The train and test tables of a training log, as Caffe's parse_log.py reads them (see the module's
    docstring for the differences)."""
    lines = glog_lines(path, year)
    start = _solving_time(lines, path)
    train, test = _Rows(), _Rows()
    iteration, rate, test_net = -1, math.nan, 0
    for line in lines:
        m = _ITERATION.search(line.text)
        if m:
            iteration = int(m.group(1))
        if iteration == -1 or line.time is None:
            continue
        seconds = (line.time - start).total_seconds()
        m = _LEARNING_RATE.search(line.text)
        if m:
            rate = float(m.group(1))
        m = TESTING.search(line.text)
        if m:
            test_net = int(m.group(2))
        m = _TRAIN_OUTPUT.search(line.text)
        if m:
            train.add(iteration, seconds, rate, m.group(2), float(m.group(3)))
        m = _TEST_OUTPUT.search(line.text)
        if m:
            name = m.group(2) if test_net == 0 else f"{m.group(2)}#{test_net}"
            test.add(iteration, seconds, rate, name, float(m.group(3)))
    return CaffeLogTables(train.done(), test.done())


def csv_text(rows: Sequence[dict[str, float]], delimiter: str = ",") -> str:
    """`rows` as CSV in the Excel dialect (CRLF line ends, as Caffe's script writes), columns in the order
    they first appear; a row without a column leaves its field empty."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), dialect="excel", delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def extract_seconds(path: str, year: int | None = None) -> list[float]:
    """Seconds since the 'Solving' line of every later line that names an iteration (Caffe's
    extract_seconds.py)."""
    lines = glog_lines(path, year)
    start = _solving_time(lines, path)
    return [(ln.time - start).total_seconds() for ln in lines if "Iteration" in ln.text and ln.time is not None]


def _year_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--year", type=int, default=None,
                   help="the year of prefixes without one (glog before 0.6: IMMDD); default: the log file's "
                        "change time's year, as Caffe's scripts take it")


def _delimiter(text: str) -> str:
    text = {"\\t": "\t", "tab": "\t"}.get(text, text)
    if len(text) != 1:
        raise argparse.ArgumentTypeError(f"a delimiter is one character, got {text!r}")
    return text


def parse_log_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netcompress parse_log", description=(
        "Parse a Caffe or netcompress training log into two CSV files, OUTPUT_DIR/<log name>.train and .test "
        "(Caffe's tools/extra/parse_log.py): NumIters, Seconds, LearningRate and every net output."))
    p.add_argument("logfile_path", help="path to the log file")
    p.add_argument("output_dir", help="directory in which to place the output CSV files")
    p.add_argument("--verbose", action="store_true", help="print the output file names")
    p.add_argument("--delimiter", default=",", type=_delimiter,
                   help="column delimiter in the output files (default: ','; '\\t' or tab for a tab)")
    _year_arg(p)

    def body(a: argparse.Namespace) -> int:
        if not os.path.isdir(a.output_dir):
            raise ToolError(f"{a.output_dir}: no such directory (the CSV files' folder)")
        tables = parse_caffe_log(a.logfile_path, a.year)
        base = os.path.join(a.output_dir, os.path.basename(a.logfile_path))
        for suffix, rows in ((".train", tables.train), (".test", tables.test)):
            if not rows:
                if a.verbose:
                    print(f"Not writing {base + suffix}; no lines to write")
                continue
            ncio.atomic_write(base + suffix, csv_text(rows, a.delimiter))
            if a.verbose:
                print(f"Wrote {base + suffix}")
        if not tables.train and not tables.test:
            log.warning("%s: no 'Train net output' or 'Test net output' lines after the first iteration",
                        a.logfile_path)
        return 0

    return run_tool(p, None if argv is None else list(argv), body)


def extract_seconds_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netcompress extract_seconds", description=(
        "Write the seconds since the solver's start of every log line that names an iteration, one a line "
        "(Caffe's tools/extra/extract_seconds.py)."))
    p.add_argument("input_file", help="the training log")
    p.add_argument("output_file", help="the text file to write")
    _year_arg(p)

    def body(a: argparse.Namespace) -> int:
        # (`extract_seconds train.log train.log` replaced the log by its seconds)
        refuse_overwrite(a.output_file, writes="the seconds", input_file=a.input_file)
        seconds = extract_seconds(a.input_file, a.year)
        ncio.atomic_write(a.output_file, "".join(f"{s:f}\n" for s in seconds))
        return 0

    return run_tool(p, None if argv is None else list(argv), body)


# Caffe's plot_training_log.py chart types: each y field (sorted) against each x field.
CHART_TYPES = [f"{y}  vs. {x}" for y in ("Test accuracy", "Test loss", "Train learning rate", "Train loss")
               for x in ("Iters", "Seconds")]


def chart_series(path: str, chart_type: int, year: int | None = None) -> tuple[list[float], list[float]]:
    """(x, y) of one chart type over a training log, read as Caffe's parse_log.sh reads it: the train loss of
    the display lines ("Iteration N (...), loss = X"), the rate of "Iteration N, lr = X", and test net #0's
    outputs #0 (accuracy) and #1 (loss); seconds from the "Solving" line."""
    y_name, x_name = CHART_TYPES[chart_type].split("  vs. ")
    lines = glog_lines(path, year)
    start = _solving_time(lines, path)
    xs: list[float] = []
    ys: list[float] = []
    test_iter, test_net = None, None
    want_output = "1" if y_name == "Test loss" else "0"
    for ln in lines:
        if ln.time is None:
            continue
        seconds = (ln.time - start).total_seconds()
        m = None
        if y_name == "Train loss":
            m = TRAIN_LOSS.search(ln.text)
        elif y_name == "Train learning rate":
            m = LEARNING_RATE.search(ln.text)
        else:
            t = TESTING.search(ln.text)
            if t:
                test_iter, test_net = int(t.group(1)), int(t.group(2))
                continue
            v = TEST_OUTPUT.search(ln.text)
            if v and test_net == 0 and v.group(1) == want_output:
                xs.append(float(test_iter) if x_name == "Iters" else seconds)
                ys.append(float(v.group(3)))
            continue
        if m:
            xs.append(float(m.group(1)) if x_name == "Iters" else seconds)
            ys.append(float(m.group(2)))
    return xs, ys


def plot_training_log(chart_type: int, out_png: str, logs: Sequence[str], year: int | None = None) -> list[int]:
    """One chart of each log's series (Caffe's plot_training_log.py), written atomically; returns the number of
    points of each log."""
    from ..pyplot import pyplot
    plt = pyplot()

    y_name, x_name = CHART_TYPES[chart_type].split("  vs. ")
    fig, ax = plt.subplots(figsize=(8, 5))
    counts = []
    for path in logs:
        xs, ys = chart_series(path, chart_type, year)
        counts.append(len(xs))
        label = os.path.basename(path)
        label = label[:-4] if label.endswith(".log") else label
        ax.plot(xs, ys, label=label, marker="o", markersize=3, linewidth=0.75)
    ax.legend(loc="lower right" if "accuracy" in y_name else "upper right", ncol=1)
    ax.set_title(CHART_TYPES[chart_type])
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    ncio.atomic_write(out_png, buf.getvalue())
    return counts


def plot_training_log_main(argv: Sequence[str] | None = None) -> int:
    types = "\n".join(f"  {i}: {t}" for i, t in enumerate(CHART_TYPES))
    p = argparse.ArgumentParser(prog="netcompress plot_training_log", formatter_class=argparse.RawTextHelpFormatter,
                                description="Plot one chart of training logs (Caffe's tools/extra/"
                                            f"plot_training_log.py). Chart types:\n{types}")
    p.add_argument("chart_type", type=int, help=f"0-{len(CHART_TYPES) - 1} (see above)")
    p.add_argument("png", help="where to save the chart (.png)")
    p.add_argument("logs", nargs="+", help="training logs (Caffe's or netcompress's); several are overlaid")
    _year_arg(p)

    def body(a: argparse.Namespace) -> int:
        if not 0 <= a.chart_type < len(CHART_TYPES):
            raise ToolError(f"{a.chart_type} is not a valid chart type (0-{len(CHART_TYPES) - 1}):\n{types}")
        refuse_overwrites([a.png], writes=["the chart"], **numbered_inputs("training log", a.logs))
        counts = plot_training_log(a.chart_type, a.png, a.logs, a.year)
        for path, n in zip(a.logs, counts):
            if not n:
                log.warning("%s: no points for '%s'", path, CHART_TYPES[a.chart_type])
        return 0

    return run_tool(p, None if argv is None else list(argv), body)
