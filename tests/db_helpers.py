"""Writing and reading Caffe databases in tests (importable from any test: tests/ is on the path)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def read_datum_records(path) -> list:
    """Every (key, Datum) of an LMDB or LevelDB, in key order, through netcompress's reader."""
    from netcompress.data.db import open_reader
    from netcompress.proto import caffe_pb2 as pb

    db = open_reader(str(path))
    out = []
    for i in range(db.num_records):
        k, v = db.item_at(i)
        d = pb.Datum()
        d.ParseFromString(v)
        out.append((k, d))
    return out


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
