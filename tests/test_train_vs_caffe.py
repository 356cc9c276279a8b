"""Training against real Caffe's runs on the fixture's 4,000/1,000 MNIST split (slow; skipped
without ../shared). netcompress starts from Caffe's own initial weights (random_seed), reads the
data in the same order and applies the same updates, so its run tracks Caffe's log closely."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from netcompress import io as ncio
from netcompress.cli import main as cli_main
from netcompress.solvers.logparse import parse_log

pytestmark = pytest.mark.slow


def test_lenet_training_tracks_caffes_log(in_fixture_workdir, tmp_path, capsys):
    os.makedirs("a_lenet", exist_ok=True)
    shutil.copy("lenet/lenet_train_test.prototxt", "a_lenet/lenet_train_test.prototxt")
    rc = cli_main(["train", "--solver", "lenet/lenet_solver.prototxt"])
    assert rc == 0
    log_file = tmp_path / "train.log"
    log_file.write_text(capsys.readouterr().err)
    ours = parse_log(str(log_file))
    caffe = parse_log(str(in_fixture_workdir / "lenet" / "train_lenet.log"))
    acc, c_acc = dict(ours.test[0]["accuracy"]), dict(caffe.test[0]["accuracy"])
    loss, c_loss = dict(ours.test[0]["loss"]), dict(caffe.test[0]["loss"])
    assert sorted(acc) == sorted(c_acc) == list(range(0, 5001, 500))
    # the criterion: the final accuracy within 0.5 points of Caffe's 0.968
    assert abs(acc[5000] - 0.968) <= 0.005 + 1e-9
    # and the curves track Caffe's (observed: accuracy within 0.001, test loss within 0.8%)
    for it in c_acc:
        assert abs(acc[it] - c_acc[it]) <= 0.004 + 1e-9, it
        assert loss[it] == pytest.approx(c_loss[it], rel=0.03), it
    train, c_train = dict(ours.train_loss), dict(caffe.train_loss)
    rel = [abs(train[i] - c_train[i]) / c_train[i] for i in c_train]
    assert len(rel) == 51
    assert max(rel) < 0.15 and float(np.median(rel)) < 0.05  # observed: 4.5 % and 1 %
    # identical start: Caffe's initial weights
    assert train[0] == pytest.approx(2.27565, rel=1e-5)
    assert ncio.read_caffemodel("a_lenet/lenet_iter_5000.caffemodel").layer[1].name == "conv1"
