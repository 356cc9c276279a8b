"""Caffe's own examples/mnist/mnist_autoencoder.prototxt (two layers named "loss", two TEST stages)
builds and trains, as in Caffe (issue 21, point 10)."""
from __future__ import annotations

import logging


def test_autoencoder_builds_and_trains(mnist_folder, caplog):
    from netcompress.solvers import Solver
    from netcompress.solvers.callbacks import TrainingCallback

    with caplog.at_level(logging.INFO, logger="netcompress"):
        solver = Solver("examples/mnist/mnist_autoencoder_solver.prototxt", max_iter=60, verbose=False)
    assert "more than one layer is named 'loss'" in caplog.text
    net = solver.net
    assert [n for n in net.layer_names if n == "loss"] == ["loss", "loss"]
    assert net.layer("loss").type_name == "EuclideanLoss"  # a name lookup finds the last, as in Caffe
    assert net.loss_weights == {"cross_entropy_loss": 1.0}  # l2_error has loss_weight 0
    # the two TEST nets, one per stage, each with its own data source
    assert len(solver.test_nets) == 2
    sources = [t.layer("data").layer_param.data_param.source for t in solver.test_nets]
    assert sources == ["data/mnist5k_train_lmdb", "data/mnist5k_test_lmdb"]
    assert [list(t.state.stage) for t in solver.test_nets] == [["test-on-train"], ["test-on-test"]]

    losses = []

    class Record(TrainingCallback):
        def after_iteration(self, s):
            losses.append(float(s.net.loss.detach()))

    solver.add_callback(Record())
    scores = solver.test(1)  # test-on-test before training
    solver.step(60)
    after = solver.test(1)
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10  # it learns
    before, now = dict(scores), dict(after)
    assert set(now) == {"cross_entropy_loss", "l2_error"}
    assert now["cross_entropy_loss"] < before["cross_entropy_loss"] and now["l2_error"] < before["l2_error"]


def test_autoencoder_trains_from_the_command_line(mnist_folder, capsys):
    from netcompress.cli import main as cli_main
    from netcompress import io as ncio

    assert cli_main(["train", "--solver", "examples/mnist/mnist_autoencoder_solver.prototxt",
                     "--iterations", "2"]) == 0
    err = capsys.readouterr().err
    assert "Test net output #0: cross_entropy_loss" in err and "Testing net (#1)" in err
    model = ncio.read_caffemodel("examples/mnist/mnist_autoencoder_iter_2.caffemodel")
    # both "loss" layers are saved (no blobs), in the net's order
    assert [l.name for l in model.layer].count("loss") == 2
