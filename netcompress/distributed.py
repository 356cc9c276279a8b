"""Data-parallel training on torch.distributed: `netcompress train --gpu all`, `--gpu 0,1`,
`--cpu-procs N`, or one process per rank under torchrun / SLURM's srun.

Caffe's `-gpu=all` semantics: every process runs the solver on its own `batch_size` records (rank r
reads records r, r + W, ... of the source), gradients are averaged over the W processes before
the update, and only rank 0 logs, tests and writes snapshots. The effective batch is W x batch_size.

Data parallelism is one training callback (`DataParallel`, solvers/callbacks.py). How gradients are
synchronized, and why not DistributedDataParallel: its `before_update` runs `GradientAllReduce`
once per iteration, after the last backward and before the update. It sums
the gradients of the learnable parameters in flat buckets (~25 MiB, one dtype each, launched
asynchronously, then awaited) and divides by W. DDP would overlap that communication with the
backward pass, but it reduces inside every backward, while Caffe's loop (reference-semantics 2.4,
4.3) needs the local accumulation of `iter_size` backwards with the layers' per-call gradient rules
first, and clipping, LARS ratios and update masks on the averaged gradient afterwards; DDP would
also broadcast the masks from rank 0 at every forward, hiding a divergence instead of preventing
it. One all-reduce after the backward gives exactly Caffe's update, on every rank alike.

Consistency (what the reference got wrong, section 4.7): every rank starts from rank 0's blobs
and solver history (broadcast), the layers' `rank0_state` (data seeds) and the nets' named
generators (e.g. a masked layer's random gate); layer state computed from those identical weights
(mask statistics, partitions) and draws from those identical generators are then identical, so all
ranks update their masks identically. At every snapshot all ranks compare checksums of the layers'
`replicated_state()` (masks, their statistics) and of the weights, and the run fails loudly, naming
the layers and ranks, if replicated state differs. Stop/snapshot requests (signals)
and non-finite losses are agreed collectively, so all ranks stop or snapshot at the same
iteration. Control messages travel on a gloo group (CPU), gradients on the main backend (NCCL
for CUDA, gloo for CPU).
"""
from __future__ import annotations

import dataclasses
import errno
import datetime
import hashlib
import inspect
import json
import math
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from .errors import NetcompressError
from .log import LogReaderGone, get_logger, setup_logging
from .memory import configure_memory
from .options import options_from_args
from .proto import caffe_pb2 as pb
from .threads import threads_per_process, usable_cpus
from .solvers.callbacks import TrainingCallback

log = get_logger("distributed")

__all__ = ["train_distributed", "launch", "run_in_process_group", "data_parallel_solver",
           "DataParallel", "GradientAllReduce", "ProcessInfo", "LaunchEnv", "launcher_env",
           "first_host", "WorkerError", "InconsistentMasksError"]

DEFAULT_TIMEOUT_S = 1800.0
BUCKET_BYTES = 25 << 20
_REQUESTS = {None: 0, "snapshot": 1, "stop": 2}
_REQUEST_NAMES = {v: k for k, v in _REQUESTS.items()}


class WorkerError(NetcompressError):
    """A training process failed; `exit_code` is what the command returns, `rank` which failed."""

    def __init__(self, message: str, exit_code: int = 1, rank: int | None = None):
        super().__init__(message)
        self.exit_code, self.rank = exit_code, rank


class InconsistentMasksError(NetcompressError):
    """The layers' replicated state (masks, statistics) differs between the processes of a run."""


# ----------------------------------------------------------------------------------------------
# Where this process stands: launchers' environment variables
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class LaunchEnv:
    """Rank and rendezvous of a process started by torchrun or srun (or by `launch`)."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun", "slurm" or "spawn"


@dataclasses.dataclass
class ProcessInfo:
    """What a worker function receives: its rank, the world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def _int_env(env, name: str, source: str) -> int:
    value = env.get(name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise NetcompressError(f"{source} launch: the environment variable {name} must be an integer, "
                               f"got {value!r}") from None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist: 'gpu[03-05,9],cpu1' -> 'gpu03', 'r[1-2]-n[07-08]' -> 'r1-n07'."""
    depth, first = 0, []
    for ch in nodelist.strip():
        if ch == "," and depth == 0:
            break
        depth += ch == "["
        depth -= ch == "]"
        first.append(ch)
    host = re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], "".join(first))
    if not host or "[" in host or "]" in host:
        raise NetcompressError(f"cannot read the first host of the SLURM node list {nodelist!r}; "
                               "set MASTER_ADDR to the host name of the task with SLURM_PROCID 0")
    return host


def launcher_env(environ=None) -> LaunchEnv | None:
    """The rank and rendezvous set by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT) or by an srun job step with more than one task (SLURM_PROCID,
    SLURM_STEP_NUM_TASKS, SLURM_LOCALID; MASTER_ADDR defaults to the step's first node and
    MASTER_PORT to 12000 + SLURM_JOB_ID mod 20000), or None for a single process.

    A batch script outside srun has SLURM_NTASKS and SLURM_PROCID too, but no SLURM_STEP_NUM_TASKS,
    so it is not mistaken for one rank of a distributed step.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env and _int_env(env, "WORLD_SIZE", "torchrun") > 1:
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(v)]
        if missing:
            raise NetcompressError(f"WORLD_SIZE={env['WORLD_SIZE']} asks for a distributed run, but "
                                   f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set "
                                   "(launch with torchrun, or set RANK, LOCAL_RANK, MASTER_ADDR and "
                                   "MASTER_PORT for every process)")
        rank = _int_env(env, "RANK", "torchrun")
        local = _int_env(env, "LOCAL_RANK", "torchrun") if env.get("LOCAL_RANK") else rank
        return LaunchEnv(rank, _int_env(env, "WORLD_SIZE", "torchrun"), local, env["MASTER_ADDR"],
                         _int_env(env, "MASTER_PORT", "torchrun"), "torchrun")
    if env.get("SLURM_STEP_NUM_TASKS") and _int_env(env, "SLURM_STEP_NUM_TASKS", "SLURM") > 1 \
            and env.get("SLURM_PROCID") is not None:
        world = _int_env(env, "SLURM_STEP_NUM_TASKS", "SLURM")
        rank = _int_env(env, "SLURM_PROCID", "SLURM")
        local = _int_env(env, "SLURM_LOCALID", "SLURM") if env.get("SLURM_LOCALID") else 0
        addr = env.get("MASTER_ADDR")
        if not addr:
            nodes = (env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
                     or env.get("SLURM_NODELIST"))
            if not nodes:
                raise NetcompressError("SLURM launch: MASTER_ADDR is not set and no SLURM_STEP_NODELIST/"
                                       "SLURM_JOB_NODELIST tells where rank 0 runs; export MASTER_ADDR")
            addr = first_host(nodes)
        if env.get("MASTER_PORT"):
            port = _int_env(env, "MASTER_PORT", "SLURM")
        elif env.get("SLURM_JOB_ID"):
            port = 12000 + _int_env(env, "SLURM_JOB_ID", "SLURM") % 20000
        else:
            raise NetcompressError("SLURM launch: MASTER_PORT is not set and there is no SLURM_JOB_ID "
                                   "to derive it from; export MASTER_PORT")
        return LaunchEnv(rank, world, local, addr, port, "slurm")
    return None


# ----------------------------------------------------------------------------------------------
# Gradient all-reduce and the solver's collective hooks
# ----------------------------------------------------------------------------------------------

class GradientAllReduce:
    """The solver's `grad_sync`: average the learnable parameters' gradients over all processes.

    Gradients are packed into flat buckets of one dtype and device (up to `bucket_bytes` each),
    all-reduced (sum) asynchronously, then divided by the world size and copied back.
    """

    def __init__(self, world_size: int, group=None, bucket_bytes: int = BUCKET_BYTES):
        self.world_size, self.group, self.bucket_bytes = int(world_size), group, int(bucket_bytes)

    def buckets(self, grads: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        open_: dict[tuple, list[torch.Tensor]] = {}
        sizes: dict[tuple, int] = {}
        out: list[list[torch.Tensor]] = []
        for g in grads:
            key = (g.device, g.dtype)
            nbytes = g.numel() * g.element_size()
            if key in open_ and sizes[key] + nbytes > self.bucket_bytes:
                out.append(open_.pop(key))
            if key not in open_:
                open_[key], sizes[key] = [], 0
            open_[key].append(g)
            sizes[key] += nbytes
        out.extend(open_.values())
        return out

    def __call__(self, params) -> None:
        grads = []
        for e in params:
            t = e.tensor
            if not e.learnable or not t.requires_grad:
                continue  # masks, BatchNorm statistics, lr_mult 0: no gradient on any rank
            if t.grad is None:  # (every rank alike) a parameter the loss does not reach
                t.grad = torch.zeros_like(t)
            grads.append(t.grad)
        pending = []
        for bucket in self.buckets(grads):
            single = len(bucket) == 1 and bucket[0].is_contiguous()
            flat = bucket[0] if single else _flatten_dense_tensors(bucket)
            work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
            pending.append((work, flat, bucket, single))
        with torch.no_grad():
            for work, flat, bucket, single in pending:
                work.wait()
                flat.div_(self.world_size)
                if not single:
                    for g, v in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                        g.copy_(v)


def _digest(t: torch.Tensor | None) -> int:
    """A 63-bit hash of a tensor's bytes (-1 for None): equal bytes, equal hash."""
    if t is None:
        return -1
    a = t.detach().cpu()
    raw = a.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if a.numel() else b""
    h = hashlib.blake2b(raw, digest_size=8)
    h.update(str((a.dtype, tuple(a.shape))).encode())
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def _np_rng_state():
    from .solvers.solver import _np_rng_state as f
    return f()


def _np_set_rng_state(s) -> None:
    from .solvers.solver import _np_set_rng_state as f
    f(s)


class DataParallel(TrainingCallback):
    """Data-parallel training in the current process group, as a training callback (see the module
    docstring). Build it on every rank and give it to the Solver (`callbacks=[dp]`), or use
    `data_parallel_solver`."""

    state_key = "distributed"
    synchronizes = True

    def __init__(self, device: torch.device | str, bucket_bytes: int = BUCKET_BYTES):
        if not dist.is_initialized():
            raise NetcompressError("DataParallel needs an initialised torch.distributed process group")
        self.device = torch.device(device)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        # Control messages (losses, requests, checksums, generator states) stay on the CPU.
        self.control = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self.grad_sync = GradientAllReduce(self.world_size, bucket_bytes=bucket_bytes)
        self._initial_rank_state: dict | None = None
        self._saved_ranks: list | None = None    # every rank's generators, from a restored snapshot
        self._gathered: list | None = None       # ... gathered at the last snapshot point (rank 0)

    # -- set-up ----------------------------------------------------------------------------
    def attach(self, solver) -> None:
        """Remember this rank's own generator states (before a restore replaces them)."""
        self._initial_rank_state = self._rank_state(solver)

    def on_start(self, solver) -> None:
        if solver.restored_state is not None:
            self._restore_rank_state(solver)
        tensors = [e.tensor for e in solver.params] + [h for hs in solver.history for h in hs]
        self.broadcast(tensors)
        self._sync_rank0_state(solver)
        if solver.root:
            log.info("Data-parallel training on %d processes (%s): batch_size is per process, "
                     "gradients are averaged", self.world_size, dist.get_backend())

    def nets_rebuilt(self, solver) -> None:
        # New layers drew their fillers from each rank's own stream (seed + rank): take rank 0's,
        # as at the start. (Every rank rebuilds at the same point of the loop or of a restore.)
        tensors = [e.tensor for e in solver.params] + [h for hs in solver.history for h in hs]
        self.broadcast(tensors)
        self._sync_rank0_state(solver)

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Every rank takes rank 0's values of `tensors`, in place (a collective: every rank calls it alike)."""
        groups: dict[tuple, list[torch.Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.device, t.dtype), []).append(t)
        with torch.no_grad():
            for ts in groups.values():
                flat = _flatten_dense_tensors([t.detach() for t in ts])
                dist.broadcast(flat, src=0)
                for t, v in zip(ts, _unflatten_dense_tensors(flat, ts)):
                    t.copy_(v)

    def _sync_rank0_state(self, solver) -> None:
        """Every rank takes rank 0's layer `rank0_state` (data seeds) and named generator states."""
        net = solver.net
        for _, layer in net.named_layers():
            st = layer.rank0_state()
            if st is not None:
                st = st.clone()
                dist.broadcast(st, src=0, group=self.control)
                layer.set_rank0_state(st)
        # The same generators exist on every rank (built from the same net), in the same order.
        for name, gen in sorted(net.ctx.named_generators().items()):
            state = gen.get_state()
            dist.broadcast(state, src=0, group=self.control)
            gen.set_state(state)

    # -- per-iteration hooks ---------------------------------------------------------------
    def before_update(self, solver) -> None:
        self.grad_sync(solver.params)

    # -- per-rank generator states in snapshots --------------------------------------------
    def _rank_state(self, solver) -> dict:
        st = {"torch_rng": torch.get_rng_state(), "numpy_rng": _np_rng_state(),
              "layers": dict(solver.net.rng_state())}
        if solver.device.type == "cuda":
            st["cuda_rng"] = torch.cuda.get_rng_state(solver.device)
        return st

    def _apply_rank_state(self, solver, st: dict) -> None:
        torch.set_rng_state(st["torch_rng"])
        _np_set_rng_state(st["numpy_rng"])
        if "cuda_rng" in st and solver.device.type == "cuda":
            torch.cuda.set_rng_state(st["cuda_rng"], solver.device)
        solver.net.set_rng_state(st.get("layers", {}), strict=False)

    def _restore_rank_state(self, solver) -> None:
        """After every rank restored rank 0's snapshot: give rank r its own generators back (rank
        r's from the snapshot when it has one, else the ones it was built with), so random layers
        (Dropout) keep independent streams per rank and a same-size resume is bit-identical."""
        if self.rank == 0:
            return
        saved = self._saved_ranks or []
        st = saved[self.rank] if self.rank < len(saved) else self._initial_rank_state
        if st is not None:
            self._apply_rank_state(solver, st)

    # -- per-iteration agreement -----------------------------------------------------------
    def reduce_loss(self, solver, loss: float) -> tuple[float, list[int]]:
        mine = torch.tensor([loss], dtype=torch.float64)
        losses = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(losses, mine, group=self.control)
        values = [float(t[0]) for t in losses]
        bad = [r for r, v in enumerate(values) if not math.isfinite(v)]
        return sum(values) / self.world_size, bad

    def agree_request(self, solver, request: str | None) -> str | None:
        t = torch.tensor([_REQUESTS.get(request, 0)], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return _REQUEST_NAMES[int(t[0])]

    # -- the snapshot-time consistency check -----------------------------------------------
    def before_snapshot(self, solver) -> None:
        self.check_consistency(solver)
        states = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(self._rank_state(solver), states, dst=0, group=self.control)
        if self.rank == 0:
            self._gathered = states

    def state_dict(self):
        if self._gathered is None:
            return None
        return {"ranks": self._gathered, "world_size": self.world_size}

    def load_state_dict(self, state) -> None:
        self._saved_ranks = None if state is None else list(state.get("ranks") or [])

    def check_consistency(self, solver) -> None:
        """Compare the layers' replicated state (masks, statistics) and the weights across ranks
        (collective); raise InconsistentMasksError naming the layers and ranks if replicated state
        differs."""
        strict = list(solver.net.replicated_state().items())
        weights = [(e.key, e.tensor) for e in solver.params if e.learnable]
        mine = torch.tensor([_digest(t) for _, t in strict + weights], dtype=torch.int64)
        table = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(table, mine, group=self.control)
        table_t = torch.stack(table)  # world_size x checks
        differ = (table_t != table_t[0]).any(dim=0).tolist()

        def describe(i: int, label: str) -> str:
            ranks = [r for r in range(self.world_size) if int(table_t[r, i]) != int(table_t[0, i])]
            return f"{label} (rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} " \
                   f"differ{'' if len(ranks) > 1 else 's'} from rank 0)"

        bad = [describe(i, label) for i, (label, _) in enumerate(strict) if differ[i]]
        if bad:
            msg = (f"Iteration {solver.iter}: the masks or layer statistics of the {self.world_size} "
                   f"processes differ, so the snapshot would not describe the model every process "
                   f"trained: {'; '.join(bad)}. This is a bug (all ranks should update them "
                   "identically); nothing was written for this iteration.")
            if self.rank == 0:
                log.error(msg)
            raise InconsistentMasksError(msg)
        off = len(strict)
        drift = [describe(off + i, label) for i, (label, _) in enumerate(weights) if differ[off + i]]
        if drift and self.rank == 0:
            log.warning("Iteration %d: weights differ between processes (rank 0's are saved): %s",
                        solver.iter, "; ".join(drift))


def data_parallel_solver(param, *, device: torch.device | str, bucket_bytes: int = BUCKET_BYTES,
                         **solver_kwargs):
    """A `Solver` wired for data-parallel training in the current process group (every rank calls
    this alike). `solver_kwargs` are Solver's (weights, max_iter, sigint_effect, ...)."""
    from .solvers.solver import Solver

    dp = DataParallel(device, bucket_bytes=bucket_bytes)
    callbacks = [dp, *solver_kwargs.pop("callbacks", ())]
    return Solver(param, device=device, rank=dp.rank, world_size=dp.world_size, callbacks=callbacks,
                  **solver_kwargs)


# ----------------------------------------------------------------------------------------------
# Running worker functions: under a launcher, or spawned here
# ----------------------------------------------------------------------------------------------

def _configure_rank_logging(rank: int) -> None:
    setup_logging()
    if rank != 0:
        # Only rank 0 logs progress (Caffe's root solver); the others still report problems.
        logging.getLogger("netcompress").setLevel(logging.WARNING)


def _backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def run_in_process_group(fn: Callable[..., Any], env: LaunchEnv, device: torch.device | str,
                         args: Sequence[Any] = (), timeout_s: float = DEFAULT_TIMEOUT_S,
                         store=None, teardown: bool = True) -> Any:
    """Initialise the default process group for this process (NCCL for a CUDA device, else gloo),
    run `fn(ProcessInfo, *args)`, and tear the group down. Errors name this rank.

    `teardown=False` is for a process that ends right after (`leave`): no teardown, so none that can hang
    (`destroy_process_group` below), and ending the process closes the group anyway."""
    global _group_left_open
    device = torch.device(device)
    backend = _backend_for(device)
    _configure_rank_logging(env.rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    if store is None:
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        dist.init_process_group(backend, init_method="env://", rank=env.rank,
                                world_size=env.world_size, timeout=timeout)
    else:
        dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world_size,
                                timeout=timeout)
    info = ProcessInfo(env.rank, env.world_size, env.local_rank, device, backend)
    try:
        return fn(info, *args)
    except NetcompressError as e:
        if env.world_size > 1 and not str(e).startswith("rank "):
            e.args = (f"rank {env.rank}: {e}",) + e.args[1:]
        raise
    finally:
        if teardown:
            destroy_process_group()
        else:
            _group_left_open = True


def destroy_process_group() -> None:
    """`dist.destroy_process_group()`, first letting gloo's worker threads finish.

    A gloo worker drops a finished collective (and with it the caller's tensors) just after the caller's
    wait returns; where the caller has already let go of its Python tensors, that drop needs the GIL. The
    teardown joins the workers while holding the GIL, so the two wait on each other for good (seen with torch
    2.4: ~ProcessGroupGloo in std::thread::join, a worker in gil_scoped_acquire under ~AsyncGatherWork;
    pytorch#75097). A short sleep hands the workers the GIL first."""
    if dist.is_initialized():
        time.sleep(0.1)
        dist.destroy_process_group()


def _is_comm_error(e: BaseException) -> bool:
    """Errors a rank sees because another one failed (a peer closed its connection...)."""
    kinds = tuple(k for k in (getattr(dist, "DistError", None),) if k is not None)
    if kinds and isinstance(e, kinds):
        return True
    return bool(re.search(r"gloo|nccl|connection (closed|reset)|broken pipe|timed out", str(e), re.I))


def _spawn_entry(index: int, fn, args, world_size: int, devices: list[str], host: str, port: int,
                 errdir: str, timeout_s: float, threads: int) -> None:
    # Own process group: a terminal's Ctrl-C reaches only the launcher, which forwards it once.
    # (torch's spawn already asks the kernel to send SIGINT here if the launcher dies.)
    try:
        os.setpgrp()
    except (AttributeError, OSError):
        pass
    # The commands' malloc settings are this process's, not inherited (torchrun's ranks are commands).
    configure_memory()
    torch.set_num_threads(threads)  # (a fresh process: it took torch's default, every CPU, whatever --threads said)
    os.environ["LOCAL_WORLD_SIZE"] = str(world_size)  # as torchrun sets it: these processes share the machine
    env = LaunchEnv(index, world_size, index, host, port, "spawn")
    record = None
    try:
        store = dist.TCPStore(host, port, world_size, False,
                              timeout=datetime.timedelta(seconds=timeout_s))
        # No teardown: this process ends below (`leave`) once its result is reported.
        run_in_process_group(fn, env, devices[index], args, timeout_s, store=store, teardown=False)
    except KeyboardInterrupt:
        record = {"kind": "interrupted", "message": "interrupted", "exit_code": 130}
    except LogReaderGone as e:  # (it stopped and snapshotted; the launcher ends quietly, as this would alone)
        record = {"kind": "log-reader-gone", "message": e.strerror, "exit_code": 141}
    except NetcompressError as e:
        record = {"kind": "netcompress", "type": type(e).__name__, "message": str(e),
                  "exit_code": int(getattr(e, "exit_code", 1)), "comm": False}
    except Exception as e:  # noqa: BLE001 - reported to the launcher with its traceback
        record = {"kind": "exception", "type": type(e).__name__, "message": f"rank {index}: {e}",
                  "traceback": traceback.format_exc(), "exit_code": 1, "comm": _is_comm_error(e)}
    if record is not None:
        path = os.path.join(errdir, f"rank{index}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
    leave(record["exit_code"] if record is not None else 0)


_group_left_open = False


def group_left_open() -> bool:
    """Whether this process ran `run_in_process_group(..., teardown=False)`, and so must `leave`."""
    return _group_left_open


def leave(code: int) -> None:
    """End this process now with `code`: flush its logs and output, then `os._exit`, skipping the
    interpreter's shutdown, whose destructors would tear a process group down (run_in_process_group)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


def _failure(errdir: str, exc: BaseException, nprocs: int) -> WorkerError | LogReaderGone:
    records = []
    for r in range(nprocs):
        path = os.path.join(errdir, f"rank{r}.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                records.append((r, json.load(f)))
    # The cause, not its echo: prefer an error that is not another rank's lost connection.
    records.sort(key=lambda rr: (rr[1].get("comm", False), rr[1]["kind"] == "interrupted", rr[0]))
    if records:
        rank, rec = records[0]
        if rec.get("traceback"):
            log.error("rank %d failed:\n%s", rank, rec["traceback"].rstrip())
        if rec["kind"] == "log-reader-gone":
            return LogReaderGone(errno.EPIPE, rec["message"])
        return WorkerError(rec["message"], rec["exit_code"], rank)
    rank = getattr(exc, "error_index", None)
    code = getattr(exc, "exit_code", None)
    sig = getattr(exc, "signal_name", None)
    if code is not None and code < 0:
        return WorkerError(f"rank {rank} was killed by signal {sig or -code}", 128 - code, rank)
    return WorkerError(f"rank {rank} failed: {str(exc).strip()}", code if code else 1, rank)


def launch(fn: Callable[..., Any], nprocs: int, args: Sequence[Any] = (), *,
           devices: Sequence[torch.device | str] | None = None,
           timeout_s: float = DEFAULT_TIMEOUT_S, threads: int | None = None) -> None:
    """Run `fn(ProcessInfo, *args)` in `nprocs` fresh processes (rank i on `devices[i]`, CPU by
    default), each with the default process group initialised (rendezvous on 127.0.0.1), and `threads` CPU
    threads (default: threads.threads_per_process, this process's choice or its CPUs shared out).

    Returns when all succeed. If one fails the others are terminated and `WorkerError` is raised
    with the failing rank's message and exit code. SIGINT and SIGHUP sent to this process are
    forwarded to every rank (a third Ctrl-C kills them).
    """
    import torch.multiprocessing as mp

    if nprocs < 1:
        raise NetcompressError(f"need at least one process, got {nprocs}")
    devs = [str(torch.device(d)) for d in (devices or ["cpu"] * nprocs)]
    if len(devs) != nprocs:
        raise NetcompressError(f"{nprocs} processes need {nprocs} devices, got {len(devs)}")
    threads = threads or threads_per_process(nprocs)
    # The launcher holds the rendezvous store, so its port cannot be taken by someone else.
    store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=datetime.timedelta(seconds=timeout_s),
                          wait_for_workers=False)
    with tempfile.TemporaryDirectory(prefix="netcompress-dist-") as errdir:
        ctx = mp.start_processes(_spawn_entry, args=(fn, tuple(args), nprocs, devs, "127.0.0.1",
                                                     store.port, errdir, timeout_s, threads),
                                 nprocs=nprocs, join=False, start_method="spawn")
        forwarded = {"n": 0}

        def forward(signum, frame):
            if signum == signal.SIGINT:
                forwarded["n"] += 1
            for p in ctx.processes:
                if p.is_alive() and p.pid:
                    try:
                        os.kill(p.pid, signal.SIGKILL if forwarded["n"] >= 3 else signum)
                    except ProcessLookupError:
                        pass

        sigs = [s for s in (signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None]
        main = threading.current_thread() is threading.main_thread()
        old = {s: signal.signal(s, forward) for s in sigs} if main else {}
        # (grace_period: the others get a moment to report their own error before SIGTERM)
        join_kw = {"grace_period": 5.0} if "grace_period" in inspect.signature(ctx.join).parameters else {}
        try:
            while not ctx.join(timeout=0.5, **join_kw):
                pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            raise _failure(errdir, e, nprocs) from None
        finally:
            for s, h in old.items():
                signal.signal(s, h)


# ----------------------------------------------------------------------------------------------
# `netcompress train` on several processes
# ----------------------------------------------------------------------------------------------

def _train_worker(info: ProcessInfo, cfg: dict) -> None:
    from .io import advice_for

    sp = pb.SolverParameter.FromString(cfg["solver_param"])
    with advice_for("command line"):  # (a spawned process of `netcompress train`: its errors name the flags)
        solver = data_parallel_solver(sp, device=info.device, weights=cfg["weights"],
                                      max_iter=cfg["iterations"], sigint_effect=cfg["sigint_effect"],
                                      sighup_effect=cfg["sighup_effect"], options=cfg["options"],
                                      source=cfg["solver"], strict=cfg.get("strict", False))
        solver.run_train(cfg["snapshot"])


def _launcher_device(env: LaunchEnv, args, ids: list[int] | None) -> torch.device:
    """Under torchrun/srun: the CPU, or GPU LOCAL_RANK (the LOCAL_RANK-th id of an explicit --gpu
    list), or GPU 0 when the launcher gives each task a single visible device."""
    if args.cpu_procs or not ids:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NetcompressError("a GPU run was asked for, but no CUDA device is available")
    n = torch.cuda.device_count()
    if args.gpu and args.gpu != "all":
        if env.local_rank >= len(ids):
            raise NetcompressError(f"--gpu {args.gpu} lists {len(ids)} device(s), but this process has "
                                   f"LOCAL_RANK {env.local_rank}; list one GPU per process on the node")
        return torch.device("cuda", ids[env.local_rank])
    if n == 1:
        return torch.device("cuda", 0)
    if env.local_rank >= n:
        raise NetcompressError(f"LOCAL_RANK {env.local_rank} has no GPU: only {n} CUDA device(s) are "
                               "visible; run at most one process per GPU on each node")
    return torch.device("cuda", env.local_rank)


def train_distributed(args, sp: pb.SolverParameter, ids: list[int] | None) -> int:
    """`netcompress train` on several processes: under torchrun/srun (one rank per process), or
    spawning `--cpu-procs N` CPU processes or one process per listed GPU."""
    cfg = {"solver": args.solver, "solver_param": sp.SerializeToString(), "weights": args.weights,
           "snapshot": args.snapshot, "iterations": args.iterations,
           "sigint_effect": args.sigint_effect, "sighup_effect": args.sighup_effect,
           "options": options_from_args(args), "strict": bool(getattr(args, "strict", False))}
    timeout = float(getattr(args, "dist_timeout", None) or DEFAULT_TIMEOUT_S)
    env = launcher_env()
    if env is not None:
        if args.cpu_procs and args.cpu_procs != env.world_size:
            raise NetcompressError(f"--cpu-procs {args.cpu_procs} disagrees with the launcher's "
                                   f"world size {env.world_size} ({env.source})")
        device = _launcher_device(env, args, ids)
        if env.rank == 0:
            log.info("Distributed training (%s): %d processes, rendezvous %s:%d", env.source,
                     env.world_size, env.master_addr, env.master_port)
        # The command ends by `leave` (cli.main) rather than a teardown: see run_in_process_group.
        run_in_process_group(_train_worker, env, device, (cfg,), timeout, teardown=False)
        return 0
    if args.cpu_procs:
        devices = [torch.device("cpu")] * args.cpu_procs
    else:
        devices = [torch.device("cuda", i) for i in ids]
    threads = threads_per_process(len(devices))
    log.info("Starting %d training processes (%s) on %s, %d CPU thread%s each", len(devices),
             _backend_for(devices[0]), ", ".join(map(str, devices)), threads, "s" * (threads > 1))
    share = max(1, usable_cpus() // len(devices))
    if threads > share:  # (--threads is each process's: `--threads 2 train --cpu-procs 2` on two CPUs runs four)
        log.warning("%d processes of %d CPU threads on the %d CPUs this process may use: the threads take turns "
                    "on the cores (--threads is each process's; give --threads %d)", len(devices), threads,
                    usable_cpus(), share)
    launch(_train_worker, len(devices), (cfg,), devices=devices, timeout_s=timeout, threads=threads)
    return 0
