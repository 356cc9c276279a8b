"""The data of the data-parallel tests (test_distributed.py's net and solvers; test_pycaffe_nccl.py)."""
from __future__ import annotations

import pytest

from db_helpers import write_datum_lmdb


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, band_digits):
    """A folder per test module with train_lmdb (48 band digits) and test_lmdb (20)."""
    root = tmp_path_factory.mktemp("dp")
    imgs, labels = band_digits(68, 10, width=3)
    write_datum_lmdb(root / "train_lmdb", imgs[:48], labels[:48])
    write_datum_lmdb(root / "test_lmdb", imgs[48:], labels[48:])
    return root
