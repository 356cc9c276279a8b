"""Fixtures for the example tests: a folder laid out like the repository root, with the embedded digits."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def mnist_folder(tmp_path, monkeypatch):
    """A folder laid out like the repository root: examples/mnist and data/ with the digits, as the current
    directory (the examples' relative paths resolve there, as from the repository root)."""
    from netcompress.data.mnist5k import ensure_mnist5k

    ensure_mnist5k(str(tmp_path / "data"))
    shutil.copytree(EXAMPLES / "mnist", tmp_path / "examples" / "mnist")
    monkeypatch.chdir(tmp_path)
    return tmp_path
