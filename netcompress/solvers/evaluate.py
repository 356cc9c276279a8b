"""Scoring a net on its data: Caffe's `caffe test` loop, shared by `netcompress test`, the solver's
callers and the pipelines."""
from __future__ import annotations

import contextlib

import torch

from ..log import get_logger, stop_if_reader_gone

log = get_logger("test")

__all__ = ["TestScores", "test_net"]


class TestScores:
    """The mean of every output element over the scored batches, and the mean loss."""

    __test__ = False  # not a pytest class

    def __init__(self, loss: float, outputs: list[tuple[str, float, float]]):
        self.loss = loss
        self.outputs = outputs  # (name, mean value, loss weight), one per output element

    def __getitem__(self, name: str) -> float:
        for n, v, _ in self.outputs:
            if n == name:
                return v
        raise KeyError(name)


def test_net(net, iterations: int, log_batches: bool = False) -> TestScores:
    """Caffe's `test` loop: forward `iterations` batches, average each output element. With `log_batches`, each
    batch's outputs are logged, and a log whose reader has gone stops the loop (log.LogReaderGone)."""
    sums: list[float] = []
    names: list[tuple[str, float]] = []
    total_loss = 0.0
    with torch.no_grad(), (stop_if_reader_gone() if log_batches else contextlib.nullcontext(None)) as gone:
        for i in range(iterations):
            if gone:  # (`netcompress test ... 2>&1 | head`: its batch lines are its output)
                gone(f"scoring stopped after batch {i - 1}")
            outputs = net()
            iter_loss = float(net.loss) if net.loss is not None else 0.0
            total_loss += iter_loss
            idx = 0
            for name, blob in outputs.items():
                vals = blob.detach().reshape(-1).double().cpu().tolist()
                weight = net.loss_weights.get(name, 0.0)
                for v in vals:
                    if i == 0:
                        sums.append(v)
                        names.append((name, weight))
                    else:
                        sums[idx] += v
                    idx += 1
                    if log_batches:
                        log.info("Batch %d, %s = %g", i, name, v)
    n = max(1, iterations)
    return TestScores(total_loss / n, [(nm, s / n, w) for (nm, w), s in zip(names, sums)])


test_net.__test__ = False  # type: ignore[attr-defined]
