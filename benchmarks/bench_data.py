"""Data benchmark: what reading a Caffe database costs a record, through each layer of the data path, at 1 and 2
threads.

For each backend (LMDB; LevelDB where the optional plyvel package is installed) a database of MNIST-sized records
(1 x 28 x 28 uint8 Datums, keys %08d, written by netcompress's writer, as `convert_mnist` writes them) is read in
key order, and each row gives microseconds a record:
  library  the store library's own walk (py-lmdb's cursor; plyvel's iterator without checksums, as Caffe reads):
           the floor
  reader   netcompress's positional reader, `value_at(i)` in order: the library's walk plus its checks (LMDB: each
           leaf page before the cursor enters it; LevelDB: checksummed blocks) and its bookkeeping
  layer    a Data layer's forward, batch 64, `scale: 0.00390625` as LeNet's, loading on the calling thread
           (`prefetch: 0`): the reader, the Datum parse and the transform
and `x lib` is each row over the library's. A record's costs are microseconds against a LeNet training step's
milliseconds (bench_training.py): the layer row times 64 over that step is the data path's share when it does not
prefetch (it prefetches by default, off the step's thread).

    python benchmarks/bench_data.py                  # ~1 minute on 2 cores
    python benchmarks/bench_data.py --quick --json /tmp/d.json
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common as C  # noqa: E402

C.ensure_repo_on_path()

from netcompress.data import db as ncdb  # noqa: E402
from netcompress.proto import caffe_pb2 as pb  # noqa: E402

BATCH = 64
SIDE = 28


def write_db(path: str, backend: str, n: int) -> None:
    """n MNIST-sized Datums (random pixels, label i % 10) at `path`."""
    rng = np.random.default_rng(0)
    with ncdb.open_writer(path, backend) as w:
        for i in range(n):
            d = pb.Datum(channels=1, height=SIDE, width=SIDE, label=i % 10,
                         data=rng.integers(0, 256, SIDE * SIDE, dtype=np.uint8).tobytes())
            w.put(b"%08d" % i, d.SerializeToString())


def library_walk(path: str, backend: str):
    """A function that walks every record with the store library alone; returns the count."""
    if backend == ncdb.LMDB:
        env = ncdb.open_lmdb(path)

        def walk() -> int:
            n = 0
            with env.begin() as txn:
                for _ in txn.cursor():
                    n += 1
            return n
        return walk
    handle = ncdb.open_leveldb(path)

    def walk() -> int:
        return sum(1 for _ in handle.db.iterator())
    walk.handle = handle  # (kept open with the function)
    return walk


def reader_walk(path: str):
    reader = ncdb.open_reader(path)

    def walk() -> int:
        for i in range(reader.num_records):
            reader.value_at(i)
        return reader.num_records
    return walk


def data_layer(path: str, backend: str):
    from netcompress.layers import LayerContext, create_layer
    from google.protobuf import text_format

    p = text_format.Parse(f'name: "d" type: "Data" top: "data" top: "label" phase: TEST '
                          f'transform_param {{ scale: 0.00390625 }} data_param {{ source: "{path}" '
                          f'batch_size: {BATCH} backend: {backend.upper()} prefetch: 0 }}', pb.LayerParameter())
    return create_layer(p, [], LayerContext(phase=pb.TEST, seed=1))


def measure(backends: list[str], threads: list[int], n: int, min_time: float, args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        for backend in backends:
            path = os.path.join(tmp, backend)
            write_db(path, backend, n)
            lib, rd, layer = library_walk(path, backend), reader_walk(path), data_layer(path, backend)
            try:
                assert lib() == rd() == n
                for t in threads:
                    torch.set_num_threads(t)
                    C.progress(args, f"{backend}, {t} thread(s)")
                    per = {}
                    for name, fn, records in (("library", lib, n), ("reader", rd, n), ("layer", layer, BATCH)):
                        r = C.time_fn(fn, "cpu", min_time=min_time, warmup=1)
                        per[name] = r["s"] / records
                        rows.append({"backend": backend, "threads": t, "path": name, "records": records,
                                     "us_per_record": per[name] * 1e6, "iqr_rel": r["iqr_rel"], "reps": r["reps"],
                                     "x_library": per[name] / per["library"]})
            finally:
                layer.close()
                del lib, rd, layer
    return rows


def main(argv: list[str] | None = None) -> int:
    p = C.argument_parser(__doc__, "a smoke run: 2,000 records, 1 thread, short timings")
    p.add_argument("--records", type=int, default=None, help="records in each database (default 20,000)")
    p.add_argument("--threads", default=None, help="CPU thread counts (default 1 and torch's default)")
    args = p.parse_args(argv)
    backends = [ncdb.LMDB] + ([ncdb.LEVELDB] if importlib.util.find_spec("plyvel") else [])
    n = args.records or (2000 if args.quick else 20000)
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else [1] if args.quick else sorted({1, torch.get_num_threads()}))
    before = torch.get_num_threads()
    try:
        rows = measure(backends, threads, n, 0.05 if args.quick else 0.5, args)
    finally:
        torch.set_num_threads(before)
    print(C.format_table([{**r, "us": C.fmt(r["us_per_record"]), "x": f"{r['x_library']:.2f}x",
                           "spread": f"{100 * r['iqr_rel']:.0f}%"} for r in rows],
                         [("backend", "backend"), ("threads", "threads"), ("path", "path"), ("us", "us/record"),
                          ("x", "x lib"), ("spread", "IQR")]))
    if "leveldb" not in backends:
        print("(LevelDB: not measured, plyvel is not installed)")
    if args.json:
        C.write_json(args.json, {"benchmark": "bench_data", "machine": C.machine_info(["cpu"]),
                                 "config": {"quick": args.quick, "records": n, "threads": threads,
                                            "backends": backends, "batch": BATCH},
                                 "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
