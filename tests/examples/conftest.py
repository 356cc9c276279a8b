"""Fixtures for the example tests: a folder laid out like the repository root, with the embedded digits."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def mnist_folder(tmp_path):
    """A folder laid out like the repository root: examples/mnist and data/ with the digits, as the current
    directory (the examples' relative paths resolve there, as from the repository root)."""
    from netcompress.data.mnist5k import ensure_mnist5k

    ensure_mnist5k(str(tmp_path / "data"))
    shutil.copytree(EXAMPLES / "mnist", tmp_path / "examples" / "mnist")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)
