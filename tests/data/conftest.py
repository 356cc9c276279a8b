"""Fixtures for the netcompress.data tests: small LMDBs, images, log capture, the shared fixtures."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from netcompress.proto import caffe_pb2 as pb

REPO = Path(__file__).resolve().parents[2]
MNIST5K_SPLIT = REPO / "tests" / "fixtures" / "caffe" / "data" / "mnist5k_split.json"


@pytest.fixture(scope="session")
def mnist5k_split_digests() -> dict[str, str]:
    """SHA-256 digests of the split the reference Caffe read (tests/conftest.py `array_digest`)."""
    import json

    if not MNIST5K_SPLIT.is_file():
        pytest.skip(f"{MNIST5K_SPLIT} not found (a package built without tests/fixtures)")
    return json.loads(MNIST5K_SPLIT.read_text())["sha256"]


def write_records(path: Path, datums: list[pb.Datum], keys: list[bytes] | None = None) -> Path:
    from netcompress.data.db import LmdbWriter

    with LmdbWriter(str(path), map_size=1 << 20) as db:
        for i, d in enumerate(datums):
            db.put(keys[i] if keys else b"%08d" % i, d.SerializeToString())
    return path


def raw_images(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


@pytest.fixture
def small_lmdb(tmp_path) -> tuple[Path, np.ndarray]:
    """10 raw 3x6x8 records with label = index, keys %08d."""
    x = raw_images(10, 3, 6, 8)
    datums = [pb.Datum(channels=3, height=6, width=8, data=x[i].tobytes(), label=i) for i in range(10)]
    return write_records(tmp_path / "small_lmdb", datums), x


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def data_log():
    """Messages logged by netcompress.data (independent of how logging is configured)."""
    logger = logging.getLogger("netcompress.data")
    h = _ListHandler()
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(h)
    try:
        yield h.lines
    finally:
        logger.removeHandler(h)
        logger.setLevel(old)


def layer_param(text: str) -> pb.LayerParameter:
    from google.protobuf import text_format

    return text_format.Parse(text, pb.LayerParameter())


def make_layer(text: str, phase: int = pb.TEST, seed: int | None = 7, rank: int = 0,
               world_size: int = 1):
    """Build one layer from its prototxt text with a LayerContext."""
    from netcompress.layers import LayerContext, create_layer

    ctx = LayerContext(phase=phase, seed=seed, rank=rank, world_size=world_size)
    p = layer_param(text)
    if not p.HasField("phase"):
        p.phase = phase
    return create_layer(p, [], ctx)


@pytest.fixture(name="make_layer")
def _make_layer_fixture():
    return make_layer


@pytest.fixture(name="write_records")
def _write_records_fixture():
    return write_records
