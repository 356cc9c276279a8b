"""Parse Caffe (and netcompress) training logs into curves; plot them with matplotlib."""
from __future__ import annotations

import dataclasses
import re

__all__ = ["TrainingLog", "parse_log", "plot_logs", "TRAIN_LOSS", "LEARNING_RATE", "TESTING", "TEST_OUTPUT"]

# The solver's lines, as Caffe writes them (netcompress.tools.logs reads them too):
TRAIN_LOSS = re.compile(r"\] Iteration (\d+)(?: \([^)]*\))?, loss = ([-+.\deEinfa]+)")  # iteration, loss
LEARNING_RATE = re.compile(r"\] Iteration (\d+), lr = ([-+.\deE]+)")                     # iteration, rate
TESTING = re.compile(r"\] Iteration (\d+), Testing net \(#(\d+)\)")                     # iteration, test net
TEST_OUTPUT = re.compile(r"\]\s+Test net output #(\d+): (\S+) = ([-+.\deEinfa]+)")       # index, name, value


@dataclasses.dataclass
class TrainingLog:
    path: str
    train_loss: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    lr: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    # test net index -> output name -> [(iteration, value)]
    test: dict[int, dict[str, list[tuple[int, float]]]] = dataclasses.field(default_factory=dict)

    def final_test(self, name: str, net: int = 0) -> float:
        return self.test[net][name][-1][1]


def parse_log(path: str) -> TrainingLog:
    """Training loss, learning rate and test outputs by iteration, from a glog-format log."""
    out = TrainingLog(path)
    current = None
    with open(path, encoding="utf-8-sig", errors="replace") as f:  # (a byte-order mark an editor left is skipped)
        for line in f:
            m = TRAIN_LOSS.search(line)
            if m:
                out.train_loss.append((int(m.group(1)), float(m.group(2))))
                continue
            m = LEARNING_RATE.search(line)
            if m:
                out.lr.append((int(m.group(1)), float(m.group(2))))
                continue
            m = TESTING.search(line)
            if m:
                current = (int(m.group(1)), int(m.group(2)))
                continue
            m = TEST_OUTPUT.search(line)
            if m and current is not None:
                it, net = current
                out.test.setdefault(net, {}).setdefault(m.group(2), []).append((it, float(m.group(3))))
    return out


def plot_logs(paths: list[str], out_png: str, labels: list[str] | None = None) -> list[TrainingLog]:
    """One PNG with the training loss, every test output and the learning rate of each log."""
    import os

    from ..pyplot import pyplot
    plt = pyplot()

    from ..io import atomic_write

    logs = [parse_log(p) for p in paths]
    if not any(lg.train_loss or lg.test or lg.lr for lg in logs):
        from ..errors import NetcompressError

        raise NetcompressError(f"{', '.join(paths)}: no training loss, test output or learning rate lines to plot "
                               "(not a Caffe or netcompress training log?)")
    labels = labels or [os.path.basename(p) for p in paths]

    def legend(ax) -> None:  # (matplotlib warns about a legend of no curves)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)

    test_names = sorted({(n, k) for lg in logs for n, d in lg.test.items() for k in d})
    panels = 2 + len(test_names)
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.6 * panels), squeeze=False)
    ax = axes[0, 0]
    for lg, lab in zip(logs, labels):
        if lg.train_loss:
            xs, ys = zip(*lg.train_loss)
            ax.plot(xs, ys, label=lab)
    ax.set_ylabel("train loss")
    if all(y > 0 for lg in logs for _, y in lg.train_loss) and any(lg.train_loss for lg in logs):
        ax.set_yscale("log")  # (a loss of 0 or below, or none at all, stays on a linear axis)
    legend(ax)
    for i, (net, name) in enumerate(test_names):
        ax = axes[1 + i, 0]
        for lg, lab in zip(logs, labels):
            pts = lg.test.get(net, {}).get(name)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", markersize=3, label=lab)
        ax.set_ylabel(f"test #{net} {name}")
        legend(ax)
    ax = axes[-1, 0]
    for lg, lab in zip(logs, labels):
        if lg.lr:
            xs, ys = zip(*lg.lr)
            ax.plot(xs, ys, label=lab)
    ax.set_ylabel("learning rate")
    ax.set_xlabel("iteration")
    fig.tight_layout()
    import io as _io
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(out_png, buf.getvalue())
    return logs
