"""examples/mnist/lstm_rows_*: an LSTM reading each digit row by row, fed from the MNIST LMDBs by BVLC layers
only (Slice, Concat, Reshape, DummyData for `cont`), learns the real digits."""
from __future__ import annotations


def test_the_row_lstm_learns_the_digits(mnist_folder):
    from netcompress.solvers import Solver

    solver = Solver("examples/mnist/lstm_rows_solver.prototxt", max_iter=300, verbose=False)
    net = solver.net
    assert net.blob_shapes["seq"] == (28, 100, 28) and net.blob_shapes["cont"] == (28, 100)
    assert net.blob_shapes["h"] == (28, 100, 64) and net.blob_shapes["last"] == (100, 64)
    before = dict(solver.test(0))
    solver.step(300)
    after = dict(solver.test(0))
    # 1,000 test digits; untrained about 0.1; the README's 2,000 iterations reach 0.958
    assert before["accuracy"] < 0.3 and after["accuracy"] > 0.85, (before, after)
    assert after["loss"] < 0.5 * before["loss"]
