"""setup.py's decisions that no CPU build exercises: the CUDA architectures of a build without a visible GPU.

setup.py runs `setup()` when imported, so its function is taken from the file's syntax tree and run against
stand-ins for torch, cpp_extension and nvcc.
"""
from __future__ import annotations

import ast
import re
import subprocess
import types
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "setup.py"


def setup_function_named(name: str, **names):
    """setup.py's top-level function `name`, its globals the modules below and `names`."""
    tree = ast.parse(SETUP.read_text(encoding="utf-8"), str(SETUP))
    (node,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    scope = {"os": __import__("os"), "re": re, "subprocess": subprocess, **names}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(SETUP), "exec"), scope)
    return scope[name]


def fake_torch(arch_flags: str, gpus: int = 0):
    cuda = types.SimpleNamespace(is_available=lambda: gpus > 0, device_count=lambda: gpus)
    return types.SimpleNamespace(cuda=cuda, _C=types.SimpleNamespace(_cuda_getArchFlags=lambda: arch_flags))


def fake_run(listing: str | None):
    def run(cmd, **kw):
        assert cmd[-1] == "--list-gpu-arch" and cmd[0].endswith("nvcc")
        if listing is None:
            raise FileNotFoundError(cmd[0])
        return subprocess.CompletedProcess(cmd, 0, listing, "")
    return types.SimpleNamespace(run=run, CalledProcessError=subprocess.CalledProcessError)


@pytest.mark.parametrize("flags, listing, want", [
    # torch 2.13+cu130's list, nvcc 13's: every one, the newest also as PTX
    ("sm_75 sm_80 sm_86 sm_90 sm_100 sm_120", "compute_75\ncompute_80\ncompute_86\ncompute_90\ncompute_100\n"
     "compute_120\ncompute_121\n", "7.5;8.0;8.6;9.0;10.0;12.0+PTX"),
    # torch 2.4+cu121's list against nvcc 13, which has dropped sm_50 to sm_70
    ("sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90", "compute_75\ncompute_80\ncompute_86\ncompute_90\n",
     "7.5;8.0;8.6;9.0+PTX"),
    ("sm_90a sm_80", "", "8.0;9.0+PTX"),                       # nvcc says nothing: torch's list as it is
    ("sm_80 sm_90", None, "8.0;9.0+PTX"),                      # nvcc cannot be run
    ("sm_50 sm_60", "compute_75\ncompute_90\n", None),         # nothing in common: torch's own failure stays
    ("", "compute_90\n", None),
])
def test_architectures_without_a_visible_gpu(monkeypatch, flags, listing, want):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    f = setup_function_named("_cuda_arch_list", torch=fake_torch(flags), subprocess=fake_run(listing),
                             cpp_ext=types.SimpleNamespace(CUDA_HOME="/opt/cuda"))
    assert f() == want


def test_a_visible_gpu_or_a_given_list_decides(monkeypatch):
    cpp_ext = types.SimpleNamespace(CUDA_HOME="/opt/cuda")
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    f = setup_function_named("_cuda_arch_list", torch=fake_torch("sm_90", gpus=1), cpp_ext=cpp_ext)
    assert f() is None  # torch's cpp_extension builds for the GPUs it sees
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    f = setup_function_named("_cuda_arch_list", torch=fake_torch("sm_90"), cpp_ext=cpp_ext)
    assert f() is None  # the user's list is kept
