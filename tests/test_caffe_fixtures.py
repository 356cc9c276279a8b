"""Compatibility with files real Caffe wrote (tests/fixtures/caffe, shipped with the repository)."""
from __future__ import annotations

import re

import pytest

from netcompress.cli import main as cli_main
from netcompress.net import Net


def run_test_cli(capsys, model, weights, iterations=10):
    assert cli_main(["test", "--model", model, "--weights", weights, "--iterations", str(iterations)]) == 0
    err = capsys.readouterr().err
    acc = float(re.search(r"\] accuracy = ([\d.]+)\n", err).group(1))
    loss = float(re.search(r"\] loss = ([\d.]+) \(\* 1 = ", err).group(1))
    return acc, loss, err


def test_lenet_test_command_prints_caffes_figures(in_fixture_workdir, capsys):
    acc, loss, err = run_test_cli(capsys, "lenet/lenet_train_test.prototxt", "lenet/lenet_iter_5000.caffemodel")
    # caffe_test.log: accuracy = 0.968, loss = 0.125635 (10 batches of 100 test digits)
    assert abs(acc - 0.968) <= 0.002 + 1e-9
    assert loss == pytest.approx(0.125635, rel=1e-4)
    # the per-batch lines match Caffe's log line for line
    caffe = (in_fixture_workdir / "lenet" / "caffe_test.log").read_text()
    for kind in ("accuracy", "loss"):
        ours = re.findall(rf"Batch (\d+), {kind} = (\S+)", err)
        theirs = re.findall(rf"Batch (\d+), {kind} = (\S+)", caffe)
        assert len(ours) == len(theirs) == 10
        for (i, a), (j, b) in zip(ours, theirs):
            assert i == j and float(a) == pytest.approx(float(b), rel=1e-4, abs=1e-6)


def test_caffe_caffemodel_rewrites_byte_identically(in_fixture_workdir, tmp_path):
    model = in_fixture_workdir / "lenet" / "lenet_iter_5000.caffemodel"
    net = Net("lenet/lenet_train_test.prototxt", phase="train", verbose=False)
    net.copy_from(str(model))
    out = tmp_path / "again.caffemodel"
    net.save(str(out))
    assert out.read_bytes() == model.read_bytes()


def test_raw_dns_model_test_command(in_fixture_workdir, capsys):
    acc, loss, err = run_test_cli(capsys, "dns/lenet_train_test_DNS.prototxt", "dns/lenet_DNS_iter_5000.caffemodel")
    # dns/caffe_test.log: accuracy = 0.967, loss = 0.155295
    assert abs(acc - 0.967) <= 0.002 + 1e-9
    assert loss == pytest.approx(0.155295, rel=1e-4)


def test_raw_dns_model_round_trips_with_its_masks(in_fixture_workdir, tmp_path):
    model = in_fixture_workdir / "dns" / "lenet_DNS_iter_5000.caffemodel"
    net = Net("dns/lenet_train_test_DNS.prototxt", phase="train", verbose=False)
    net.copy_from(str(model))
    assert net.layer("ip1").blob_names == ["weight", "bias", "weight_mask", "bias_mask"]
    kept = sum(int(net.layer(n).weight_mask.sum()) + int(net.layer(n).bias_mask.sum())
               for n in ("conv1", "conv2", "ip1", "ip2"))
    assert kept == 4515  # dns_to_normal_output.txt: 4515/431080 kept
    out = tmp_path / "again.caffemodel"
    net.save(str(out))
    assert out.read_bytes() == model.read_bytes()


def test_the_fixtures_ship_with_the_repository(caffe_fixtures):
    """Issue 21, point 5: the fidelity tests read fixtures inside the repository (every clone runs
    them), compressed to a few MB."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    assert caffe_fixtures == repo / "tests" / "fixtures" / "caffe"
    files = [p for p in caffe_fixtures.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5_000_000
    for name in ("lenet/lenet_iter_5000.caffemodel.xz", "dns/lenet_DNS_iter_5000.caffemodel.xz",
                 "oracle/dns_oracle_from_lenet.npz.xz", "data/mnist5k_split.json", "README.md"):
        assert (caffe_fixtures / name).is_file(), name
