"""CPU memory for the `netcompress` commands: freed blocks are kept for the next iteration, as Caffe keeps its blobs.

Caffe allocates every blob once and reuses it at each iteration. PyTorch allocates activations, gradients
and scratch afresh at each step and frees them at its end. glibc's malloc serves a block above its mmap
threshold (128 KiB, raised on the fly to the size of the last freed mapping) with new pages from the kernel,
and gives the free top of its heap back above its trim threshold; every step then faults its large
buffers in again, a page at a time, each page zeroed by the kernel first. For LeNet at batch 64 that is
about 1,000 faults and 1.8 ms of an 18.5 ms training step on one thread (benchmarks/RESULTS.md).

So the commands set glibc's mmap threshold to its ceiling, 32 MiB, and the trim threshold to 1 GiB: blocks
up to 32 MiB come from the heap and stay there when freed, and the next step reuses them without a fault;
larger blocks (AlexNet's fc6 weights and their gradients) are still mapped and unmapped. The process's
resident memory stays at its peak, as under a caching allocator (PyTorch's on CUDA). Nothing numerical
changes.

Left as it is: where the environment already tunes malloc (`GLIBC_TUNABLES` with a `glibc.malloc.`
tunable, or a `MALLOC_*_` variable), where another allocator is preloaded (`LD_PRELOAD` naming one), where
the C library is not glibc, and with `NETCOMPRESS_MALLOC=system`. One INFO line says which.

The ranks that `netcompress train --cpu-procs N` spawns apply it themselves (the settings are the
process's, not inherited); a script that builds and runs a Solver itself calls `configure_memory()` once
for the same effect.
This module does not import torch.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import platform

from .errors import NetcompressError
from .log import get_logger

log = get_logger("memory")

__all__ = ["ENV_MALLOC", "MemoryChoice", "choose_memory", "configure_memory", "current_memory", "MMAP_THRESHOLD",
           "TRIM_THRESHOLD"]

ENV_MALLOC = "NETCOMPRESS_MALLOC"
MMAP_THRESHOLD = 32 << 20   # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # mallopt's parameter numbers (malloc.h)
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc", "hoard", "snmalloc")
_current: list["MemoryChoice"] = []  # what configure_memory last applied


@dataclasses.dataclass(frozen=True)
class MemoryChoice:
    """Whether the commands' malloc settings apply (`keep`), and why or why not."""

    keep: bool
    reason: str

    def describe(self) -> str:
        """The log line's text."""
        if self.keep:
            return (f"CPU memory: freed blocks up to {MMAP_THRESHOLD >> 20} MiB are kept for the next iteration "
                    f"(glibc malloc; {ENV_MALLOC}=system leaves its defaults)")
        return f"CPU memory: the C library's malloc settings as they are ({self.reason})"


def _is_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def choose_memory(environ: dict | None = None, glibc: bool | None = None) -> MemoryChoice:
    """What configure_memory would do under `environ` (default: this process's) on glibc or not."""
    env = os.environ if environ is None else environ
    asked = env.get(ENV_MALLOC, "").strip().lower()
    if asked not in ("", "keep", "system"):
        raise NetcompressError(f"{ENV_MALLOC}: expected 'keep' or 'system', got '{env[ENV_MALLOC]}'")
    if asked == "system":
        return MemoryChoice(False, f"{ENV_MALLOC}=system")
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return MemoryChoice(False, "GLIBC_TUNABLES sets them")
    tuned = [k for k in _GLIBC_ENV if k in env]
    if tuned:
        return MemoryChoice(False, f"{tuned[0]} sets them")
    preload = env.get("LD_PRELOAD", "").lower()
    found = [a for a in _ALLOCATORS if a in preload]
    if found:
        return MemoryChoice(False, f"{found[0]} is preloaded")
    if not (_is_glibc() if glibc is None else glibc):
        return MemoryChoice(False, "not glibc")
    return MemoryChoice(True, "")


def configure_memory(environ: dict | None = None) -> MemoryChoice:
    """Apply choose_memory's choice to this process's malloc and log it (one INFO line).

    Idempotent; safe at any time (the thresholds govern later allocations)."""
    choice = choose_memory(environ)
    if choice.keep:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
            choice = MemoryChoice(False, "mallopt refused the thresholds")
    log.info("%s", choice.describe())
    _current[:] = [choice]
    return choice


def current_memory() -> MemoryChoice:
    """What configure_memory last applied; in a process that never called it, the settings are glibc's."""
    return _current[0] if _current else MemoryChoice(False, "configure_memory() not called in this process")
