"""Training benchmark: iterations per second of LeNet, CIFAR-10 full and AlexNet, plain vs DNS vs INQ.

Each net is the example prototxt with its data layer replaced by an Input layer (a fixed random batch: the
benchmark measures the net, not data loading) and a SoftmaxWithLoss on the last layer. The DNS and INQ
variants are derived by changing the layer types, Convolution -> DNSConvolution / INQConvolution and
InnerProduct -> DNSInnerProduct / INQInnerProduct, with constant-1 mask fillers:
  DNS: c_rate 1, gamma 1e-5, power 1 (the LeNet example's), so at these iteration counts (1 + gamma·iter)^-power
       is ~1 and a surgery (statistics once, mask update + masked weight) runs at nearly every forward, as at the
       start of a DNS run; the forward computes with W⊙M and the gradient is spliced.
  INQ: portion 0 -> 0.3 with 7 quantum values: 30 % of each blob is quantized at iteration 0 (in warm-up), and
       every update freezes those entries (the masked SGD update).
Per (net, variant, device, threads):
  fwd+bwd  ms per forward + backward at iteration 0 (what `caffe time` measures: Caffe's DNS layers do their
           surgery inside every TRAIN forward, and `caffe time` never advances the iteration)
  train    iterations/s of Solver.step (forward, backward, SGD momentum update, DNS/INQ hooks)
  memory   peak memory of a few steps of that variant alone, above what its built solver holds: CUDA peak
           allocated (torch.cuda.max_memory_allocated); CPU, which has no allocator statistics, peak resident
           set size of its own process (--isolate); plus the bytes of parameters, masks and history.
The variants of a (net, device, threads) are timed in rotation, one step of each in turn (medians over the
rounds), so that a slow period of a shared machine affects all of them alike; each CPU thread count runs in its
own process (--isolate).
Knowledge distillation (LeNet, per device and threads): the plain student alone, against the same student with a
teacher in its net (a copy of the net prefixed t_ by rename_layers, every blob lr_mult 0) and a
KnowledgeDistillationLoss (HINTON, T 4, soft 0.9, hard 0.1) in place of its SoftmaxWithLoss, timed in rotation
in one process: the ratio is the cost of the teacher's forward and the KD loss.

    python benchmarks/bench_training.py                 # full CPU run (+ CUDA when present), ~15 min
    python benchmarks/bench_training.py --quick --json /tmp/t.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common as C  # noqa: E402
from netcompress import io as ncio  # noqa: E402
from netcompress.proto import caffe_pb2 as pb  # noqa: E402

NETS = {
    # name: prototxt, input shape (C, H, W), classes, default batch (full run), batches for fwd+bwd
    "lenet": dict(prototxt="examples/mnist/lenet_train_test.prototxt", shape=(1, 28, 28), classes=10,
                  batch=64, fwd_bwd_batches=(64, 128)),
    "cifar10_full": dict(prototxt="examples/cifar10/cifar10_full.prototxt", shape=(3, 32, 32), classes=10,
                         batch=100, fwd_bwd_batches=(100,)),
    # 2 CPU cores: a reduced batch keeps an AlexNet run to minutes (the ImageNet batch is 256).
    "alexnet": dict(prototxt="examples/imagenet/alexnet_deploy.prototxt", shape=(3, 227, 227), classes=1000,
                    batch=4, fwd_bwd_batches=(4,)),
}
VARIANTS = ("plain", "dns", "inq")
KD_NETS = ("lenet",)  # the KD row: a same-size teacher, so the ratio is about 1 + one forward / fwd+bwd
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "Input", "DummyData", "MemoryData", "WindowData"}
# The reference Caffe on this machine class (issue): CPU, one BLAS thread, LeNet.
CAFFE_LENET = {"fwd_bwd_ms": {64: 20.7, 128: 40.7}, "train_it_s": 31.0, "target_speedup": 2.0}


# ---------------------------------------------------------------------------------------------------
# Nets
# ---------------------------------------------------------------------------------------------------

def build_net_param(name: str, variant: str, batch: int) -> pb.NetParameter:
    """The example net with an Input layer for data and label, a SoftmaxWithLoss, and the variant's layers."""
    spec = NETS[name]
    src = ncio.read_net(os.path.join(C.REPO, spec["prototxt"]))
    out = pb.NetParameter()
    out.name = f"{src.name or name}_{variant}"
    inp = out.layer.add()
    inp.name, inp.type = "data", "Input"
    inp.top.extend(["data", "label"])
    inp.input_param.shape.add().dim.extend([batch, *spec["shape"]])
    inp.input_param.shape.add().dim.extend([batch])
    has_loss = False
    logits = None
    for lp in src.layer:
        if lp.type in DATA_TYPES or lp.type == "Accuracy":
            continue
        if any(r.phase == pb.TEST for r in lp.include):
            continue
        if lp.type == "Softmax":  # a deploy net's "prob": trained through a loss instead
            logits = lp.bottom[0]
            continue
        layer = out.layer.add()
        layer.CopyFrom(lp)
        del layer.include[:]
        if layer.type.endswith("Loss"):
            has_loss = True
        if layer.type in ("Convolution", "InnerProduct"):
            _prepare_weighted(layer, variant)
    if not has_loss:
        loss = out.layer.add()
        loss.name, loss.type = "loss", "SoftmaxWithLoss"
        loss.bottom.extend([logits or out.layer[-1].top[0], "label"])
        loss.top.append("loss")
    return out


def build_kd_net_param(name: str, batch: int) -> pb.NetParameter:
    """The plain net as the student, with a frozen copy of itself (prefixed t_) as the teacher and a
    KnowledgeDistillationLoss on both logits and the label in place of the SoftmaxWithLoss."""
    from netcompress.net import Net
    from netcompress.tools.kd import rename_net

    student = build_net_param(name, "plain", batch)
    counts = {n: len(l.blob_names) for n, l in Net(student, phase=pb.TRAIN, verbose=False).named_layers()}
    teacher, _ = rename_net(student, "t_", freeze=True, blob_counts=counts)
    out = pb.NetParameter()
    out.name = f"{student.name}_kd"
    for lp in student.layer:
        if lp.type == "SoftmaxWithLoss":
            logits = lp.bottom[0]
            continue
        out.layer.add().CopyFrom(lp)
    for lp in teacher.layer:
        if len(lp.bottom) and lp.type != "SoftmaxWithLoss":
            out.layer.add().CopyFrom(lp)
    kd = out.layer.add()
    kd.name, kd.type = "kd", "KnowledgeDistillationLoss"
    kd.bottom.extend([logits, "t_" + logits, "label"])
    kd.top.append("kd_loss")
    kd.kd_param.temperature, kd.kd_param.soft_weight, kd.kd_param.hard_weight = 4.0, 0.9, 0.1
    return out


def _prepare_weighted(layer: pb.LayerParameter, variant: str) -> None:
    conv = layer.type == "Convolution"
    p = layer.convolution_param if conv else layer.inner_product_param
    if not p.HasField("weight_filler"):  # deploy nets carry none; all-zero weights would stall DNS and INQ
        p.weight_filler.type = "gaussian"
        p.weight_filler.std = 0.01
    # Nonzero biases in every variant: INQ, like the reference, cannot quantize an all-zero blob (a real INQ
    # run starts from a trained model).
    p.bias_filler.Clear()
    p.bias_filler.type = "constant"
    p.bias_filler.value = 0.1
    if variant == "dns":
        layer.type = "DNSConvolution" if conv else "DNSInnerProduct"
        d = layer.dns_convolution_param if conv else layer.dns_inner_product_param
        d.gamma, d.power, d.c_rate, d.iter_stop = 1e-5, 1.0, 1.0, 1e9
        _ones(d)
    elif variant == "inq":
        layer.type = "INQConvolution" if conv else "INQInnerProduct"
        q = layer.inq_convolution_param if conv else layer.inq_inner_product_param
        q.portion.extend([0.0, 0.3])
        q.num_quantum_values = 7
        _ones(q)


def _ones(param) -> None:
    for f in (param.weight_mask_filler, param.bias_mask_filler):
        f.type = "constant"
        f.value = 1.0


def make_solver(name: str, variant: str, batch: int, device: str):
    from netcompress.solvers import Solver

    sp = pb.SolverParameter()
    sp.net_param.CopyFrom(build_kd_net_param(name, batch) if variant == "kd" else build_net_param(name, variant, batch))
    sp.type = "SGD"
    sp.base_lr = 1e-4 if name == "alexnet" else 1e-3  # small: random data must not drive the loss to NaN
    sp.lr_policy = "fixed"
    sp.momentum = 0.9
    sp.weight_decay = 5e-4
    sp.max_iter = 10**9
    sp.random_seed = 1
    solver = Solver(sp, device=device, verbose=False)
    g = torch.Generator().manual_seed(0)
    spec = NETS[name]
    data = torch.randn(batch, *spec["shape"], generator=g)
    label = torch.randint(0, spec["classes"], (batch,), generator=g).float()
    solver.net.set_input(data=data, label=label)
    return solver


# ---------------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timer(device: str):
    """A callable timing fn() once: CUDA events on the current stream, else the host clock."""
    def once(fn) -> float:
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return once


def _summary(times: list[float]) -> dict:
    times = sorted(times)
    med = statistics.median(times)
    q1, q3 = C._quantile(times, 0.25), C._quantile(times, 0.75)
    return {"s": med, "min_s": times[0], "iqr_rel": (q3 - q1) / med, "iters": len(times)}


def _rss_mb() -> float:
    # Current resident set size (Linux /proc), in MiB.
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _fwd_bwd(net):
    def run():
        net.zero_grad(set_to_none=True)
        net.set_iteration(0)
        net.before_train_forward()
        net()
        net.before_backward()
        net.loss.backward()
    return run


def _state_mb(solver) -> float:
    net = solver.net
    b = sum(t.numel() * t.element_size() for t in list(net.parameters()) + list(net.buffers()))
    b += sum(h.numel() * h.element_size() for hs in solver.history for h in hs)
    return b / 2**20


def measure_group(job: dict) -> list[dict]:
    """Every variant of one (net, device, threads), timed in rotation: one training step of each variant in
    turn, then one forward+backward of each, repeated. A slow period of a shared machine then hits every
    variant alike, so their ratios hold even when the absolute figures move."""
    device, threads = job["device"], job["threads"]
    if device == "cpu":
        torch.set_num_threads(threads)
    name, variants = job["net"], job["variants"]
    once = _timer(device)
    solvers = {v: make_solver(name, v, job["batch"], device) for v in variants}
    fb_nets = {(v, b): (solvers[v].net if b == job["batch"] else make_solver(name, v, b, device).net)
               for v in variants for b in job["fwd_bwd_batches"]}
    for v in variants:  # from iteration 0: INQ quantizes there, DNS computes its statistics
        for _ in range(job["warmup"]):
            solvers[v].step(1)
        for b in job["fwd_bwd_batches"]:
            for _ in range(job["warmup"]):
                _fwd_bwd(fb_nets[(v, b)])()
    _sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    _sync()
    train = {v: [] for v in variants}
    fb = {(v, b): [] for v in variants for b in job["fwd_bwd_batches"]}
    spent, rounds = 0.0, 0
    while rounds < job["iters"] or (spent < job["min_time"] and rounds < 50 * job["iters"]):
        for v in variants:
            dt = once(lambda: solvers[v].step(1))
            train[v].append(dt)
            spent += dt
        for (v, b), net in fb_nets.items():
            fb[(v, b)].append(once(_fwd_bwd(net)))
        rounds += 1
    out = []
    for v in variants:
        t = _summary(train[v])
        r = {"net": name, "variant": v, "device": device, "threads": threads, "batch": job["batch"],
             "rounds": rounds, "state_mb": _state_mb(solvers[v]), "train": {**t, "it_s": 1.0 / t["s"]},
             "fwd_bwd": {}}
        for b in job["fwd_bwd_batches"]:
            t = _summary(fb[(v, b)])
            r["fwd_bwd"][str(b)] = {**t, "ms": t["s"] * 1e3}
        net = solvers[v].net
        r["loss"] = float(net.loss.detach()) if net.loss is not None else None
        out.append(r)
    return out


def measure_kd(job: dict) -> dict:
    """The plain student and the student with a teacher and the KD loss, one training step of each in turn."""
    device, threads = job["device"], job["threads"]
    if device == "cpu":
        torch.set_num_threads(threads)
    once = _timer(device)
    solvers = {v: make_solver(job["net"], v, job["batch"], device) for v in ("plain", "kd")}
    for v in solvers:
        for _ in range(job["warmup"]):
            solvers[v].step(1)
    if device == "cuda":
        torch.cuda.synchronize()
    times = {v: [] for v in solvers}
    spent, rounds = 0.0, 0
    while rounds < job["iters"] or (spent < job["min_time"] and rounds < 50 * job["iters"]):
        for v in solvers:
            dt = once(lambda: solvers[v].step(1))
            times[v].append(dt)
            spent += dt
        rounds += 1
    plain, kd = _summary(times["plain"]), _summary(times["kd"])
    teacher_frozen = all(not e.tensor.requires_grad for e in solvers["kd"].params if e.layer.startswith("t_"))
    return {"net": job["net"], "device": device, "threads": threads, "batch": job["batch"], "rounds": rounds,
            "plain": {**plain, "it_s": 1.0 / plain["s"]}, "kd": {**kd, "it_s": 1.0 / kd["s"]},
            "kd_time_vs_plain": kd["s"] / plain["s"], "teacher_frozen": teacher_frozen,
            "loss": float(solvers["kd"].net.loss.detach())}


def measure_memory(job: dict) -> dict:
    """Peak memory of one variant over a few training steps and forward+backward passes, from a fresh start:
    CUDA peak allocated above what the built solver holds; on the CPU (this process alone) peak RSS above
    the RSS after building."""
    device = job["device"]
    if device == "cpu":
        torch.set_num_threads(job["threads"])
    solver = make_solver(job["net"], job["variant"], job["batch"], device)
    out = {"net": job["net"], "variant": job["variant"], "device": device}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before = _rss_mb()
    for _ in range(3):
        solver.step(1)
    _fwd_bwd(solver.net)()
    if device == "cuda":
        torch.cuda.synchronize()
        out["peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["peak_growth_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        out["rss_before_mb"] = rss_before
        out["peak_rss_mb"] = _peak_rss_mb()
        out["peak_growth_mb"] = out["peak_rss_mb"] - rss_before
    return out


def _child(kind: str, job: dict):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps({"kind": kind, **job})]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=C.REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    devices = C.resolve_devices(args.device)
    nets = args.nets or (["lenet"] if args.quick else list(NETS))
    variants = args.variants or list(VARIANTS)
    threads = args.threads or ([1] if args.quick else sorted({1, torch.get_num_threads()}))
    isolate = args.isolate if args.isolate is not None else not args.quick
    result = {"benchmark": "bench_training", "machine": C.machine_info(devices),
              "config": {"nets": nets, "variants": variants, "devices": devices, "threads": threads,
                         "quick": args.quick, "isolated": isolate, "reference_caffe_lenet": CAFFE_LENET},
              "runs": [], "kd": []}
    for device in devices:
        for name in nets:
            spec = NETS[name]
            batch = args.batch or spec["batch"]
            fb = [batch] if args.quick else sorted({batch, *spec["fwd_bwd_batches"]})
            iters = args.iters or (3 if args.quick else (6 if name == "alexnet" else 20))
            for th in (threads if device == "cpu" else [torch.get_num_threads()]):
                job = {"net": name, "variants": variants, "device": device, "threads": th, "batch": batch,
                       "fwd_bwd_batches": fb, "warmup": 1 if args.quick else 3, "iters": iters,
                       "min_time": 0.0 if args.quick else 6.0}
                # A child per CPU thread count: torch.set_num_threads is not undone cleanly in one process.
                runs = _child("group", job) if isolate and device == "cpu" else measure_group(job)
                for r in runs:
                    mjob = {"net": name, "variant": r["variant"], "device": device, "threads": th, "batch": batch}
                    if device == "cuda":
                        r["memory"] = measure_memory(mjob)
                    elif isolate and th == threads[-1]:
                        r["memory"] = _child("memory", mjob)
                    result["runs"].append(r)
                    C.progress(args, f"[{device} x{th}] {name:12s} {r['variant']:5s} train {r['train']['it_s']:7.3g} it/s  "
                               + "  ".join(f"fwd+bwd@{b} {v['ms']:.4g} ms" for b, v in r["fwd_bwd"].items()))
                if name in KD_NETS:
                    kjob = {k: job[k] for k in ("net", "device", "threads", "batch", "warmup", "iters", "min_time")}
                    k = _child("kd", kjob) if isolate and device == "cpu" else measure_kd(kjob)
                    result["kd"].append(k)
                    C.progress(args, f"[{device} x{th}] {name:12s} kd    train {k['kd']['it_s']:7.3g} it/s  "
                               f"plain {k['plain']['it_s']:.3g} it/s  time x{k['kd_time_vs_plain']:.3f}")
    result["machine"]["load_average_end"] = C.load_average()
    result["overhead"] = overheads(result["runs"])
    result["vs_caffe"] = versus_caffe(result["runs"])
    return result


def overheads(runs: list[dict]) -> list[dict]:
    """DNS and INQ speed relative to plain, per (net, device, threads)."""
    plain = {(r["net"], r["device"], r["threads"]): r for r in runs if r["variant"] == "plain"}
    out = []
    for r in runs:
        p = plain.get((r["net"], r["device"], r["threads"]))
        if r["variant"] == "plain" or p is None:
            continue
        out.append({"net": r["net"], "variant": r["variant"], "device": r["device"], "threads": r["threads"],
                    "train_speed_vs_plain": r["train"]["it_s"] / p["train"]["it_s"],
                    "fwd_bwd_time_vs_plain": {b: r["fwd_bwd"][b]["s"] / p["fwd_bwd"][b]["s"]
                                              for b in r["fwd_bwd"] if b in p["fwd_bwd"]}})
    return out


def versus_caffe(runs: list[dict]) -> list[dict]:
    """LeNet on the CPU against the reference Caffe's figures (CPU, one BLAS thread)."""
    out = []
    for r in runs:
        if r["net"] != "lenet" or r["device"] != "cpu":
            continue
        entry = {"variant": r["variant"], "threads": r["threads"], "train_it_s": r["train"]["it_s"],
                 "train_speedup": r["train"]["it_s"] / CAFFE_LENET["train_it_s"], "fwd_bwd": {}}
        for b, v in r["fwd_bwd"].items():
            ref = CAFFE_LENET["fwd_bwd_ms"].get(int(b))
            if ref:
                entry["fwd_bwd"][b] = {"ms": v["ms"], "caffe_ms": ref, "speedup": ref / v["ms"]}
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------

def tables(result: dict) -> str:
    rows = []
    for r in result["runs"]:
        mem = f"{r['memory']['peak_growth_mb']:.0f}" if "memory" in r else "-"
        rows.append({"net": r["net"], "variant": r["variant"], "dev": r["device"], "thr": r["threads"],
                     "batch": r["batch"], "it_s": C.fmt(r["train"]["it_s"]),
                     "iter_ms": C.fmt(r["train"]["s"] * 1e3),
                     "fb": "  ".join(f"{C.fmt(v['ms'])}@{b}" for b, v in r["fwd_bwd"].items()),
                     "state": f"{r['state_mb']:.1f}", "mem": mem})
    parts = ["== training (medians; it/s of Solver.step; fwd+bwd ms at iteration 0, per batch; state: params + "
             "masks + history MiB; mem: peak above the built solver, MiB: CUDA allocated, CPU RSS of its own "
             "process)\n"
             + C.format_table(rows, [("net", "net"), ("variant", "variant"), ("dev", "device"), ("thr", "threads"),
                                     ("batch", "batch"), ("it_s", "it/s"), ("iter_ms", "ms/iter"),
                                     ("fb", "fwd+bwd ms@batch"), ("state", "state MiB"), ("mem", "mem MiB")])]
    if result["overhead"]:
        rows = [{"net": o["net"], "variant": o["variant"], "dev": o["device"], "thr": o["threads"],
                 "train": f"{o['train_speed_vs_plain']:.3f}",
                 "fb": "  ".join(f"{v:.3f}@{b}" for b, v in o["fwd_bwd_time_vs_plain"].items())}
                for o in result["overhead"]]
        parts.append("== compression overhead (train: speed / plain speed; fwd+bwd: time / plain time)\n"
                     + C.format_table(rows, [("net", "net"), ("variant", "variant"), ("dev", "device"),
                                             ("thr", "threads"), ("train", "train speed"), ("fb", "fwd+bwd time")]))
    if result.get("kd"):
        rows = [{"net": k["net"], "dev": k["device"], "thr": k["threads"], "batch": k["batch"],
                 "plain": C.fmt(k["plain"]["it_s"]), "kd": C.fmt(k["kd"]["it_s"]), "x": f"{k['kd_time_vs_plain']:.3f}"}
                for k in result["kd"]]
        parts.append("== knowledge distillation overhead (the student with a same-size frozen teacher and the KD loss, "
                     "against the student alone, timed in rotation; time: KD step time / plain step time)\n"
                     + C.format_table(rows, [("net", "net"), ("dev", "device"), ("thr", "threads"), ("batch", "batch"),
                                             ("plain", "student it/s"), ("kd", "with KD it/s"), ("x", "time")]))
    if result["vs_caffe"]:
        rows = [{"variant": v["variant"], "thr": v["threads"], "it_s": C.fmt(v["train_it_s"]),
                 "x": f"{v['train_speedup']:.2f}x",
                 "fb": "  ".join(f"{C.fmt(f['ms'])} ms@{b} ({f['speedup']:.2f}x)" for b, f in v["fwd_bwd"].items())}
                for v in result["vs_caffe"]]
        parts.append("== LeNet vs the reference Caffe (CPU, 1 BLAS thread: 20.7 ms fwd+bwd @64, 40.7 ms @128, "
                     "31 it/s training; target >= 2x)\n"
                     + C.format_table(rows, [("variant", "variant"), ("thr", "threads"), ("it_s", "train it/s"),
                                             ("x", "vs 31 it/s"), ("fb", "fwd+bwd (speed-up)")]))
    return "\n\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = C.argument_parser(__doc__, "a smoke run: LeNet, 1 thread, 3 iterations, in-process")
    p.add_argument("--nets", type=lambda s: s.split(","), help=f"comma-separated, of {','.join(NETS)}")
    p.add_argument("--variants", type=lambda s: s.split(","), help="comma-separated, of plain,dns,inq")
    p.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")],
                   help="CPU thread counts (default 1 and torch's default)")
    p.add_argument("--batch", type=int, help="training batch for every net (default: per net)")
    p.add_argument("--iters", type=int, help="timed iterations (at least; default 20, AlexNet 5, quick 3)")
    p.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                   help="one process per CPU measurement, for its peak RSS (default, except --quick)")
    p.add_argument("--no-isolate", dest="isolate", action="store_false")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for n in args.nets or []:
        if n not in NETS:
            p.error(f"--nets: unknown {n!r}; known: {', '.join(NETS)}")
    for v in args.variants or []:
        if v not in VARIANTS:
            p.error(f"--variants: unknown {v!r}; known: {', '.join(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("netcompress").setLevel(logging.WARNING)
    if args.child:
        job = json.loads(args.child)
        kind = job.pop("kind")
        fn = {"group": measure_group, "memory": measure_memory, "kd": measure_kd}[kind]
        print(json.dumps(fn(job)))
        return 0
    result = run(args)
    print(tables(result))
    if args.json:
        C.write_json(args.json, result)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
