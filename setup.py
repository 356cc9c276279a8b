"""Builds the netcompress._C extension; everything else about the package is in pyproject.toml.

C++ sources (csrc/*.cpp, csrc/cpu/*.cpp) are always built; the CUDA sources (csrc/cuda/*.cu) only when the installed
torch has CUDA and an nvcc of the same major version is found, or when FORCE_CUDA=1. Install with `pip install
--no-build-isolation -e .` so the extension compiles against the torch already installed.
"""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import setuptools
import torch
from setuptools import setup
import torch.utils.cpp_extension as cpp_ext
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))

# pyproject.toml's [project] table and editable installs need setuptools >= 64. An older one (a Python 3.9 venv
# has 58) installs a package named UNKNOWN without dependencies or commands, and says nothing.
if tuple(int(x) for x in re.findall(r"\d+", setuptools.__version__)[:2]) < (64, 0):
    sys.exit(f"netcompress: building needs setuptools >= 64, found {setuptools.__version__} at "
             f"{os.path.dirname(setuptools.__file__)}: run  pip install -U 'setuptools>=64'  and install again")

BUILD_CONFIG: dict = {}  # what the build decided; written beside the extension (`netcompress info` shows it)


def _sources(pattern: str) -> list[str]:
    # setuptools wants paths relative to the project root.
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _use_cuda() -> tuple[bool, str]:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True, "FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is built without CUDA"
    home = cpp_ext.CUDA_HOME
    if home is None:
        return False, f"torch has CUDA {torch.version.cuda} but no CUDA toolkit (nvcc / CUDA_HOME) was found"
    toolkit = _nvcc_version(home)
    if toolkit is not None and toolkit.split(".")[0] != torch.version.cuda.split(".")[0]:
        # torch's BuildExtension refuses a different major version; build the CPU kernels rather than fail.
        return False, (f"torch has CUDA {torch.version.cuda} but the toolkit at {home} is CUDA {toolkit}: "
                       "install a matching toolkit (or torch) for the CUDA kernels; FORCE_CUDA=1 tries anyway")
    return True, f"torch has CUDA {torch.version.cuda}, toolkit CUDA {toolkit or '?'} at {home}"


def _nvcc_version(cuda_home: str) -> str | None:
    """The toolkit's "release X.Y", or None where nvcc cannot be run."""
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def _cudart_dirs(root: str) -> list[str]:
    """The folders under a toolkit root, of those torch links from (lib64, lib), that hold libcudart.so."""
    dirs = [os.path.join(root, "lib64"), os.path.join(root, "lib")]
    return [d for d in dirs if os.path.exists(os.path.join(d, "libcudart.so"))]


def _nvcc_toolkit_root(nvcc: str) -> str | None:
    """The toolkit root nvcc itself uses (its TOP), which differs from torch's CUDA_HOME when the nvcc on PATH
    is a wrapper script in another folder (torch takes CUDA_HOME from nvcc's location)."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "x.cu", "-o", "x.o"], capture_output=True, text=True).stderr
    except OSError:
        return None
    m = re.search(r"^#\$ TOP=(.*)$", out, re.M)
    return os.path.realpath(m.group(1).strip()) if m else None


def _adopt_nvcc_toolkit() -> str | None:
    """Where torch's CUDA_HOME has no libcudart.so but the toolkit nvcc itself reports does, build with that one.
    torch takes CUDA_HOME from the nvcc on PATH, which may be a wrapper script outside its toolkit: the link would
    then fail ('cannot find -lcudart'). cpp_extension reads its CUDA_HOME when it builds the compile and link
    commands, so setting it here is enough. Returns the toolkit adopted, or None (CUDA_HOME unchanged; one set in
    the environment is always kept)."""
    home = cpp_ext.CUDA_HOME
    if home is None or os.environ.get("CUDA_HOME") or _cudart_dirs(home):
        return None
    top = _nvcc_toolkit_root(os.path.join(home, "bin", "nvcc"))
    if not (top and _cudart_dirs(top)):
        return None
    cpp_ext.CUDA_HOME = top
    return top


def _cuda_arch_list() -> str | None:
    """TORCH_CUDA_ARCH_LIST for a CUDA build where no GPU is visible (a build machine, a container): the
    architectures torch itself was built for, those this nvcc compiles, the newest also as PTX for later GPUs.
    torch's cpp_extension otherwise takes the list from the visible GPUs and, with none, fails (an IndexError in
    _get_cuda_arch_flags). None where a GPU is visible (built for it) or the environment sets the list."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return None
    try:
        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return None
        flags = torch._C._cuda_getArchFlags()
    except (AttributeError, RuntimeError):
        return None
    archs = sorted({m.group(1) for m in re.finditer(r"sm_(\d+)", flags or "")}, key=int)
    home = cpp_ext.CUDA_HOME
    try:
        out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--list-gpu-arch"], capture_output=True,
                             text=True, check=True).stdout if home else ""
    except (OSError, subprocess.CalledProcessError):
        out = ""
    known = set(re.findall(r"compute_(\d+)", out))
    if known:
        archs = [a for a in archs if a in known]
    if not archs:
        return None
    listed = [f"{a[:-1]}.{a[-1]}" for a in archs]
    listed[-1] += "+PTX"
    return ";".join(listed)


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
    if with_cuda:
        adopted = _adopt_nvcc_toolkit()
        if adopted:
            why += f"; built with nvcc's own toolkit {adopted} (no libcudart.so where torch looked)"
        archs = _cuda_arch_list()
        if archs:
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs
            why += f"; no GPU visible: built for torch's architectures {archs} (TORCH_CUDA_ARCH_LIST chooses)"
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    openmp = _openmp_flags()
    # -ffp-contract=off: the CPU loops have AVX2/AVX-512 copies (csrc/cpu/loops.h, and sparse_conv_kernel.cpp's
    # per-instruction-set loops); without it GCC would fuse a*b + c into an FMA in those copies only, and results
    # would depend on the machine.
    cxx = (["/O2"] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]) + openmp
    extra_compile_args: dict[str, list[str]] = {"cxx": cxx}
    define_macros: list[tuple[str, str | None]] = []
    if with_cuda:
        sources += _sources("csrc/cuda/*.cu")
        extra_compile_args["nvcc"] = ["-O3"]
        # Only read by PyInit__C, which reports it as netcompress._C.with_cuda.
        define_macros.append(("NETCOMPRESS_WITH_CUDA", None))
    BUILD_CONFIG.update({
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": sys.version.split()[0],
        "cuda_kernels": with_cuda, "cuda_reason": why, "sources": sources,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        "flags": extra_compile_args, "macros": [m[0] for m in define_macros], "link": openmp,
    })
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


class _BuildExtension(BuildExtension):
    """BuildExtension that also writes the build configuration as `_build_config.json` beside the
    extension (pip hides setup.py's output; `netcompress info` reads the file)."""

    def run(self) -> None:
        super().run()
        path = os.path.join(os.path.dirname(self.get_ext_fullpath("netcompress._C")), "_build_config.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(BUILD_CONFIG, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)


setup(ext_modules=[_extension()], cmdclass={"build_ext": _BuildExtension})
