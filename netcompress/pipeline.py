"""`netcompress pipeline`: the reference's LeNet compression pipeline, end to end, on the embedded
real MNIST digits (the reference's `lenet_compression_demo.py`):

  train LeNet -> DNS fine-tuning -> model2INQ_raw -> INQ 30/60/80/90/100 % -> compact encode (4/4)
  -> decode -> test the decoded model.

Each stage writes its nets, solver, log and model into the run folder; the console shows one line
per stage (and, during training, a progress line at least every 30 s) and a final table, also saved
as `summary.json` and `summary.png`. The digits' LMDBs go to `<run folder>/data` by default; every
path in the folder's nets and solvers is relative to the folder (run them from there), so models do
not depend on where the repository lies and the folder can be moved.

Ctrl-C snapshots the stage in training and stops with "interrupted at stage X, iteration N";
the same command again continues: finished stages (`pipeline.json`) are kept and the interrupted
one resumes from its snapshot, bit for bit as if it had not stopped.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from typing import Callable, Sequence

import torch

from . import io as ncio
from .cliargs import INT64_MAX, require_int_flag, seed_arg
from .errors import NetcompressError
from .pyplot import pyplot
from .log import get_logger

log = get_logger("pipeline")

__all__ = ["run_pipeline", "main", "LENET", "PipelineInterrupted"]

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
def _stage_log(path: str, append: bool = False):
    """Also send the stage's full Caffe-style log to `path` (appended to, for a resumed stage)."""
    from .log import GlogFormatter

    logger = logging.getLogger("netcompress")
    fh = logging.FileHandler(path, mode="a" if append else "w")
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


class PipelineInterrupted(NetcompressError):
    """The pipeline stopped at a stage (Ctrl-C); running it again in the same folder continues."""

    exit_code = 130  # as a shell reports a process that SIGINT ended


STATE_FILE = "pipeline.json"  # the run folder's settings and finished stages (resumption)
LOCK_FILE = ".pipeline.lock"  # held by the run in the folder (flock: the kernel lets go when the process ends)


@contextlib.contextmanager
def _folder_lock(root: str, out: str):
    """One pipeline at a time in a run folder: a second (the command run again in another shell) trained every
    unfinished stage again beside the first, each replacing the other's files."""
    try:
        import fcntl
    except ImportError:  # (not a POSIX system: no lock)
        yield
        return
    fd = os.open(os.path.join(root, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise NetcompressError(
                f"{out}: another `netcompress pipeline` is running in this folder"
                f"{f' (process {pid})' if pid.isdigit() else ''}; wait for it to end (a later run keeps its "
                "finished stages), or choose another --out") from None
        except OSError:  # (a file system without locks, e.g. some network ones: run unlocked)
            pass
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _in_folder(path: str):
    """Run inside the run folder: its nets and solvers hold paths relative to it, as Caffe resolves
    paths against the current directory (so the folder can move, and models do not depend on it)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_pipeline(out: str = "runs/lenet_pipeline", data: str | None = None, ref_iters: int = 5000,
                 dns_iters: int = 5000, inq_iters: int = 1000, seed: int = 1, device: str = "cpu",
                 verbose: bool = False, restart: bool = False,
                 on_solver: Callable[[str, object], None] | None = None) -> dict:
    """Run every stage; return the summary (also written to `out/summary.json` and `.png`).

    `data` is where the digits' LMDBs go (default `out/data`). Stages that a previous run in `out`
    finished are kept, and an interrupted stage resumes from its snapshot (`restart` starts over).
    `on_solver(stage, solver)` is called with each stage's Solver before it trains (e.g. to add a
    training callback).
    """
    with _console_level(logging.INFO if verbose else logging.WARNING):
        return _run(out, data, ref_iters, dns_iters, inq_iters, seed, device, verbose, restart, on_solver)


def _load_state(path: str, settings: dict, restart: bool, out: str) -> dict:
    """The finished stages of an earlier run in this folder with the same settings."""
    if restart or not os.path.exists(path):
        return {"settings": settings, "rows": {}}
    with open(path) as f:
        state = json.load(f)
    if state.get("settings") != settings:
        raise NetcompressError(
            f"{out} holds a pipeline run with other settings ({path}: {state.get('settings')}; this run: "
            f"{settings}): choose another --out, or add --restart to start that folder over")
    return state


def _latest_snapshot(prefix: str, before: int) -> str | None:
    """The newest `<prefix>_iter_N.solverstate` with N < before (an interrupted stage's snapshot)."""
    import glob
    import re

    best, best_n = None, -1
    for path in glob.glob(glob.escape(prefix) + "_iter_*.solverstate"):
        m = re.fullmatch(re.escape(prefix) + r"_iter_(\d+)\.solverstate", path)
        if m and best_n < int(m.group(1)) < before:
            best, best_n = path, int(m.group(1))
    return best


def _run(out, data, ref_iters, dns_iters, inq_iters, seed, device, verbose, restart, on_solver) -> dict:
    from .data.mnist5k import TEST_DB, TRAIN_DB, ensure_mnist5k

    print(f"netcompress pipeline: LeNet on the embedded MNIST digits -> {out} "
          f"(stage logs in {os.path.join(out, 'logs')})", flush=True)
    for name, n in (("--ref-iters", ref_iters), ("--dns-iters", dns_iters), ("--inq-iters", inq_iters)):
        require_int_flag(n, name, 1, "a solver's int max_iter")
    if not -INT64_MAX - 1 <= seed <= INT64_MAX:
        raise NetcompressError(f"--seed must be an int64 (a solver's random_seed), got {seed}")
    root = os.path.abspath(out)
    data_dir = os.path.abspath(data) if data else os.path.join(root, "data")
    for path, option in ((root, "--out"), (data_dir, "--data")):  # (makedirs would say only "already exists")
        if os.path.exists(path) and not os.path.isdir(path):
            raise NetcompressError(f"{path}: is a file; {option} names a folder (made if missing)")
    os.makedirs(root, exist_ok=True)
    with _folder_lock(root, out):
        for sub in ("nets", "logs", "models"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        ensure_mnist5k(data_dir)
        rel_data = os.path.relpath(data_dir, root)
        settings = {"ref_iters": ref_iters, "dns_iters": dns_iters, "inq_iters": inq_iters, "seed": seed}
        state = _load_state(os.path.join(root, STATE_FILE), settings, restart, out)
        with _in_folder(root):
            return _stages(out, os.path.join(rel_data, TRAIN_DB), os.path.join(rel_data, TEST_DB), settings, state,
                           device, verbose, on_solver)


def _stages(out, train_lmdb, test_lmdb, settings, state, device, verbose, on_solver) -> dict:
    """Every stage, inside the run folder (all paths relative to it)."""
    from .net import Net
    from .solvers import Solver
    from .tools.compact import decode_compact, encode_compact
    from .tools.convert import model2inq_raw
    from .tools.report import model_report

    ref_iters, dns_iters, inq_iters, seed = (settings[k] for k in ("ref_iters", "dns_iters", "inq_iters", "seed"))
    done: dict = state["rows"]

    def save_state() -> None:
        ncio.atomic_write(STATE_FILE, json.dumps(state, indent=2) + "\n")

    def write_net(name: str, text: str) -> str:
        path = os.path.join("nets", name + ".prototxt")
        ncio.atomic_write(path, text)
        return path

    normal_net = write_net("lenet", lenet_text("normal", train_lmdb, test_lmdb, 64))
    dns_net = write_net("lenet_DNS", lenet_text("dns", train_lmdb, test_lmdb, 128))
    rows: list[dict] = []
    t_start = time.time()
    where = {"stage": "", "solver": None}  # for the interruption message

    def score(net_path: str, model: str) -> tuple[float, float]:
        from .solvers.evaluate import test_net

        net = Net(net_path, phase="test", device=device, verbose=False)
        net.copy_from(model)
        s = test_net(net, TEST_ITER)
        return s["accuracy"], s["loss"]

    def show(row: dict, note: str = "") -> None:
        size = (f"compact {row['compact_bytes']:,} B" if "compact_bytes" in row
                else f"{row['model_bytes']:,} B")
        print(f"[{row['stage']:>9}] acc {row['accuracy']:.4f}  loss {row['loss']:.4f}  kept {row['kept']}/{row['total']} "
              f"({row['kept_pct']:.3f}%)  {size}  ({row['seconds']:.0f} s{note})", flush=True)

    def finished(stage: str) -> dict | None:
        row = done.get(stage)
        if row is not None and os.path.exists(row["model"]):
            rows.append(row)
            show(row, ", finished by an earlier run")
            return row
        return None

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
        done[stage] = row
        save_state()
        show(row)
        return row

    def train(stage: str, label: str, net_path: str, iters: int, weights: str | None, test_interval: int) -> str:
        prefix = os.path.join("models", stage)
        final = f"{prefix}_iter_{iters}.caffemodel"
        if os.path.exists(final):  # trained by an earlier run, which stopped before scoring it
            return final
        solver_path = os.path.join("nets", f"solver_{stage}.prototxt")
        ncio.atomic_write(solver_path, solver_text(net_path, prefix, iters, test_interval,
                                                   display=min(100, iters), seed=seed))
        resume = _latest_snapshot(prefix, iters)
        where["stage"] = label
        with _stage_log(os.path.join("logs", f"{stage}.log"), append=resume is not None):
            solver = Solver(solver_path, device=device, weights=None if resume else weights, verbose=verbose)
            where["solver"] = solver
            if resume:
                print(f"[{label:>9}] resuming from {resume}", flush=True)
            if on_solver is not None:
                on_solver(label, solver)
            solver.solve(resume_file=resume)
        if solver.iter < iters:
            raise PipelineInterrupted(
                f"interrupted at stage {label}, iteration {solver.iter} of {iters} (snapshot "
                f"{os.path.join(out, solver.snapshot_filename('.solverstate'))}); run the same `netcompress "
                f"pipeline` again (--out {out}) to continue from there")
        where["solver"] = None
        return final

    try:
        # 1. the reference LeNet from scratch
        t = time.time()
        if not finished("reference"):
            ref_model = train("lenet", "reference", normal_net, ref_iters, None, test_interval=max(1, ref_iters))
            record("reference", ref_iters, normal_net, ref_model, time.time() - t)
        ref_model = done["reference"]["model"]

        # 2. DNS fine-tuning from it
        t = time.time()
        if not finished("DNS"):
            dns_model = train("lenet_DNS", "DNS", dns_net, dns_iters, ref_model, test_interval=max(1, dns_iters))
            record("DNS", dns_iters, dns_net, dns_model, time.time() - t)
        dns_model = done["DNS"]["model"]

        # 3. model2INQ_raw, then the INQ stages
        inq_first = write_net("lenet_inq_30", lenet_text("inq", train_lmdb, test_lmdb, 128, INQ_STAGES[0][1:]))
        inq_raw = os.path.join("models", "inq_raw.caffemodel")
        if not os.path.exists(inq_raw) or "INQ 30%" not in done:
            with _stage_log(os.path.join("logs", "model2INQ_raw.log")), _quiet_stdout():
                model2inq_raw(dns_net, dns_model, inq_first, inq_raw)
        prev = inq_raw
        last_net = inq_first
        for pct, p0, p1 in INQ_STAGES:
            t = time.time()
            label = f"INQ {pct}%"
            net_path = write_net(f"lenet_inq_{pct}", lenet_text("inq", train_lmdb, test_lmdb,
                                                                64 if pct == 100 else 128, (p0, p1)))
            iters = 1 if pct == 100 else inq_iters
            if not finished(label):
                model = train(f"lenet_inq_{pct}", label, net_path, iters, prev, test_interval=iters)
                record(label, iters, net_path, model, time.time() - t)
            prev = done[label]["model"]
            last_net = net_path

        # 4. compact encoding of the INQ-100 model, decoding, and the decoded model's test
        t = time.time()
        compact = os.path.join("models", "lenet_compact.binary")
        decoded = os.path.join("models", "lenet_decoded.caffemodel")
        where["stage"] = "decoded"
        if not finished("decoded"):
            with _quiet_stdout():
                encode_compact(last_net, prev, compact, quiet=True)
                decode_compact(normal_net, compact, decoded, quiet=True)
            record("decoded", 0, normal_net, decoded, time.time() - t, compact_bytes=os.path.getsize(compact))
    except KeyboardInterrupt:
        solver = where["solver"]
        at = f", iteration {solver.iter}" if solver is not None else ""
        raise PipelineInterrupted(f"interrupted at stage {where['stage'] or 'set-up'}{at}; run the same "
                                  f"`netcompress pipeline` again (--out {out}) to continue") from None
    row = rows[-1]
    dense_bytes = 4 * rows[0]["total"]
    summary = {
        "stages": rows,
        "dense_bytes": dense_bytes,
        "reference_caffemodel_bytes": rows[0]["model_bytes"],
        "compact_bytes": row["compact_bytes"],
        "compact_ratio_vs_caffemodel": rows[0]["model_bytes"] / row["compact_bytes"],
        "compact_ratio_vs_dense": dense_bytes / row["compact_bytes"],
        "decoded_matches_inq100": abs(row["accuracy"] - rows[-2]["accuracy"]) < 1e-9,
        "seconds": round(time.time() - t_start, 1),
        "settings": {**settings, "device": device, "torch": torch.__version__},
    }
    ncio.atomic_write("summary.json", json.dumps(summary, indent=2) + "\n")
    _plot(summary, "summary.png")
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
    """Write `_figure(s)` as a PNG."""
    import io as _io

    fig = _figure(s)
    plt = pyplot()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    ncio.atomic_write(path, buf.getvalue())


def _figure(s: dict):
    """Accuracy on its absolute 0-100 % scale (values written at the points), and each stage's file
    size on a log axis that starts a decade below the smallest (so the compact file's bar shows)."""
    import math

    plt = pyplot()

    rows = s["stages"]
    names = [r["stage"] for r in rows]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    acc = [100 * r["accuracy"] for r in rows]
    a1.plot(names, acc, marker="o")
    a1.set_ylim(0, 105)
    a1.set_ylabel("test accuracy (%, full scale)")
    for x, y in enumerate(acc):
        a1.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
    a1.grid(alpha=0.3)
    sizes = [r.get("compact_bytes", r["model_bytes"]) for r in rows]
    colors = ["tab:red" if "compact_bytes" in r else "tab:orange" for r in rows]
    a2.bar(names, sizes, color=colors, alpha=0.7)
    a2.set_yscale("log")
    a2.set_ylim(10 ** math.floor(math.log10(min(sizes)) - 1), max(sizes) * 4)
    for x, b in enumerate(sizes):
        a2.annotate(f"{b:,}", (x, b), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    a2.set_ylabel("file size (bytes; red: the compact file)")
    ax = a2.twinx()
    ax.plot(names, [r["kept_pct"] for r in rows], marker="s", color="tab:green", label="kept %")
    ax.set_yscale("log")
    ax.set_ylabel("parameters kept (%, green)")
    a2.tick_params(axis="x", rotation=30)
    fig.suptitle("LeNet compression pipeline (embedded MNIST digits)")
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="netcompress pipeline",
        description="The reference's LeNet compression pipeline on the embedded MNIST digits: train, DNS, "
                    "model2INQ_raw, INQ 30/60/80/90/100 %, compact encode, decode, test.")
    p.add_argument("--out", default="runs/lenet_pipeline", help="run folder (default runs/lenet_pipeline)")
    p.add_argument("--data", default=None,
                   help="where the embedded digits' LMDBs go (default: OUT/data, inside the run folder)")
    p.add_argument("--ref-iters", type=int, default=5000, help="LeNet training iterations (default 5000)")
    p.add_argument("--dns-iters", type=int, default=5000, help="DNS fine-tuning iterations (default 5000)")
    p.add_argument("--inq-iters", type=int, default=1000,
                   help="iterations of each INQ stage 30-90 %% (default 1000; the 100 %% stage takes 1)")
    p.add_argument("--seed", type=seed_arg(-2**63), default=1,
                   help="random_seed of every solver (default 1; negative: unseeded, as Caffe)")
    p.add_argument("--gpu", default=None, help="GPU id (default: CPU)")
    p.add_argument("--verbose", action="store_true", help="also print every stage's Caffe log")
    p.add_argument("--restart", action="store_true",
                   help="start over in OUT (by default a run continues what an earlier run there finished)")
    a = p.parse_args(argv)
    from .device import device_from_gpu_flag

    device = str(device_from_gpu_flag(a.gpu))
    run_pipeline(a.out, a.data, a.ref_iters, a.dns_iters, a.inq_iters, a.seed, device, a.verbose, a.restart)
    return 0
