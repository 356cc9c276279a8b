"""The CUDA ops' kernels run on the host (cuda_emu/): built with the system C++ compiler, called through ctypes.

`build(folder)` compiles cuda_emu/emulated_ops.cpp against csrc/cuda/*.cuh with cuda_emu/ first on the include
path (its cuda_runtime.h emulates the runtime) and returns an `Emulated` object, or raises `Unavailable` with the
reason (no compiler, not Linux). Its methods take CPU tensors, launch what the op file launches for them, and
raise `EmulationError` with the emulator's message (a deadlock at a barrier, a ticket not returned to 0, ...).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "cuda_emu" / "emulated_ops.cpp"

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
ORDERS = {"forward": 0, "reverse": 1, "shuffled": 2}


class Unavailable(Exception):
    """The emulator cannot be built here."""


class EmulationError(RuntimeError):
    """An emulated launch failed (the emulator's message)."""


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def build(folder: Path) -> Emulated:
    if not sys.platform.startswith("linux"):
        raise Unavailable(f"the emulator's fibers are ucontext's, tested on Linux only (this is {sys.platform})")
    cxx = _compiler()
    if cxx is None:
        raise Unavailable("no C++ compiler (c++, g++ or clang++; or $CXX) to build the emulated kernels")
    from torch.utils.cpp_extension import include_paths
    out = folder / "emulated_ops.so"
    # -ffp-contract=off as the CPU build: no FMA here either, so the element-wise rules round as the CPU loops'.
    cmd = [cxx, "-std=c++17", "-O1", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas",
           f"-I{HERE / 'cuda_emu'}", "-isystem", include_paths()[0], str(SOURCE), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        # A compiler that exists but cannot build the kernels is a failure, not a skip.
        raise RuntimeError(f"building the emulated kernels failed:\n{' '.join(cmd)}\n{done.stderr[-4000:]}")
    return Emulated(ctypes.CDLL(str(out)))


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    if t is None:
        return ctypes.c_void_p(None)
    assert t.device.type == "cpu" and t.is_contiguous(), "the emulated kernels read contiguous CPU memory"
    return ctypes.c_void_p(t.data_ptr())


def _double_ptr(t: torch.Tensor) -> ctypes.POINTER(ctypes.c_double):
    assert t.dtype == torch.float64 and t.is_contiguous()
    return ctypes.cast(ctypes.c_void_p(t.data_ptr()), ctypes.POINTER(ctypes.c_double))


class Emulated:
    """The emulated kernels; each method mirrors one CUDA op's launch for contiguous inputs."""

    def __init__(self, lib: ctypes.CDLL):
        self._lib = lib
        lib.emu_last_error.restype = ctypes.c_char_p
        ll, vp, i, d = ctypes.c_longlong, ctypes.c_void_p, ctypes.c_int, ctypes.c_double
        dp = ctypes.POINTER(ctypes.c_double)
        lib.emu_configure.argtypes = [ctypes.c_ulonglong, i, ll, ll]
        lib.emu_dns_masked_weight.argtypes = [i, i, ll, vp, vp, vp]
        lib.emu_dns_stats.argtypes = [i, i, ll, vp, vp, ll, vp, vp, dp]
        lib.emu_dns_update_mask.argtypes = [i, i, ll, vp, vp, vp, i, d, i, d]
        lib.emu_dns_splice_grad.argtypes = [i, i, ll, vp, vp, vp]
        lib.emu_inq_mask_stats.argtypes = [i, i, ll, vp, vp, dp]
        lib.emu_inq_threshold.argtypes = [i, i, ll, vp, vp, ll, vp, ctypes.POINTER(ctypes.c_int)]
        lib.emu_inq_quantize.argtypes = [i, i, ll, vp, vp, i, d, ll]
        lib.emu_act_quant.argtypes = [i, i, i, ll, vp, vp, vp, i, d, d, d]
        lib.emu_quant_weight.argtypes = [i, i, ll, ll, vp, vp, vp, vp, d, d]
        lib.emu_sgd_momentum_update.argtypes = [i, i, ll, vp, vp, vp, d, d]
        ip = ctypes.POINTER(ctypes.c_int)
        lib.emu_selftest_shared_sum.argtypes = [i, ip, ip]
        lib.emu_selftest_exited_lane_shuffle.argtypes = [ip]
        lib.emu_selftest_divergent_barrier.argtypes = [ip]

    def _call(self, name: str, *args) -> None:
        if getattr(self._lib, name)(*args) != 0:
            raise EmulationError(f"{name}: {self._lib.emu_last_error().decode()}")

    def configure(self, *, seed: int = 0, order: str = "forward", wave: int = 132, max_blocks: int = 0) -> None:
        """seed: the blocks' order (0: index order); order: the threads' turns between barriers; wave: a
        reduction's most blocks (the device's SMs x resident blocks); max_blocks: a cap on element-wise grids."""
        self._call("emu_configure", seed, ORDERS[order], wave, max_blocks)

    # ---- DNS ----

    def dns_masked_weight(self, w, m, out, *, vec: bool) -> None:
        self._call("emu_dns_masked_weight", DTYPE_CODES[w.dtype], int(vec), w.numel(), _ptr(w), _ptr(m), _ptr(out))

    def dns_stats(self, w, wm, b, bm, out, *, vec: bool) -> None:
        nb = 0 if b is None else b.numel()
        self._call("emu_dns_stats", DTYPE_CODES[w.dtype], int(vec), w.numel(), _ptr(w), _ptr(wm), nb, _ptr(b),
                   _ptr(bm), _double_ptr(out))

    def dns_update_mask_(self, w, m, out, low: tuple[int, float], high: tuple[int, float], *, vec: bool) -> None:
        """low, high: (kind, value), kind 0 by value, 1 a float32 on the device, 2 a float64."""
        self._call("emu_dns_update_mask", DTYPE_CODES[w.dtype], int(vec), w.numel(), _ptr(w), _ptr(m), _ptr(out),
                   low[0], low[1], high[0], high[1])

    def dns_splice_grad_(self, diff, m, g, *, vec: bool) -> None:
        self._call("emu_dns_splice_grad", DTYPE_CODES[diff.dtype], int(vec), diff.numel(), _ptr(diff), _ptr(m),
                   _ptr(g))

    # ---- INQ ----

    def inq_mask_stats(self, w, m, out, *, vec: bool) -> None:
        self._call("emu_inq_mask_stats", DTYPE_CODES[w.dtype], int(vec), w.numel(), _ptr(w), _ptr(m),
                   _double_ptr(out))

    def inq_threshold(self, w, m, n_keep: int, out, *, vec: bool) -> int:
        """Writes the selected value to out (one element of w's dtype); returns the number of passes."""
        passes = ctypes.c_int(0)
        self._call("emu_inq_threshold", DTYPE_CODES[w.dtype], int(vec), w.numel(), _ptr(w), _ptr(m), n_keep,
                   _ptr(out), ctypes.byref(passes))
        return passes.value

    def inq_quantize_(self, w, m, thr: tuple[int, float], n2: int, *, vec: bool) -> None:
        self._call("emu_inq_quantize", DTYPE_CODES[w.dtype], int(vec), w.numel(), _ptr(w), _ptr(m), thr[0], thr[1],
                   n2)

    # ---- quantization, solver ----

    def act_quant(self, x, out, *, alpha: tuple[int, float] | None, low: float, high: float, grad=None) -> None:
        """alpha None: int_quant; grad given: the backward kernel."""
        kind, value = alpha if alpha is not None else (0, 0.0)
        self._call("emu_act_quant", DTYPE_CODES[x.dtype], int(alpha is not None), int(grad is not None), x.numel(),
                   _ptr(grad), _ptr(x), _ptr(out), kind, value, low, high)

    def quant_weight(self, w, m, alpha, out, *, low: float, high: float, dequant: bool) -> None:
        self._call("emu_quant_weight", DTYPE_CODES[w.dtype], int(dequant), w.numel(), w.numel() // w.shape[0],
                   _ptr(w), _ptr(m), _ptr(alpha), _ptr(out), low, high)

    def sgd_momentum_update_(self, g, h, mask, momentum: float, rate: float, *, vec: bool) -> None:
        self._call("emu_sgd_momentum_update", DTYPE_CODES[g.dtype], int(vec), g.numel(), _ptr(g), _ptr(h),
                   _ptr(mask), momentum, rate)

    # ---- the emulator's own checks ----

    def shared_sum(self, *, synced: bool) -> tuple[int, int]:
        """Thread 0's sum of what the block wrote to shared memory, with or without the barrier between; and the
        right sum."""
        result, expected = ctypes.c_int(0), ctypes.c_int(0)
        self._call("emu_selftest_shared_sum", int(synced), ctypes.byref(result), ctypes.byref(expected))
        return result.value, expected.value

    def wrong_kernel(self, name: str) -> None:
        """Runs one of the deliberately wrong kernels ("exited_lane_shuffle", "divergent_barrier")."""
        result = ctypes.c_int(0)
        self._call(f"emu_selftest_{name}", ctypes.byref(result))
