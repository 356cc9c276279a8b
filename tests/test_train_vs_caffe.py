"""Training against real Caffe's runs on the fixture's 4,000/1,000 MNIST split (slow;
tests/fixtures/caffe). netcompress starts from Caffe's own initial weights (random_seed), reads the
data in the same order and applies the same updates, so its run tracks Caffe's log closely."""
from __future__ import annotations

import os
import re
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
    # and the curves track Caffe's (observed: accuracy within 0.003, test loss within 0.9 %)
    for it in c_acc:
        assert abs(acc[it] - c_acc[it]) <= 0.004 + 1e-9, it
        assert loss[it] == pytest.approx(c_loss[it], rel=0.03), it
    train, c_train = dict(ours.train_loss), dict(caffe.train_loss)
    rel = [abs(train[i] - c_train[i]) / c_train[i] for i in c_train]
    assert len(rel) == 51
    assert max(rel) < 0.15 and float(np.median(rel)) < 0.05  # observed: 10.2 % and 1.1 %
    # identical start: Caffe's initial weights
    assert train[0] == pytest.approx(2.27565, rel=1e-5)
    assert ncio.read_caffemodel("a_lenet/lenet_iter_5000.caffemodel").layer[1].name == "conv1"
    # the same kinds of log lines in the same order: every message Caffe's tool and solvers logged (numbers
    # aside), first occurrences in order, is one of ours in that order; ours adds only its own notes
    theirs, mine = _templates(in_fixture_workdir / "lenet" / "train_lenet.log"), _templates(log_file)
    assert [t for t in mine if t in theirs] == theirs
    # (threads and memory settings, epochs, and the progress line that stands in for a terminal's status bar)
    extra = [t for t in mine if t not in theirs]
    assert extra and all(t.startswith(("CPU threads: ", "CPU memory: ", "Epoch N done ", "progress ")) for t in extra)


def _templates(path) -> list[str]:
    """The distinct messages of a training log outside the nets' set-up (net.cpp / net.py lines, checked in
    tests/test_graph.py), numbers replaced by N, in the order they first appear."""
    out: list[str] = []
    for line in open(path, encoding="utf-8"):
        m = re.match(r"^[IWEF]\S+ \S+ +\d+ (\S+?):\d+\] (.*)$", line.rstrip("\n"))
        if not m or m.group(1) in ("net.cpp", "net.py", "layer_factory.hpp"):
            continue
        t = re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "N", m.group(2))
        if t not in out:
            out.append(t)
    return out


def _test_accuracy(net_path: str, model: str) -> float:
    from netcompress.solvers.evaluate import test_net
    from netcompress.net import Net

    net = Net(net_path, phase="test", verbose=False)
    net.copy_from(model)
    return test_net(net, 10)["accuracy"]


def test_dns_then_inq_on_caffes_lenet(in_fixture_workdir, capsys):
    """Issue 4: DNS fine-tuning of Caffe's dense LeNet with the fixture's DNS solver keeps at most 2 %
    of the parameters within 1 point of the dense 0.968 (Caffe: 1.05 % at 0.967); INQ to 100 % from
    that model stays within 0.5 points of it (Caffe: 0.964)."""
    from netcompress.tools.report import model_report

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs("b_dns", exist_ok=True)
    shutil.copy("dns/lenet_train_test_DNS.prototxt", "b_dns/lenet_train_test_DNS.prototxt")
    assert cli_main(["train", "--solver", "dns/lenet_solver_DNS.prototxt",
                     "--weights", "lenet/lenet_iter_5000.caffemodel"]) == 0
    dns_model = "b_dns/lenet_DNS_iter_5000.caffemodel"
    rep = model_report("dns/lenet_train_test_DNS.prototxt", dns_model)
    kept = rep["total"]["kept"] / rep["total"]["count"]
    assert 0.005 <= kept <= 0.02  # Caffe kept 1.047 % (observed here: 1.052 %)
    dns_acc = _test_accuracy("dns/lenet_train_test_DNS.prototxt", dns_model)
    assert dns_acc >= 0.968 - 0.01
    capsys.readouterr()

    # INQ with the shipped example nets and solvers (data/ is laid out as they expect)
    shutil.copytree(os.path.join(repo, "examples", "mnist"), "examples/mnist", dirs_exist_ok=True)
    assert cli_main(["model2INQ_raw", "dns/lenet_train_test_DNS.prototxt", dns_model,
                     "examples/mnist/lenet_train_test_inq_30.prototxt", "inq_raw.caffemodel"]) == 0
    prev = "inq_raw.caffemodel"
    for pct, iters in ((30, 1000), (60, 1000), (80, 1000), (90, 1000), (100, 1)):
        assert cli_main(["train", "--solver", f"examples/mnist/lenet_solver_inq_{pct}.prototxt",
                         "--weights", prev]) == 0
        prev = f"examples/mnist/lenet_inq_{pct}_iter_{iters}.caffemodel"
    capsys.readouterr()
    final = ncio.read_caffemodel(prev)
    for layer in final.layer:
        if len(layer.blobs) == 4:  # every weight is 0 or a power of two, every mask 0
            w = ncio.blob_to_array(layer.blobs[0])
            nz = np.abs(w[w != 0])
            assert np.all(np.log2(nz) == np.round(np.log2(nz))), layer.name
            assert not ncio.blob_to_array(layer.blobs[2]).any(), layer.name
    inq_acc = _test_accuracy("examples/mnist/lenet_train_test_inq_100.prototxt", prev)
    assert abs(inq_acc - dns_acc) <= 0.005 + 1e-9  # observed: 0.969 vs 0.969 (1 and 2 threads)
