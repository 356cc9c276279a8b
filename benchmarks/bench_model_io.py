"""Model I/O benchmark: what writing and reading a .caffemodel costs (a snapshot, a converted model).

A net is built from a deploy prototxt with its fillers (AlexNet by default: 61 million values, a 233 MiB
caffemodel) and each row gives the median seconds of one call and the caffemodel's MiB/s:
  write     `Net.save`: the NetParameter with every blob (`io.array_to_blob`, the values as packed wire bytes) and
            the atomic write of its bytes
  write-py  the same message with every blob refilled through a Python list, as `array_to_blob` filled them before
            (`blob.data.extend(values.tolist())`, a Python float per value), and the same write: the reference for
            the ratio (it includes one packed `to_proto` too, so it overstates the old path by that much)
  read      `io.read_caffemodel` and `Net.copy_from`: what `--weights` costs
and `x py` is each row's speed over write-py's. Protobuf encodes and parses on one thread, so the thread count
does not change these figures; the machine's load does (compare the ratios).

    python benchmarks/bench_model_io.py                  # ~1 minute on 2 cores
    python benchmarks/bench_model_io.py --quick --json /tmp/m.json
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common as C  # noqa: E402

C.ensure_repo_on_path()

from netcompress import io as ncio  # noqa: E402
from netcompress.net import Net  # noqa: E402
from netcompress.proto import caffe_pb2 as pb  # noqa: E402

NETS = {"alexnet": "examples/imagenet/alexnet_deploy.prototxt", "lenet": "examples/mnist/lenet.prototxt"}


def write_with_lists(net: Net, path: str) -> None:
    """The caffemodel of `net` with every blob filled through a Python list (the encoding before packed bytes)."""
    out = net.to_proto()
    for lp in out.layer:
        for blob in lp.blobs:
            values = np.asarray(blob.data, dtype=np.float32)
            blob.ClearField("data")
            blob.data.extend(values.ravel().tolist())
    ncio.atomic_write(path, out.SerializeToString(deterministic=True))


def measure(name: str, min_time: float, args) -> list[dict]:
    net = Net(os.path.join(C.REPO, NETS[name]), phase=pb.TEST, verbose=False)
    values = sum(int(t.numel()) for layer in net.layers.values() for t in layer.blobs())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.caffemodel")
        net.save(path)
        mib = os.path.getsize(path) / 2**20
        other = Net(os.path.join(C.REPO, NETS[name]), phase=pb.TEST, verbose=False)
        calls = {
            "write": lambda: net.save(path),
            "write-py": None,  # below: it must not time the packed path's to_proto
            "read": lambda: other.copy_from(ncio.read_caffemodel(path)),
        }
        for variant in ("write-py", "write", "read"):
            C.progress(args, f"bench_model_io: {name} {variant}")
            fn = calls[variant] or (lambda: write_with_lists(net, path))
            t = C.time_fn(fn, "cpu", min_time=min_time, min_reps=3, max_reps=20, warmup=1)
            rows.append({"net": name, "variant": variant, "values": values, "mib": round(mib, 1), "s": t["s"],
                         "mib_per_s": mib / t["s"], "iqr_rel": t["iqr_rel"], "reps": t["reps"]})
    base = rows[0]["s"]
    for r in rows:
        r["x_py"] = base / r["s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = C.argument_parser(__doc__, "a smoke run: LeNet, short timings")
    p.add_argument("--net", choices=sorted(NETS), default=None, help="the net (default alexnet; lenet with --quick)")
    args = p.parse_args(argv)
    name = args.net or ("lenet" if args.quick else "alexnet")
    rows = measure(name, 0.05 if args.quick else 2.0, args)
    print(C.format_table([{**r, "values": f"{r['values']:,}", "s": C.fmt(r["s"]), "speed": f"{r['mib_per_s']:.0f}",
                           "x": f"{r['x_py']:.2f}x", "spread": f"{100 * r['iqr_rel']:.0f}%"} for r in rows],
                         [("net", "net"), ("variant", "variant"), ("values", "values"), ("mib", "MiB"),
                          ("s", "s"), ("speed", "MiB/s"), ("x", "x py"), ("spread", "IQR")]))
    if args.json:
        C.write_json(args.json, {"benchmark": "bench_model_io", "machine": C.machine_info(["cpu"]),
                                 "config": {"quick": args.quick, "net": name}, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
