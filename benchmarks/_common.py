"""Shared by the benchmark scripts: the machine's description, timing with warm-up and medians, tables, JSON.

Timing discipline (docs of the device machines, METHOD.md): warm up first; on CUDA time with events (host clocks
only after a synchronize); repeat and take the median; report the spread so that two versions closer than it
are not told apart.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------

def argument_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The options both scripts share: --quick, --json, --device and --silent."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--json", metavar="OUT", help="write the results to this JSON file")
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                   help="where to run (all: the CPU, and CUDA when present)")
    p.add_argument("--silent", action="store_true", help="no progress lines on stderr")
    return p


def progress(args: argparse.Namespace, msg: str) -> None:
    """A progress line on stderr, unless --silent."""
    if not args.silent:
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(devices: Sequence[str]) -> dict:
    """What the figures were measured on."""
    from netcompress import ops

    info = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "transparent_hugepages": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "memory_gib": _mem_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "netcompress_with_cuda": ops.WITH_CUDA,
        "direct_sum_simd": ops.direct_sum_simd(),  # the vector path of the direct-sum convolutions
        "git_commit": _git_commit(),
        "load_average_start": load_average(),
        # the settings that change which kernels run (NETCOMPRESS_SIMD, ONEDNN_MAX_CPU_ISA, thread counts, ...)
        "environment": {k: v for k, v in sorted(os.environ.items())
                        if k.startswith(("NETCOMPRESS_", "ONEDNN_", "DNNL_", "MKL_", "OMP_", "KMP_"))},
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if "cuda" in devices and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["cuda_device"] = p.name
        info["cuda_memory_gib"] = round(p.total_memory / 2**30, 1)
        info["cuda_runtime"] = torch.version.cuda
    return info


def _mem_gib() -> float | None:
    text = _read("/proc/meminfo")
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def resolve_devices(choice: str) -> list[str]:
    """--device cpu|cuda|all -> the devices to run ('all' skips CUDA when there is none)."""
    if choice == "cpu":
        return ["cpu"]
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
        return ["cuda"]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------

def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device: str, *, reset: Callable[[], object] | None = None,
            min_time: float = 0.5, min_reps: int = 5, max_reps: int = 200, warmup: int = 3,
            sample_floor: float = 2e-4) -> dict:
    """Median time of one call of fn, in seconds, with its spread.

    Warm-up calls first. Without `reset`, a sample runs fn `inner` times back to back (inner chosen so that a
    sample lasts at least `sample_floor` seconds) and counts sample / inner. With `reset` (ops that consume
    their input, e.g. quantizing), every call is preceded by reset(), outside the timed region. CPU samples use
    perf_counter; CUDA samples use events recorded on the current stream around the calls. Samples are taken
    until `min_time` seconds of samples and `min_reps` samples, at most `max_reps`.
    """
    cuda = device == "cuda"
    for _ in range(warmup):
        if reset is not None:
            reset()
        fn()
    sync(device)
    inner = 1
    if reset is None:
        t0 = time.perf_counter()
        fn()
        sync(device)
        one = time.perf_counter() - t0
        inner = max(1, min(1000, int(sample_floor / max(one, 1e-9))))
        if one > min_time and not cuda:  # a slow call: the calibration counts as a sample (it ran warm)
            samples_first = [one]
        else:
            samples_first = []
    else:
        samples_first = []
    samples: list[float] = list(samples_first)
    spent = sum(samples)
    while len(samples) < max_reps and (len(samples) < min_reps or spent < min_time):
        if reset is not None:
            reset()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            dt = time.perf_counter() - t0
        samples.append(dt / inner)
        spent += dt
    samples.sort()
    med = statistics.median(samples)
    q1, q3 = _quantile(samples, 0.25), _quantile(samples, 0.75)
    return {"s": med, "min_s": samples[0], "iqr_rel": (q3 - q1) / med if med > 0 else 0.0,
            "reps": len(samples), "inner": inner}


def _quantile(sorted_xs: list[float], q: float) -> float:
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


# ---------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------

def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain-text table: columns are (key, header); values are printed as given (strings) or with str()."""
    cells = [[h for _, h in columns]] + [["" if r.get(k) is None else str(r.get(k)) for k, _ in columns]
                                         for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if j and _numeric(c) else c.ljust(w) for c, w in zip(row, widths)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _numeric(s: str) -> bool:
    try:
        float(s.rstrip("x%"))
        return True
    except ValueError:
        return False


def fmt(x: float | None, digits: int = 3) -> str | None:
    """A number with `digits` significant digits, or None."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def write_json(path: str, obj: dict) -> None:
    """Atomically (netcompress.io.atomic_write: a temporary file, then a rename). NaN is not JSON: none is written."""
    from netcompress.io import atomic_write

    atomic_write(path, json.dumps(obj, indent=1, allow_nan=False, default=_json_default) + "\n")


def _json_default(x):
    if isinstance(x, (torch.dtype, torch.device)):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


@contextlib.contextmanager
def environ(name: str, value: str | None):
    """Within the block, the environment variable `name` is `value` (None: unset); then as it was. The CPU layers
    read their rules' switches (NETCOMPRESS_CONV_ALGO, ...) when they are built."""
    old = os.environ.get(name)
    try:
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def ensure_repo_on_path() -> None:
    """So that `python benchmarks/bench_*.py` finds the benchmarks package and a source checkout."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
