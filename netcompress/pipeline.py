"""`netcompress pipeline`: the reference's LeNet compression pipeline, end to end, on the embedded
real MNIST digits (the reference's `lenet_compression_demo.py`):

  train LeNet -> DNS fine-tuning -> model2INQ_raw -> INQ 30/60/80/90/100 % -> compact encode (4/4)
  -> decode -> test the decoded model.

Each stage writes its nets, solver, log and model into the run folder; the console shows one line
per stage and a final table, also saved as `summary.json` and `summary.png`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from typing import Sequence

import torch
from google.protobuf import text_format

from . import io as ncio
from .errors import NetcompressError
from .log import get_logger
from .proto import caffe_pb2 as pb

log = get_logger("pipeline")

__all__ = ["run_pipeline", "main", "LENET"]

# The reference's LeNet (examples/mnist/lenet_train_test.prototxt); sources are filled in.
LENET = """
name: "LeNet"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 } data_param { source: "@TRAIN@" batch_size: @BATCH@ backend: LMDB } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 } data_param { source: "@TEST@" batch_size: 100 backend: LMDB } }
layer { name: "conv1" type: "@CONV@" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1 weight_filler { type: "xavier" }
                      bias_filler { type: "constant" } } @conv1@ }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "@CONV@" bottom: "pool1" top: "conv2" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 50 kernel_size: 5 stride: 1 weight_filler { type: "xavier" }
                      bias_filler { type: "constant" } } @conv2@ }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "@IP@" bottom: "pool2" top: "ip1" param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } bias_filler { type: "constant" } } @ip1@ }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "@IP@" bottom: "ip1" top: "ip2" param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } bias_filler { type: "constant" } } @ip2@ }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

_ONES = 'weight_mask_filler { type: "constant" value: 1 } bias_mask_filler { type: "constant" value: 1 }'
# reference-semantics 6.1: lenet_train_test_DNS (c_rate per layer) and the INQ stage portions.
DNS_C_RATE = {"conv1": 0.4, "conv2": 2.5, "ip1": 2.5, "ip2": 3.0}
INQ_STAGES = [(30, 0.0, 0.3), (60, 0.3, 0.6), (80, 0.6, 0.8), (90, 0.8, 0.9), (100, 0.8, 1.0)]
TEST_ITER = 10  # 1,000 test digits in batches of 100


def lenet_text(kind: str, train_lmdb: str, test_lmdb: str, batch: int, portion=(0.0, 0.0)) -> str:
    """LeNet as `normal`, `dns` or `inq` layers (the reference's nets, sources filled in)."""
    text = LENET.replace("@TRAIN@", train_lmdb).replace("@TEST@", test_lmdb).replace("@BATCH@", str(batch))
    conv, ip = {"normal": ("Convolution", "InnerProduct"), "dns": ("DNSConvolution", "DNSInnerProduct"),
                "inq": ("INQConvolution", "INQInnerProduct")}[kind]
    text = text.replace("@CONV@", conv).replace("@IP@", ip)
    for name, c_rate in DNS_C_RATE.items():
        field = ("convolution" if name.startswith("conv") else "inner_product")
        if kind == "dns":
            extra = (f"dns_{field}_param {{ gamma: 0.00001 power: 1 c_rate: {c_rate} iter_stop: 140000 "
                     f"{_ONES} }}")
        elif kind == "inq":
            extra = (f"inq_{field}_param {{ portion: {portion[0]} portion: {portion[1]} "
                     f"num_quantum_values: 7 {_ONES} }}")
        else:
            extra = ""
        text = text.replace(f"@{name}@", extra)
    return text


def solver_text(net: str, prefix: str, max_iter: int, test_interval: int, display: int, seed: int) -> str:
    """The reference's LeNet solver (inv policy, momentum 0.9, weight decay 5e-4)."""
    return (f'net: "{net}"\ntest_iter: {TEST_ITER}\ntest_interval: {test_interval}\nbase_lr: 0.01\n'
            f'momentum: 0.9\nweight_decay: 0.0005\nlr_policy: "inv"\ngamma: 0.0001\npower: 0.75\n'
            f'display: {display}\nmax_iter: {max_iter}\nsnapshot: {max_iter}\nsnapshot_prefix: "{prefix}"\n'
            f'solver_mode: CPU\nrandom_seed: {seed}\n')


@contextlib.contextmanager
def _stage_log(path: str):
    """Also send the stage's full Caffe-style log to `path`."""
    from .log import GlogFormatter

    logger = logging.getLogger("netcompress")
    fh = logging.FileHandler(path, mode="w")
    fh.setFormatter(GlogFormatter())
    fh.setLevel(logging.INFO)
    logger.addHandler(fh)
    try:
        yield
    finally:
        logger.removeHandler(fh)
        fh.close()


@contextlib.contextmanager
def _console_level(level: int):
    """Raise the level of netcompress's console handler (the stage logs keep everything)."""
    console = [h for h in logging.getLogger("netcompress").handlers if getattr(h, "_netcompress", False)]
    old = [h.level for h in console]
    for h in console:
        h.setLevel(max(level, h.level))
    try:
        yield
    finally:
        for h, lvl in zip(console, old):
            h.setLevel(lvl)


def _quiet_stdout():
    return contextlib.redirect_stdout(open(os.devnull, "w"))


def run_pipeline(out: str = "runs/lenet_pipeline", data: str = "data", ref_iters: int = 5000,
                 dns_iters: int = 5000, inq_iters: int = 1000, seed: int = 1, device: str = "cpu",
                 verbose: bool = False) -> dict:
    """Run every stage; return the summary (also written to `out/summary.json` and `.png`)."""
    with _console_level(logging.INFO if verbose else logging.WARNING):
        return _run(out, data, ref_iters, dns_iters, inq_iters, seed, device, verbose)


def _run(out, data, ref_iters, dns_iters, inq_iters, seed, device, verbose) -> dict:
    from .data.mnist5k import ensure_mnist5k
    from .net import Net
    from .solvers import Solver
    from .tools.compact import decode_compact, encode_compact
    from .tools.convert import model2inq_raw
    from .tools.report import model_report

    print(f"netcompress pipeline: LeNet on the embedded MNIST digits -> {out} "
          f"(stage logs in {os.path.join(out, 'logs')})", flush=True)
    for name, n in (("--ref-iters", ref_iters), ("--dns-iters", dns_iters), ("--inq-iters", inq_iters)):
        if n < 1:
            raise NetcompressError(f"{name} must be at least 1, got {n}")
    os.makedirs(out, exist_ok=True)
    for sub in ("nets", "logs", "models"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    train_lmdb, test_lmdb = (os.path.abspath(p) for p in ensure_mnist5k(data))
    nets = os.path.join(out, "nets")
    models = os.path.join(out, "models")

    def write_net(name: str, text: str) -> str:
        path = os.path.abspath(os.path.join(nets, name + ".prototxt"))
        ncio.atomic_write(path, text)
        return path

    normal_net = write_net("lenet", lenet_text("normal", train_lmdb, test_lmdb, 64))
    dns_net = write_net("lenet_DNS", lenet_text("dns", train_lmdb, test_lmdb, 128))
    rows: list[dict] = []
    t_start = time.time()

    def score(net_path: str, model: str) -> tuple[float, float]:
        from .solvers.evaluate import test_net

        net = Net(net_path, phase="test", device=device, verbose=False)
        net.copy_from(model)
        s = test_net(net, TEST_ITER)
        return s["accuracy"], s["loss"]

    def record(stage: str, iters: int, net_path: str, model: str, seconds: float, **extra) -> dict:
        acc, loss = score(net_path, model)
        rep = model_report(net_path, model)
        row = {"stage": stage, "iterations": iters, "accuracy": acc, "loss": loss,
               "kept": rep["total"]["kept"], "total": rep["total"]["count"],
               "kept_pct": 100.0 * rep["total"]["kept"] / rep["total"]["count"],
               "compression_rate": rep["total"]["count"] / max(1, rep["total"]["kept"]),
               "model": model, "model_bytes": os.path.getsize(model), "seconds": round(seconds, 1)}
        row.update(extra)
        rows.append(row)
        size = (f"compact {row['compact_bytes']:,} B" if "compact_bytes" in row
                else f"{row['model_bytes']:,} B")
        print(f"[{stage:>9}] acc {acc:.4f}  loss {loss:.4f}  kept {row['kept']}/{row['total']} "
              f"({row['kept_pct']:.3f}%)  {size}  ({seconds:.0f} s)", flush=True)
        return row

    def train(stage: str, net_path: str, iters: int, weights: str | None, test_interval: int) -> str:
        prefix = os.path.abspath(os.path.join(models, stage))
        solver_path = os.path.join(nets, f"solver_{stage}.prototxt")
        ncio.atomic_write(solver_path, solver_text(net_path, prefix, iters, test_interval,
                                                   display=min(100, iters), seed=seed))
        with _stage_log(os.path.join(out, "logs", f"{stage}.log")):
            solver = Solver(solver_path, device=device, weights=weights, verbose=verbose)
            solver.solve()
        return f"{prefix}_iter_{iters}.caffemodel"

    # 1. the reference LeNet from scratch
    t = time.time()
    ref_model = train("lenet", normal_net, ref_iters, None, test_interval=max(1, ref_iters))
    record("reference", ref_iters, normal_net, ref_model, time.time() - t)

    # 2. DNS fine-tuning from it
    t = time.time()
    dns_model = train("lenet_DNS", dns_net, dns_iters, ref_model, test_interval=max(1, dns_iters))
    record("DNS", dns_iters, dns_net, dns_model, time.time() - t)

    # 3. model2INQ_raw, then the INQ stages
    inq_first = write_net("lenet_inq_30", lenet_text("inq", train_lmdb, test_lmdb, 128, INQ_STAGES[0][1:]))
    inq_raw = os.path.join(models, "inq_raw.caffemodel")
    with _stage_log(os.path.join(out, "logs", "model2INQ_raw.log")), _quiet_stdout():
        model2inq_raw(dns_net, dns_model, inq_first, inq_raw)
    prev = inq_raw
    last_net = inq_first
    for pct, p0, p1 in INQ_STAGES:
        t = time.time()
        net_path = write_net(f"lenet_inq_{pct}", lenet_text("inq", train_lmdb, test_lmdb,
                                                            64 if pct == 100 else 128, (p0, p1)))
        iters = 1 if pct == 100 else inq_iters
        prev = train(f"lenet_inq_{pct}", net_path, iters, prev, test_interval=iters)
        last_net = net_path
        record(f"INQ {pct}%", iters, net_path, prev, time.time() - t)

    # 4. compact encoding of the INQ-100 model, decoding, and the decoded model's test
    t = time.time()
    compact = os.path.join(models, "lenet_compact.binary")
    decoded = os.path.join(models, "lenet_decoded.caffemodel")
    with _quiet_stdout():
        encode_compact(last_net, prev, compact, quiet=True)
        decode_compact(normal_net, compact, decoded, quiet=True)
    dense_bytes = 4 * rows[0]["total"]
    row = record("decoded", 0, normal_net, decoded, time.time() - t, compact_bytes=os.path.getsize(compact))
    summary = {
        "stages": rows,
        "dense_bytes": dense_bytes,
        "reference_caffemodel_bytes": rows[0]["model_bytes"],
        "compact_bytes": row["compact_bytes"],
        "compact_ratio_vs_caffemodel": rows[0]["model_bytes"] / row["compact_bytes"],
        "compact_ratio_vs_dense": dense_bytes / row["compact_bytes"],
        "decoded_matches_inq100": abs(row["accuracy"] - rows[-2]["accuracy"]) < 1e-9,
        "seconds": round(time.time() - t_start, 1),
        "settings": {"ref_iters": ref_iters, "dns_iters": dns_iters, "inq_iters": inq_iters, "seed": seed,
                     "device": device, "torch": torch.__version__},
    }
    ncio.atomic_write(os.path.join(out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    _plot(summary, os.path.join(out, "summary.png"))
    _print_table(summary)
    return summary


def _print_table(s: dict) -> None:
    print()
    print(f"{'stage':<10} {'iters':>6} {'accuracy':>9} {'loss':>8} {'kept':>16} {'rate':>8} {'file bytes':>12}")
    for r in s["stages"]:
        kept = f"{r['kept']}/{r['total']}"
        size = r.get("compact_bytes", r["model_bytes"])
        print(f"{r['stage']:<10} {r['iterations']:>6} {r['accuracy']:>9.4f} {r['loss']:>8.4f} {kept:>16} "
              f"{r['compression_rate']:>7.1f}x {size:>12,}")
    print()
    print(f"compact file: {s['compact_bytes']:,} bytes, {s['compact_ratio_vs_caffemodel']:.1f}x smaller than the "
          f"dense caffemodel ({s['reference_caffemodel_bytes']:,} bytes); decoded model "
          f"{'matches' if s['decoded_matches_inq100'] else 'DOES NOT match'} the INQ-100% accuracy")
    print(f"total time {s['seconds']:.0f} s")


def _plot(s: dict, path: str) -> None:
    import io as _io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = s["stages"]
    names = [r["stage"] for r in rows]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    a1.plot(names, [100 * r["accuracy"] for r in rows], marker="o")
    a1.set_ylabel("test accuracy (%)")
    a1.grid(alpha=0.3)
    sizes = [r.get("compact_bytes", r["model_bytes"]) for r in rows]
    a2.bar(names, sizes, color="tab:orange", alpha=0.7, label="file bytes")
    a2.set_yscale("log")
    a2.set_ylabel("file size (bytes)")
    ax = a2.twinx()
    ax.plot(names, [r["kept_pct"] for r in rows], marker="s", color="tab:green", label="kept %")
    ax.set_yscale("log")
    ax.set_ylabel("parameters kept (%, green)")
    a2.set_ylabel("file size (bytes; last: compact)")
    a2.tick_params(axis="x", rotation=30)
    fig.suptitle("LeNet compression pipeline (embedded MNIST digits)")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    ncio.atomic_write(path, buf.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="netcompress pipeline",
        description="The reference's LeNet compression pipeline on the embedded MNIST digits: train, DNS, "
                    "model2INQ_raw, INQ 30/60/80/90/100 %, compact encode, decode, test.")
    p.add_argument("--out", default="runs/lenet_pipeline", help="run folder (default runs/lenet_pipeline)")
    p.add_argument("--data", default="data", help="where the embedded digits' LMDBs go (default data)")
    p.add_argument("--ref-iters", type=int, default=5000, help="LeNet training iterations (default 5000)")
    p.add_argument("--dns-iters", type=int, default=5000, help="DNS fine-tuning iterations (default 5000)")
    p.add_argument("--inq-iters", type=int, default=1000,
                   help="iterations of each INQ stage 30-90 %% (default 1000; the 100 %% stage takes 1)")
    p.add_argument("--seed", type=int, default=1, help="random_seed of every solver (default 1)")
    p.add_argument("--gpu", default=None, help="GPU id (default: CPU)")
    p.add_argument("--verbose", action="store_true", help="also print every stage's Caffe log")
    a = p.parse_args(argv)
    from .device import device_from_gpu_flag

    device = str(device_from_gpu_flag(a.gpu))
    run_pipeline(a.out, a.data, a.ref_iters, a.dns_iters, a.inq_iters, a.seed, device, a.verbose)
    return 0
