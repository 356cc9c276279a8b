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
           surgery inside every TRAIN forward, and `caffe time` never advances the iteration); on the CPU also
           split into forward and backward, as Caffe's "Average Forward pass" / "Average Backward pass"
  train    iterations/s of Solver.step (forward, backward, SGD momentum update, DNS/INQ hooks)
  memory   peak memory of a few steps of that variant alone, above what its built solver holds: CUDA peak
           allocated (torch.cuda.max_memory_allocated); CPU, which has no allocator statistics, peak resident
           set size of its own process (--isolate); plus the bytes of parameters, masks and history.
The variants of a (net, device, threads) are timed in rotation, one step of each in turn (medians over the
rounds), so that a slow period of a shared machine affects all of them alike; each CPU thread count runs in its
own process (--isolate). A timed sample is `--block` iterations of Solver.step (default 1 on the CPU, 10 on CUDA,
where the deferred and graphed step modes read the loss once per step() call); figures are per iteration.
Step modes (netcompress.solvers.step; --step-modes): each netcompress variant runs in every mode asked for, the
default `auto` on the CPU (eager there) and `auto,deferred` on CUDA (a CUDA graph where it applies, and the same
without graphs); each row names the mode that ran.
PyTorch baseline (LeNet; --no-baseline drops it): the hand-written PyTorch LeNet of the GPU probe
(../shared/measurements/gpu-h200/probe_lenet_step.py) in the same rotation: the same layers (conv 20@5, max pool,
conv 50@5, max pool, ip 500, ReLU, ip 10, cross-entropy), torch.optim.SGD (lr 1e-3, momentum 0.9, weight decay
5e-4, PyTorch's default implementation), the same fixed batch on the device, eager; without the probe's input
scaling (x/256), which the netcompress nets here (an Input layer for data) do not have either. Ratios against it
come from the same run.
Host work per step (LeNet, batch 1, every variant and the baseline, in rotation): the ATen/netcompress op calls
per training step (a TorchDispatchMode counts them: ops launched from Python, views and metadata ops included;
a replayed CUDA graph counts as none), on CUDA the stream submissions per step from torch.profiler (kernel and
graph launches, memcpy, memset), and the wall time per step at batch 1, where the device has almost nothing to
do: the host time a step costs.
Compute bound (LeNet on the CPU, beside the Caffe comparison): the FLOP of one forward + backward of its
Convolution and InnerProduct layers (2 per multiply-accumulate; forward, weight gradient, and bottom gradient but
for conv1's, whose bottom is the data: 0.844 GFLOP at batch 64), its rate, and the rate of a 1024^3 torch.mm timed
once per round of the same rotation (the core's practical float32 peak at that thread count); their quotient bounds
the fwd+bwd time any implementation of these FLOP can reach, and Caffe's time over that bound is the largest
speed-up over Caffe that the machine allows.
Knowledge distillation (LeNet, per device and threads): the plain student alone, against the same student with a
teacher in its net (a copy of the net prefixed t_ by rename_layers, every blob lr_mult 0) and a
KnowledgeDistillationLoss (HINTON, T 4, soft 0.9, hard 0.1) in place of its SoftmaxWithLoss, timed in rotation
in one process: the ratio is the cost of the teacher's forward and the KD loss.

The figures are taken as the netcompress commands run: OpenMP workers wait passively (OMP_WAIT_POLICY=PASSIVE
unless the environment sets a policy; OMP_WAIT_POLICY=ACTIVE measures spinning workers, about 10 % faster at 2
threads on an otherwise idle machine and far slower beside another busy process) and freed CPU memory is kept for
the next iteration (--malloc system for glibc's own settings). Both are printed above the tables.

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

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netcompress.threads import prepare_environment  # noqa: E402  (imports no torch)

prepare_environment()  # the commands' OpenMP wait policy, set before torch loads OpenMP (netcompress/threads.py)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from benchmarks import _common as C  # noqa: E402
from netcompress import io as ncio  # noqa: E402
from netcompress import timing  # noqa: E402
from netcompress.memory import ENV_MALLOC, configure_memory, current_memory  # noqa: E402
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
# A variant with one of these suffixes builds its net with a CPU convolution rule off, so that its `vs plain` ratio
# in the overhead table is the rule's gain, measured in the same rotation: -nchw (plain-nchw, dns-nchw, inq-nchw)
# with NETCOMPRESS_CONV_LAYOUT=nchw, every ATen convolution in NCHW order (netcompress.layers.vision.
# cpu_channels_last); -aten with NETCOMPRESS_CONV_ALGO=aten, no convolution by NNPACK (cpu_fft_conv). Both:
# plain-aten-nchw.
NCHW_SUFFIX = "-nchw"
ATEN_SUFFIX = "-aten"
RULE_SUFFIXES = {NCHW_SUFFIX: ("NETCOMPRESS_CONV_LAYOUT", "nchw"), ATEN_SUFFIX: ("NETCOMPRESS_CONV_ALGO", "aten")}


def base_variant(variant: str) -> str:
    """The variant without its rule suffixes (plain-aten-nchw -> plain)."""
    changed = True
    while changed:
        changed = False
        for suffix in RULE_SUFFIXES:
            if variant.endswith(suffix):
                variant, changed = variant[:-len(suffix)], True
    return variant
BASELINE = "pytorch"          # the hand-written PyTorch row's variant name
BASELINE_NETS = ("lenet",)    # nets with a hand-written PyTorch baseline
STEP_MODES = ("auto", "eager", "deferred", "graph")
# CUDA runtime calls that submit work to a stream, counted per step from the profiler.
LAUNCH_EVENTS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch",
                 "cudaMemcpyAsync", "cudaMemsetAsync")
KD_NETS = ("lenet",)  # the KD row: a same-size teacher, so the ratio is about 1 + one forward / fwd+bwd
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "Input", "DummyData", "MemoryData", "WindowData"}
# The reference Caffe on this machine class (issue): CPU, one BLAS thread, LeNet.
# dns_fwd_bwd_ms: the DNS LeNet (lenet_train_test_DNS.prototxt at batch 64), issue #17's side-by-side `caffe time`.
CAFFE_LENET = {"fwd_bwd_ms": {64: 20.7, 128: 40.7}, "dns_fwd_bwd_ms": {64: 22.4}, "train_it_s": 31.0,
               "target_speedup": 2.0}


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


def make_solver(name: str, variant: str, batch: int, device: str, step_mode: str = "auto"):
    for suffix, (env, value) in RULE_SUFFIXES.items():
        if variant.endswith(suffix):
            with C.environ(env, value):  # read when the layers are built
                return make_solver(name, variant[:-len(suffix)], batch, device, step_mode)
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
    sp.display = 0
    solver = Solver(sp, device=device, verbose=False, options={"step_mode": step_mode})
    g = torch.Generator().manual_seed(0)
    spec = NETS[name]
    data = torch.randn(batch, *spec["shape"], generator=g)
    label = torch.randint(0, spec["classes"], (batch,), generator=g).float()
    solver.net.set_input(data=data, label=label)
    return solver


class TorchLeNet(nn.Module):
    """The GPU probe's hand-written LeNet (see the module docstring), without its input scaling."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        self.f1, self.f2 = nn.Linear(800, 500), nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.c1(x), 2, 2)
        x = F.max_pool2d(self.c2(x), 2, 2)
        return self.f2(F.relu(self.f1(x.flatten(1))))


class Baseline:
    """What a user would write instead of a netcompress solver: the hand-written PyTorch net, torch.optim.SGD and a
    fixed batch on the device, eager. `step(n)` trains n iterations, as Solver.step does."""

    step_mode = "eager"

    def __init__(self, name: str, batch: int, device: str):
        if name != "lenet":
            raise ValueError(f"no hand-written PyTorch baseline for {name!r} (only {', '.join(BASELINE_NETS)})")
        torch.manual_seed(1)
        self.model = TorchLeNet().to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(0)
        spec = NETS[name]
        self.x = torch.randn(batch, *spec["shape"], generator=g).to(device)
        self.y = torch.randint(0, spec["classes"], (batch,), generator=g).to(device)
        self.loss: torch.Tensor | None = None

    def step(self, iters: int = 1) -> None:
        for _ in range(iters):
            self.opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(self.x), self.y)
            loss.backward()
            self.opt.step()
        self.loss = loss.detach()

    def fwd_bwd(self) -> None:
        self.model.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()

    def state_mb(self) -> float:
        b = sum(p.numel() * p.element_size() for p in self.model.parameters())
        b += sum(t.numel() * t.element_size() for st in self.opt.state.values() for t in st.values()
                 if isinstance(t, torch.Tensor))
        return b / 2**20


class OpCounter(TorchDispatchMode):
    """Counts the ATen/netcompress op calls that reach the dispatcher from Python (a CUDA graph's replay is none)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


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


def _fwd_bwd(net, split: list | None = None):
    """One forward + backward at iteration 0, as `netcompress time` runs it (its forward_pass and backward_pass).
    With `split` (CPU only: the host clock is the device's there), each call appends its (forward s, backward s),
    Caffe's "Average Forward/Backward pass"."""
    def run():
        t0 = time.perf_counter()
        net.set_iteration(0)
        timing.forward_pass(net, train=True)
        t1 = time.perf_counter()
        timing.backward_pass(net, train=True)
        if split is not None:
            split.append((t1 - t0, time.perf_counter() - t1))
    return run


def fwd_bwd_flop(net) -> float:
    """Floating-point operations (2 per multiply-accumulate) of one forward + backward of the net's Convolution and
    InnerProduct layers (any variant) at its batch: the forward, the weight gradient, and the bottom gradient where
    the bottom comes from a layer that backpropagates (not from the data). What a compute bound is made of: the
    other layers are memory-bound and small beside these."""
    from netcompress.tools.sdn import layer_macs

    grad_blobs: set[str] = set()
    total = 0.0
    for li, name in enumerate(net.layer_names):
        bottoms, tops = net._bottoms[li], net._tops[li]
        bshapes = [net.blob_shapes[b] for b in bottoms]
        macs = layer_macs(net.layer(name), bshapes, [net.blob_shapes[t] for t in tops])
        if macs:
            macs *= bshapes[0][0]  # layer_macs counts per sample
            total += 2.0 * macs * (2 + any(b in grad_blobs for b in bottoms))
        if net.layer_need_backward.get(name):
            grad_blobs.update(tops)
    return total


class Sgemm:
    """The CPU's float32 matrix-multiply rate at the current thread count (torch.mm of two n x n matrices), the
    practical peak against which a net's FLOP rate is read. `sample()` times one product: called once per round of
    the rotation, so that a busy period of a shared machine slows it as it slows the nets."""

    def __init__(self, n: int = 1024):
        self.a, self.b, self.times = torch.randn(n, n), torch.randn(n, n), []
        for _ in range(2):
            torch.mm(self.a, self.b)

    def sample(self) -> None:
        t0 = time.perf_counter()
        torch.mm(self.a, self.b)
        self.times.append(time.perf_counter() - t0)

    def gflops(self) -> float:
        return 2.0 * self.a.shape[0] ** 3 / statistics.median(self.times) / 1e9


def _state_mb(solver) -> float:
    net = solver.net
    b = sum(t.numel() * t.element_size() for t in list(net.parameters()) + list(net.buffers()))
    b += sum(h.numel() * h.element_size() for hs in solver.history for h in hs)
    return b / 2**20


def _warmup_steps(job: dict) -> int:
    """Warm-up iterations: at least enough for a CUDA graph to be captured before anything is timed."""
    from netcompress.solvers.step import GRAPH_WARMUP

    return max(job["warmup"], GRAPH_WARMUP + 2) if job["device"] == "cuda" else job["warmup"]


def measure_group(job: dict) -> list[dict]:
    """Every variant (in every step mode) of one (net, device, threads), and the PyTorch baseline, timed in
    rotation: one sample (`block` training iterations) of each in turn, then one forward+backward of each, repeated.
    A slow period of a shared machine then hits every variant alike, so their ratios hold even when the absolute
    figures move."""
    device, threads = job["device"], job["threads"]
    if device == "cpu":
        torch.set_num_threads(threads)
    name, variants, block = job["net"], job["variants"], job.get("block", 1)
    modes = job.get("modes", ["auto"])
    once = _timer(device)
    keys = [(v, m) for v in variants for m in modes]
    subjects = {k: make_solver(name, k[0], job["batch"], device, k[1]) for k in keys}
    if job.get("baseline"):
        subjects[(BASELINE, "eager")] = Baseline(name, job["batch"], device)
    first = {v: subjects[(v, modes[0])] for v in variants}
    # fwd+bwd on the trained net itself where its step is eager (the CPU); a net of its own where a step mode may
    # hold a CUDA graph (an eager pass there would replace the graph's gradients and blobs between replays).
    fb_subjects = {(v, b): (first[v].net if b == job["batch"] and device == "cpu" else make_solver(name, v, b, device).net)
                   for v in variants for b in job["fwd_bwd_batches"]}
    if job.get("baseline"):
        fb_subjects.update({(BASELINE, b): (subjects[(BASELINE, "eager")] if b == job["batch"]
                                            else Baseline(name, b, device)) for b in job["fwd_bwd_batches"]})

    splits = {k: [] for k in fb_subjects}  # netcompress rows on the CPU: (forward, backward) of each timed pass

    def fwd_bwd(x, split=None):
        return x.fwd_bwd if isinstance(x, Baseline) else _fwd_bwd(x, split)

    for k, x in subjects.items():  # from iteration 0: INQ quantizes there, DNS computes its statistics
        x.step(_warmup_steps(job))
    for x in fb_subjects.values():
        for _ in range(job["warmup"]):
            fwd_bwd(x)()
    _sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    _sync()
    train = {k: [] for k in subjects}
    fb = {k: [] for k in fb_subjects}
    sgemm = Sgemm() if device == "cpu" and name == "lenet" else None
    spent, rounds = 0.0, 0
    while rounds < job["iters"] or (spent < job["min_time"] and rounds < 50 * job["iters"]):
        if sgemm is not None:
            sgemm.sample()
        for k, x in subjects.items():
            dt = once(lambda: x.step(block))
            train[k].append(dt / block)
            spent += dt
        for k, x in fb_subjects.items():
            fb[k].append(once(fwd_bwd(x, splits[k] if device == "cpu" else None)))
        rounds += 1
    # The compute bound of the Caffe comparison (LeNet on the CPU): this thread count's sgemm rate, timed in the
    # rotation, and each batch's FLOP.
    sgemm_rate = sgemm.gflops() if sgemm is not None else None
    out = []
    for (v, m), x in subjects.items():
        t = _summary(train[(v, m)])
        baseline = isinstance(x, Baseline)
        r = {"net": name, "variant": v, "step_mode": x.step_mode, "device": device, "threads": threads,
             "batch": job["batch"], "rounds": rounds, "block": block,
             "state_mb": x.state_mb() if baseline else _state_mb(x), "train": {**t, "it_s": 1.0 / t["s"]},
             "fwd_bwd": {}}
        if not baseline:
            r["step_mode_asked"] = m
        for b in job["fwd_bwd_batches"]:
            t = _summary(fb[(v, b)])
            r["fwd_bwd"][str(b)] = {**t, "ms": t["s"] * 1e3}
            if splits[(v, b)]:  # medians of the parts (they need not add up to the median of the sums)
                r["fwd_bwd"][str(b)]["forward_ms"] = statistics.median(f for f, _ in splits[(v, b)]) * 1e3
                r["fwd_bwd"][str(b)]["backward_ms"] = statistics.median(g for _, g in splits[(v, b)]) * 1e3
            if sgemm_rate is not None and not baseline:
                r["fwd_bwd"][str(b)]["gflop"] = fwd_bwd_flop(fb_subjects[(v, b)]) / 1e9
        if sgemm_rate is not None and not baseline:
            r["sgemm_gflops"] = sgemm_rate
        loss = x.loss if baseline else x.net.loss
        r["loss"] = float(loss.detach()) if loss is not None else None
        out.append(r)
    return out


def measure_host(job: dict) -> list[dict]:
    """Host work per training step at batch 1 (LeNet): op calls per step (OpCounter), on CUDA stream submissions per
    step (torch.profiler), and wall time per step, for every variant (in every step mode) and the PyTorch baseline,
    timed in rotation (`block` iterations a sample)."""
    device = job["device"]
    if device == "cpu":
        torch.set_num_threads(job["threads"])
    name, modes, block, n = job["net"], job.get("modes", ["auto"]), job["block"], job["count_steps"]
    subjects = {(v, m): make_solver(name, v, 1, device, m) for v in job["variants"] for m in modes}
    if job.get("baseline"):
        subjects[(BASELINE, "eager")] = Baseline(name, 1, device)
    for x in subjects.values():
        x.step(_warmup_steps(job))
    rows = {}
    for k, x in subjects.items():
        with OpCounter() as c:
            x.step(n)
        launches = None
        if device == "cuda":
            from torch.profiler import ProfilerActivity, profile

            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                x.step(n)
                torch.cuda.synchronize()
            launches = sum(1 for e in prof.events() if e.name in LAUNCH_EVENTS) / n
        rows[k] = {"net": name, "variant": k[0], "step_mode": x.step_mode, "device": device,
                   "threads": job["threads"], "batch": 1, "dispatches_per_step": c.count / n,
                   "launches_per_step": launches, "times": []}
    spent, rounds = 0.0, 0
    while rounds < job["iters"] or (spent < job["min_time"] and rounds < 50 * job["iters"]):
        for k, x in subjects.items():
            t0 = time.perf_counter()
            x.step(block)
            if device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            rows[k]["times"].append(dt / block)
            spent += dt
        rounds += 1
    out = []
    for r in rows.values():
        t = _summary(r.pop("times"))
        r["host"] = {**t, "ms": t["s"] * 1e3}
        r["block"], r["rounds"] = block, rounds
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
    solver = make_solver(job["net"], job["variant"], job["batch"], device, job.get("step_mode", "auto"))
    out = {"net": job["net"], "variant": job["variant"], "device": device}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before = _rss_mb()
    solver.step(_warmup_steps({"device": device, "warmup": 3}))
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


def _modes(args: argparse.Namespace, device: str) -> list[str]:
    return args.step_modes or (["auto"] if device == "cpu" else ["auto", "deferred"])


def run(args: argparse.Namespace) -> dict:
    devices = C.resolve_devices(args.device)
    nets = args.nets or (["lenet"] if args.quick else list(NETS))
    variants = args.variants or list(VARIANTS)
    threads = args.threads or ([1] if args.quick else sorted({1, torch.get_num_threads()}))
    isolate = args.isolate if args.isolate is not None else not args.quick
    result = {"benchmark": "bench_training", "machine": {**C.machine_info(devices), "malloc": current_memory().describe(),
                                                         "omp_wait_policy": _wait_policy()},
              "config": {"nets": nets, "variants": variants, "devices": devices, "threads": threads,
                         "quick": args.quick, "isolated": isolate, "reference_caffe_lenet": CAFFE_LENET,
                         "baseline": args.baseline,
                         "step_modes": {d: _modes(args, d) for d in devices}},
              "runs": [], "kd": [], "host": []}
    for device in devices:
        modes = _modes(args, device)
        block = args.block or (1 if device == "cpu" else 10)
        for name in nets:
            spec = NETS[name]
            batch = args.batch or spec["batch"]
            fb = [batch] if args.quick else sorted({batch, *spec["fwd_bwd_batches"]})
            iters = args.iters or (3 if args.quick else (6 if name == "alexnet" else 20))
            baseline = args.baseline and name in BASELINE_NETS
            for th in (threads if device == "cpu" else [torch.get_num_threads()]):
                job = {"net": name, "variants": variants, "device": device, "threads": th, "batch": batch,
                       "fwd_bwd_batches": fb, "warmup": 1 if args.quick else 3, "iters": iters,
                       "min_time": 0.0 if args.quick else 6.0, "modes": modes, "block": block, "baseline": baseline}
                # A child per CPU thread count: torch.set_num_threads is not undone cleanly in one process.
                runs = _child("group", job) if isolate and device == "cpu" else measure_group(job)
                for r in runs:
                    if r["variant"] != BASELINE:
                        mjob = {"net": name, "variant": r["variant"], "device": device, "threads": th, "batch": batch,
                                "step_mode": r["step_mode_asked"]}
                        if device == "cuda":
                            r["memory"] = measure_memory(mjob)
                        elif isolate and th == threads[-1]:
                            r["memory"] = _child("memory", mjob)
                    result["runs"].append(r)
                    C.progress(args, f"[{device} x{th}] {name:12s} {r['variant']:7s} {r['step_mode']:8s} train "
                               f"{r['train']['it_s']:7.3g} it/s  "
                               + "  ".join(f"fwd+bwd@{b} {v['ms']:.4g} ms" for b, v in r["fwd_bwd"].items()))
                if name in KD_NETS:
                    kjob = {k: job[k] for k in ("net", "device", "threads", "batch", "warmup", "iters", "min_time")}
                    k = _child("kd", kjob) if isolate and device == "cpu" else measure_kd(kjob)
                    result["kd"].append(k)
                    C.progress(args, f"[{device} x{th}] {name:12s} kd    train {k['kd']['it_s']:7.3g} it/s  "
                               f"plain {k['plain']['it_s']:.3g} it/s  time x{k['kd_time_vs_plain']:.3f}")
        if "lenet" in nets and args.host:
            hjob = {"net": "lenet", "variants": variants, "device": device, "threads": 1, "modes": modes,
                    "baseline": args.baseline, "warmup": 1 if args.quick else 3, "count_steps": 2 if args.quick else 5,
                    "block": 2 if args.quick else (10 if device == "cpu" else 50), "iters": 3 if args.quick else 20,
                    "min_time": 0.0 if args.quick else 4.0}
            rows = _child("host", hjob) if isolate and device == "cpu" else measure_host(hjob)
            for r in rows:
                result["host"].append(r)
                C.progress(args, f"[{device} x1] lenet@1      {r['variant']:7s} {r['step_mode']:8s} "
                           f"{r['dispatches_per_step']:.0f} ops/step  host {r['host']['ms']:.4g} ms/step")
    result["machine"]["load_average_end"] = C.load_average()
    result["overhead"] = overheads(result["runs"])
    result["vs_caffe"] = versus_caffe(result["runs"])
    result["vs_pytorch"] = versus_pytorch(result["runs"])
    return result


def _wait_policy() -> str:
    """The OpenMP wait policy the figures were taken with, and who chose it."""
    from netcompress.threads import choose_threads

    c = choose_threads(default=1)
    return f"{c.wait_policy or '?'} ({c.wait_note})"


def overheads(runs: list[dict]) -> list[dict]:
    """DNS and INQ speed relative to plain, per (net, device, threads, step mode)."""
    plain = {(r["net"], r["device"], r["threads"], r["step_mode"]): r for r in runs if r["variant"] == "plain"}
    out = []
    for r in runs:
        p = plain.get((r["net"], r["device"], r["threads"], r["step_mode"]))
        if r["variant"] in ("plain", BASELINE) or p is None:
            continue
        out.append({"net": r["net"], "variant": r["variant"], "step_mode": r["step_mode"], "device": r["device"],
                    "threads": r["threads"],
                    "train_speed_vs_plain": r["train"]["it_s"] / p["train"]["it_s"],
                    "fwd_bwd_time_vs_plain": {b: r["fwd_bwd"][b]["s"] / p["fwd_bwd"][b]["s"]
                                              for b in r["fwd_bwd"] if b in p["fwd_bwd"]}})
    return out


def versus_pytorch(runs: list[dict]) -> list[dict]:
    """Each netcompress row's training speed over the hand-written PyTorch baseline's, from the same rotation."""
    base = {(r["net"], r["device"], r["threads"]): r for r in runs if r["variant"] == BASELINE}
    out = []
    for r in runs:
        b = base.get((r["net"], r["device"], r["threads"]))
        if r["variant"] == BASELINE or b is None:
            continue
        out.append({"net": r["net"], "variant": r["variant"], "step_mode": r["step_mode"], "device": r["device"],
                    "threads": r["threads"], "it_s": r["train"]["it_s"], "pytorch_it_s": b["train"]["it_s"],
                    "speed_vs_pytorch": r["train"]["it_s"] / b["train"]["it_s"]})
    return out


def versus_caffe(runs: list[dict]) -> list[dict]:
    """LeNet on the CPU against the reference Caffe's figures (CPU, one BLAS thread)."""
    out = []
    for r in runs:
        if r["net"] != "lenet" or r["device"] != "cpu" or r["variant"] == BASELINE:
            continue
        entry = {"variant": r["variant"], "threads": r["threads"], "train_it_s": r["train"]["it_s"],
                 "train_speedup": r["train"]["it_s"] / CAFFE_LENET["train_it_s"], "fwd_bwd": {}}
        dns = base_variant(r["variant"]) == "dns"
        for b, v in r["fwd_bwd"].items():
            ref = CAFFE_LENET["dns_fwd_bwd_ms" if dns else "fwd_bwd_ms"].get(int(b))
            if ref:
                entry["fwd_bwd"][b] = {"ms": v["ms"], "caffe_ms": ref, "speedup": ref / v["ms"],
                                       **{k: v[k] for k in ("forward_ms", "backward_ms") if k in v}}
                if "gflop" in v and r.get("sgemm_gflops"):
                    bound_ms = v["gflop"] / r["sgemm_gflops"] * 1e3
                    entry["fwd_bwd"][b].update({
                        "gflop": v["gflop"], "gflops": v["gflop"] / v["ms"] * 1e3, "sgemm_gflops": r["sgemm_gflops"],
                        "bound_ms": bound_ms, "max_speedup": ref / bound_ms})
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------

def tables(result: dict) -> str:
    rows = []
    for r in result["runs"]:
        mem = f"{r['memory']['peak_growth_mb']:.0f}" if "memory" in r else "-"
        rows.append({"net": r["net"], "variant": r["variant"], "mode": r["step_mode"], "dev": r["device"],
                     "thr": r["threads"], "batch": r["batch"], "it_s": C.fmt(r["train"]["it_s"]),
                     "iter_ms": C.fmt(r["train"]["s"] * 1e3),
                     "fb": "  ".join(f"{C.fmt(v['ms'])}@{b}" for b, v in r["fwd_bwd"].items()),
                     "state": f"{r['state_mb']:.1f}", "mem": mem})
    m = result["machine"]
    parts = [f"{m.get('malloc', '')}\nOpenMP wait policy: {m.get('omp_wait_policy', '?')}\n\n== training (medians; it/s of Solver.step; fwd+bwd ms at iteration 0, per batch; state: params + "
             "masks + history MiB; mem: peak above the built solver, MiB: CUDA allocated, CPU RSS of its own "
             "process)\n"
             + C.format_table(rows, [("net", "net"), ("variant", "variant"), ("mode", "step mode"), ("dev", "device"),
                                     ("thr", "threads"), ("batch", "batch"), ("it_s", "it/s"), ("iter_ms", "ms/iter"),
                                     ("fb", "fwd+bwd ms@batch"), ("state", "state MiB"), ("mem", "mem MiB")])]
    if result["overhead"]:
        rows = [{"net": o["net"], "variant": o["variant"], "mode": o["step_mode"], "dev": o["device"],
                 "thr": o["threads"], "train": f"{o['train_speed_vs_plain']:.3f}",
                 "fb": "  ".join(f"{v:.3f}@{b}" for b, v in o["fwd_bwd_time_vs_plain"].items())}
                for o in result["overhead"]]
        parts.append("== compression overhead (train: speed / plain speed; fwd+bwd: time / plain time)\n"
                     + C.format_table(rows, [("net", "net"), ("variant", "variant"), ("mode", "step mode"),
                                             ("dev", "device"), ("thr", "threads"), ("train", "train speed"),
                                             ("fb", "fwd+bwd time")]))
    if result.get("vs_pytorch"):
        rows = [{"net": o["net"], "variant": o["variant"], "mode": o["step_mode"], "dev": o["device"], "thr": o["threads"],
                 "it_s": C.fmt(o["it_s"]), "pt": C.fmt(o["pytorch_it_s"]), "x": f"{o['speed_vs_pytorch']:.3f}"}
                for o in result["vs_pytorch"]]
        parts.append("== against hand-written PyTorch (the probe's LeNet, torch.optim.SGD, eager; same rotation; "
                     "speed: netcompress it/s / PyTorch it/s; targets on CUDA: plain >= 1 without graphs, >= 3 with)\n"
                     + C.format_table(rows, [("net", "net"), ("variant", "variant"), ("mode", "step mode"),
                                             ("dev", "device"), ("thr", "threads"), ("it_s", "it/s"),
                                             ("pt", "PyTorch it/s"), ("x", "speed")]))
    if result.get("host"):
        base = {r["device"]: r for r in result["host"] if r["variant"] == BASELINE}
        rows = []
        for r in result["host"]:
            b = base.get(r["device"])
            launches = "-" if r["launches_per_step"] is None else f"{r['launches_per_step']:.0f}"
            rows.append({"variant": r["variant"], "mode": r["step_mode"], "dev": r["device"],
                         "ops": f"{r['dispatches_per_step']:.0f}", "launch": launches,
                         "host": C.fmt(r["host"]["ms"]),
                         "xops": f"{r['dispatches_per_step'] / b['dispatches_per_step']:.2f}" if b else "-",
                         "xhost": f"{r['host']['s'] / b['host']['s']:.2f}" if b else "-"})
        parts.append("== host work per training step (LeNet, batch 1; ops: ATen/netcompress op calls from Python per "
                     "step, a replayed CUDA graph counting none; launches: CUDA stream submissions per step from the "
                     "profiler; host: wall ms per step at batch 1; x: over the PyTorch baseline)\n"
                     + C.format_table(rows, [("variant", "variant"), ("mode", "step mode"), ("dev", "device"),
                                             ("ops", "ops/step"), ("launch", "launches/step"), ("host", "host ms/step"),
                                             ("xops", "ops x"), ("xhost", "host x")]))
    if result.get("kd"):
        rows = [{"net": k["net"], "dev": k["device"], "thr": k["threads"], "batch": k["batch"],
                 "plain": C.fmt(k["plain"]["it_s"]), "kd": C.fmt(k["kd"]["it_s"]), "x": f"{k['kd_time_vs_plain']:.3f}"}
                for k in result["kd"]]
        parts.append("== knowledge distillation overhead (the student with a same-size frozen teacher and the KD loss, "
                     "against the student alone, timed in rotation; time: KD step time / plain step time)\n"
                     + C.format_table(rows, [("net", "net"), ("dev", "device"), ("thr", "threads"), ("batch", "batch"),
                                             ("plain", "student it/s"), ("kd", "with KD it/s"), ("x", "time")]))
    if result["vs_caffe"]:
        def split(f):
            return f"{C.fmt(f['forward_ms'])} + {C.fmt(f['backward_ms'])}" if "forward_ms" in f else "-"

        rows = [{"variant": v["variant"], "thr": v["threads"], "it_s": C.fmt(v["train_it_s"]),
                 "x": f"{v['train_speedup']:.2f}x",
                 "fb": "  ".join(f"{C.fmt(f['ms'])} ms@{b} ({f['speedup']:.2f}x)" for b, f in v["fwd_bwd"].items()),
                 "split": "  ".join(f"{split(f)}@{b}" for b, f in v["fwd_bwd"].items())}
                for v in result["vs_caffe"]]
        parts.append("== LeNet vs the reference Caffe (CPU, 1 BLAS thread: 20.7 ms fwd+bwd @64, 40.7 ms @128, "
                     "31 it/s training; the DNS rows against Caffe's DNS LeNet, 22.4 ms @64; target >= 2x; "
                     "forward + backward: medians of each pass's parts, Caffe's \"Average Forward pass\" and "
                     "\"Average Backward pass\")\n"
                     + C.format_table(rows, [("variant", "variant"), ("thr", "threads"), ("it_s", "train it/s"),
                                             ("x", "vs 31 it/s"), ("fb", "fwd+bwd (speed-up)"),
                                             ("split", "forward + backward ms")]))
        rows = [{"variant": v["variant"], "thr": v["threads"], "batch": b, "gflop": f"{f['gflop']:.3f}",
                 "rate": f"{f['gflops']:.1f}", "peak": f"{f['sgemm_gflops']:.1f}",
                 "eff": f"{f['gflops'] / f['sgemm_gflops']:.0%}", "bound": f"{C.fmt(f['bound_ms'])} ms",
                 "max": f"{f['max_speedup']:.2f}x"}
                for v in result["vs_caffe"] for b, f in v["fwd_bwd"].items() if "gflop" in f]
        if rows:
            parts.append("== LeNet's compute bound (GFLOP: forward + backward of the Convolution and InnerProduct "
                         "layers; rate: GFLOP / fwd+bwd time; sgemm: torch.mm 1024^3 in the same process and threads; "
                         "bound: GFLOP at the sgemm rate, the fwd+bwd time if every FLOP ran as fast as a large "
                         "matrix product and nothing else took time; max: Caffe's time / bound, the most any "
                         "implementation of these FLOP could reach at this thread count)\n"
                         + C.format_table(rows, [("variant", "variant"), ("thr", "threads"), ("batch", "batch"),
                                                 ("gflop", "GFLOP"), ("rate", "GFLOP/s"), ("peak", "sgemm GFLOP/s"),
                                                 ("eff", "of sgemm"), ("bound", "bound"), ("max", "max vs Caffe")]))
    return "\n\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = C.argument_parser(__doc__, "a smoke run: LeNet, 1 thread, 3 iterations, in-process")
    p.add_argument("--nets", type=lambda s: s.split(","), help=f"comma-separated, of {','.join(NETS)}")
    p.add_argument("--variants", type=lambda s: s.split(","),
                   help=f"comma-separated, of plain,dns,inq, each also with {NCHW_SUFFIX} (NCHW CPU convolutions) "
                        f"and/or {ATEN_SUFFIX} (no NNPACK convolutions)")
    p.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")],
                   help="CPU thread counts (default 1 and torch's default)")
    p.add_argument("--batch", type=int, help="training batch for every net (default: per net)")
    p.add_argument("--iters", type=int, help="timed iterations (at least; default 20, AlexNet 5, quick 3)")
    p.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                   help="one process per CPU measurement, for its peak RSS (default, except --quick)")
    p.add_argument("--no-isolate", dest="isolate", action="store_false")
    p.add_argument("--step-modes", type=lambda s: s.split(","),
                   help=f"comma-separated step modes of the netcompress rows, of {','.join(STEP_MODES)} (default: auto "
                        "on the CPU, auto,deferred on CUDA)")
    p.add_argument("--block", type=int, help="training iterations per timed sample (default 1 on the CPU, 10 on CUDA)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="leave out the hand-written PyTorch LeNet")
    p.add_argument("--no-host", dest="host", action="store_false",
                   help="leave out the host-work table (op calls, launches and host time per step at batch 1)")
    p.add_argument("--malloc", choices=("keep", "system"),
                   help="CPU memory: keep freed blocks for the next iteration as the netcompress commands do "
                        "(default), or glibc's own settings (netcompress/memory.py)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for n in args.nets or []:
        if n not in NETS:
            p.error(f"--nets: unknown {n!r}; known: {', '.join(NETS)}")
    for v in args.variants or []:
        if base_variant(v) not in VARIANTS:
            p.error(f"--variants: unknown {v!r}; known: {', '.join(VARIANTS)}, each also with {NCHW_SUFFIX} "
                    f"(NCHW convolutions on the CPU) and/or {ATEN_SUFFIX} (no NNPACK convolutions)")
    for m in args.step_modes or []:
        if m not in STEP_MODES:
            p.error(f"--step-modes: unknown {m!r}; known: {', '.join(STEP_MODES)}")
    if args.block is not None and args.block < 1:
        p.error(f"--block must be at least 1, got {args.block}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("netcompress").setLevel(logging.WARNING)
    if args.malloc:
        os.environ[ENV_MALLOC] = args.malloc  # the children inherit it
    configure_memory()  # as the netcompress commands do
    if args.child:
        job = json.loads(args.child)
        kind = job.pop("kind")
        fn = {"group": measure_group, "memory": measure_memory, "kd": measure_kd, "host": measure_host}[kind]
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
