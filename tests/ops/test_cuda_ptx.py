"""The CUDA kernels round like the CPU loops, checked on their PTX where nvcc exists (no GPU needed).

nvcc contracts a*b + c into one FMA by default, and ptxas may fuse any `mul` and `add` it is given without an
explicit rounding modifier; the CPU build forbids contraction (-ffp-contract=off). The element-wise rules
(kernels/*.h) therefore use the _rn intrinsics on the device, which neither fuses. This test compiles the
torch-free kernel headers to PTX, as CI's nvcc check does, and asserts that every floating-point multiply and
add of the element-wise kernels carries `.rn` and that none is an FMA: the property that makes the CPU/CUDA
parity tests (marked `cuda`) hold bit for bit.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found: the PTX of the CUDA kernels is not checked")

# Header -> the kernels whose every instruction must round like the CPU loop.
KERNELS = {
    "solver_kernels.cuh": ["sgd_momentum_update_kernel"],
    "dns_kernels.cuh": ["dns_masked_weight_kernel", "dns_update_mask_kernel", "dns_splice_grad_kernel",
                        "dns_stats_kernel"],
}


def _ptx(header: str, tmp_path: Path) -> str:
    src = tmp_path / f"{header}.cu"
    src.write_text(f'#define NETCOMPRESS_KERNEL_CHECK\n#include "{CSRC / "cuda" / header}"\n')
    out = tmp_path / f"{header}.ptx"
    subprocess.run([NVCC, "-std=c++17", "-arch=sm_90", "-O3", "-ptx", str(src), "-o", str(out)], check=True,
                   capture_output=True, text=True, timeout=300)
    return out.read_text()


def _entries(ptx: str) -> dict[str, str]:
    """Kernel (mangled) name -> its PTX body."""
    return {m.group(1): m.group(0) for m in re.finditer(r"\.entry (\S+)\(.*?\n\}\n", ptx, re.S)}


@pytest.mark.parametrize("header", sorted(KERNELS))
def test_elementwise_kernels_never_fuse(header, tmp_path):
    entries = _entries(_ptx(header, tmp_path))
    for kernel in KERNELS[header]:
        bodies = {name: body for name, body in entries.items() if kernel in name}
        # every instantiation: float, double, float16, bfloat16; 16-byte packs and the scalar loop
        assert len(bodies) >= 8, f"{kernel}: {len(bodies)} instantiations in the PTX of {header}"
        for name, body in bodies.items():
            assert not re.search(r"\bfma\.", body), f"{name}: an FMA in the PTX"
            # ptxas fuses only a multiply without a rounding modifier into the add that uses it
            loose_mul = re.findall(r"\bmul(?:\.ftz)?\.f(?:32|64)\b", body)
            assert not loose_mul, f"{name}: {loose_mul[:3]} without .rn, which ptxas may fuse into an FMA"
            assert re.search(r"\bmul\.rn(?:\.ftz)?\.f(?:32|64)\b", body), f"{name}: no rounded multiply found"
            if kernel != "dns_stats_kernel":  # (its block fold adds partial sums: plain adds, no products)
                loose_add = re.findall(r"\b(?:add|sub)(?:\.ftz)?\.f(?:32|64)\b", body)
                assert not loose_add, f"{name}: {loose_add[:3]} without .rn"
