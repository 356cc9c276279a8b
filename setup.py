"""Builds the netcompress._C extension; everything else about the package is in pyproject.toml.

C++ sources (csrc/netcompress.cpp, csrc/cpu/*.cpp) are always built; the CUDA sources (csrc/cuda/*.cu) only
when the installed torch has CUDA and nvcc is found, or when FORCE_CUDA=1. Install with
`pip install --no-build-isolation -e .` so the extension compiles against the torch already installed.
"""
from __future__ import annotations

import glob
import os
import sys

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    # setuptools wants paths relative to the project root.
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _use_cuda() -> tuple[bool, str]:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True, "FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is built without CUDA"
    if CUDA_HOME is None:
        return False, f"torch has CUDA {torch.version.cuda} but no CUDA toolkit (nvcc / CUDA_HOME) was found"
    return True, f"torch has CUDA {torch.version.cuda}, toolkit at {CUDA_HOME}"


def _openmp_flags() -> list[str]:
    # at::parallel_for is header code ("#pragma omp parallel") when ATen uses OpenMP: without the flag the
    # CPU kernels would run on one thread. The name libgomp.so.1 resolves to the copy torch already loaded.
    if not torch.backends.openmp.is_available():
        return []
    if sys.platform.startswith("linux"):
        return ["-fopenmp"]
    if sys.platform == "win32":
        return ["/openmp"]
    return []  # Apple clang has no -fopenmp by default; the loops then run serially


def _extension():
    with_cuda, why = _use_cuda()
    sources = _sources("csrc/netcompress.cpp") + _sources("csrc/cpu/*.cpp")
    openmp = _openmp_flags()
    # -ffp-contract=off: the CPU loops have AVX2/AVX-512 clones (csrc/cpu/loops.h); without it GCC would fuse
    # a*b + c into an FMA in those clones only, and results would depend on the machine.
    cxx = (["/O2"] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]) + openmp
    extra_compile_args: dict[str, list[str]] = {"cxx": cxx}
    define_macros: list[tuple[str, str | None]] = []
    if with_cuda:
        sources += _sources("csrc/cuda/*.cu")
        extra_compile_args["nvcc"] = ["-O3"]
        # Only read by PyInit__C, which reports it as netcompress._C.with_cuda.
        define_macros.append(("NETCOMPRESS_WITH_CUDA", None))
    print(
        "netcompress._C build configuration:\n"
        f"  torch {torch.__version__} (CUDA {torch.version.cuda}), Python {sys.version.split()[0]}\n"
        f"  CUDA kernels: {'yes' if with_cuda else 'no'} ({why})\n"
        f"  sources: {' '.join(sources)}\n"
        f"  flags: {extra_compile_args}, macros: {define_macros}, link: {openmp}",
        flush=True,
    )
    kind = CUDAExtension if with_cuda else CppExtension
    return kind(
        name="netcompress._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args=extra_compile_args,
        extra_link_args=openmp,
        define_macros=define_macros,
    )


setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildExtension})
