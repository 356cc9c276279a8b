"""Reading Caffe databases back in tests (importable from any test: tests/ is on the path)."""
from __future__ import annotations


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
