"""Shared pytest fixtures.

The Caffe-written fixtures live in `../shared/fixtures/caffe` beside the repository (development
checkouts only). Tests that need them use the fixtures below, which skip with a reason where that
folder is absent (a user's clone).
"""
from __future__ import annotations

import lzma
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
CAFFE_FIXTURES = SHARED / "fixtures" / "caffe"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def caffe_fixtures() -> Path:
    """`../shared/fixtures/caffe`, or skip: the Caffe fixtures ship only with the dev checkout."""
    if not (CAFFE_FIXTURES / "README.md").is_file():
        pytest.skip(f"Caffe fixtures not found at {CAFFE_FIXTURES} (they exist only beside the "
                    "development checkout, in ../shared)")
    return CAFFE_FIXTURES


def write_datum_lmdb(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write uint8 (N, C, H, W) images as Caffe Datum records with keys %08d (Caffe's layout)."""
    import lmdb

    from netcompress.proto import caffe_pb2 as pb

    n, c, h, w = images.shape
    env = lmdb.open(str(path), map_size=max(1 << 24, images.nbytes * 3))
    with env.begin(write=True) as txn:
        for i in range(n):
            d = pb.Datum(channels=c, height=h, width=w, data=images[i].tobytes(), label=int(labels[i]))
            txn.put(b"%08d" % i, d.SerializeToString())
    env.close()


@pytest.fixture(scope="session")
def fixture_workdir(caffe_fixtures: Path, tmp_path_factory) -> Path:
    """A folder laid out like the one Caffe ran in: data/mnist5k_{train,test}_lmdb built from the
    fixture's npz, the prototxts of lenet/, dns/ and oracle/, and decompressed caffemodels."""
    root = tmp_path_factory.mktemp("caffe_run")
    split = np.load(caffe_fixtures / "data" / "mnist5k_split.npz")
    (root / "data").mkdir()
    write_datum_lmdb(root / "data" / "mnist5k_train_lmdb", split["train_x"], split["train_y"])
    write_datum_lmdb(root / "data" / "mnist5k_test_lmdb", split["test_x"], split["test_y"])
    for sub in ("lenet", "dns", "oracle"):
        (root / sub).mkdir()
        for f in (caffe_fixtures / sub).iterdir():
            if f.suffix == ".xz":
                with lzma.open(f) as src, open(root / sub / f.stem, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copy(f, root / sub / f.name)
    return root


@pytest.fixture
def in_fixture_workdir(fixture_workdir: Path):
    """chdir into `fixture_workdir` for the test (Caffe resolved paths against its CWD)."""
    old = os.getcwd()
    os.chdir(fixture_workdir)
    try:
        yield fixture_workdir
    finally:
        os.chdir(old)


@pytest.fixture
def lmdb_writer():
    """`write_datum_lmdb` as a fixture, for tests that build their own small LMDBs."""
    return write_datum_lmdb
