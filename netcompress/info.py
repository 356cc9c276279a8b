"""`netcompress info`: versions, how the extension was built (CUDA kernels or not, and why), threads
and devices: what a bug report needs, and what pip hides of the build's own output."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from typing import Sequence

__all__ = ["collect_info", "format_info", "main", "BUILD_CONFIG_FILE"]

# Written beside the extension by setup.py's build_ext (see setup.py `_BuildExtension`).
BUILD_CONFIG_FILE = "_build_config.json"


def _version(module: str) -> str:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "?"))
    except ImportError:
        return "not installed"


def _extension() -> dict:
    """Whether netcompress._C loads, whether it holds CUDA kernels, and the recorded build configuration."""
    here = os.path.dirname(os.path.abspath(__file__))
    out: dict = {"loaded": False}
    try:
        from . import _C
    except ImportError as e:
        out["error"] = str(e)
        return out
    out.update(loaded=True, path=getattr(_C, "__file__", "?"), cuda_kernels=bool(getattr(_C, "with_cuda", 0)))
    config_path = os.path.join(os.path.dirname(out["path"]) if out["path"] != "?" else here, BUILD_CONFIG_FILE)
    if os.path.isfile(config_path):
        with open(config_path) as f:
            out["build"] = json.load(f)
        out["build_path"] = config_path
    return out


def _cpu_capability() -> str:
    import torch

    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):  # torch without get_cpu_capability
        return "unknown"


def _ask_extension(query: str) -> tuple[str | None, str | None]:
    """`ops.<query>()` and None, or None and why it could not be asked, in words."""
    try:
        from . import ops

        return getattr(ops, query)(), None
    except ImportError as e:  # the extension is not built: said in its own section
        return None, f"unknown ({e.__class__.__name__})"
    except AttributeError:
        return None, "unknown (the extension predates this query: rebuild it)"
    except RuntimeError as e:
        return None, f"error: {e}"


def _direct_sums() -> str:
    """Which vector instructions the direct-sum convolutions use, in words."""
    path, why_not = _ask_extension("direct_sum_simd")
    if why_not:
        return why_not
    names = {"avx512": "AVX-512", "avx2": "AVX2", "baseline": "x86-64 baseline (SSE2) or scalar"}
    cap = os.environ.get("NETCOMPRESS_SIMD")
    why = f"NETCOMPRESS_SIMD={cap}" if cap else "the widest this CPU and build allow; NETCOMPRESS_SIMD=avx2 or " \
        "baseline caps it"
    return f"{names[path]} vectors ({why}; every choice gives the same bits)"


def _nnpack_calls() -> str:
    """How the FFT convolutions reach NNPACK, in words."""
    how, why_not = _ask_extension("nnpack_calls")
    if why_not:
        return why_not
    return {"direct": "called directly, with a workspace per thread and call shape",
            "aten": "through ATen's _nnpack_spatial_convolution (this libtorch does not export NNPACK's functions; "
                    "the same bits, one workspace per thread for every call: slower in a training step)",
            "none": "this PyTorch has no NNPACK"}.get(how, how)


# The optional packages and programs, what each enables, and how to get it.
_OPTIONAL = [
    ("plyvel", "LevelDB sources and --backend=leveldb (Caffe's default backend)", "pip install plyvel"),
    ("pydot", "draw_net and caffe.draw", "pip install pydot"),
]


def _optional() -> dict:
    """Each optional package's version, or what it would enable and how to install it; Graphviz's dot too."""
    import shutil

    out = {}
    for module, enables, how in _OPTIONAL:
        version = _version(module)
        out[module] = (f"{version} ({enables})" if version != "not installed"
                       else f"not installed: {enables} need it ({how})")
    dot = shutil.which("dot")
    out["graphviz dot"] = (f"{dot} (draw_net's image formats)" if dot else
                           "not found: draw_net writes .dot/.gv/.raw only (apt-get install graphviz for images)")
    return out


def collect_info() -> dict:
    """Everything `netcompress info` prints, as a dict."""
    import torch

    from . import __version__
    from .layers.vision import cpu_conv_algorithm, cpu_conv_layout, cpu_matmul
    from .memory import current_memory
    from .threads import current_choice, usable_cpus

    cpus = usable_cpus()
    choice = current_choice()
    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append(f"cuda:{i} {p.name} (compute {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB)")
    return {
        "versions": {"netcompress": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
                     "torch": torch.__version__, "torch CUDA": torch.version.cuda or "none (CPU build)",
                     "numpy": _version("numpy"), "protobuf": _version("google.protobuf"), "lmdb": _version("lmdb"),
                     "Pillow": _version("PIL"), "h5py": _version("h5py"), "matplotlib": _version("matplotlib")},
        "optional": _optional(),
        "extension": _extension(),
        "threads": {"torch threads": torch.get_num_threads(), "interop threads": torch.get_num_interop_threads(),
                    "CPUs this process may use": cpus, "chosen": choice.describe(),
                    "OpenMP available": torch.backends.openmp.is_available()},
        "memory": {"chosen": current_memory().describe()},
        "devices": {"CUDA available": torch.cuda.is_available(), "CUDA devices": devices,
                    "CPU capability": _cpu_capability(), "CPU convolution algorithm": cpu_conv_algorithm(),
                    "CPU direct sums": _direct_sums(),
                    "CPU NNPACK calls": _nnpack_calls(),
                    "CPU convolution layout": cpu_conv_layout(),
                    "CPU inner products": cpu_matmul()},
    }


def format_info(info: dict) -> str:
    """The report as lines of `key: value` under section titles."""
    lines = []
    lines.append("versions")
    lines += [f"  {k}: {v}" for k, v in info["versions"].items()]
    lines.append("optional")
    lines += [f"  {k}: {v}" for k, v in info["optional"].items()]
    ext = info["extension"]
    lines.append("extension netcompress._C")
    if not ext["loaded"]:
        lines.append(f"  NOT LOADED: {ext.get('error', '?')}")
        lines.append("  build it with `pip install --no-build-isolation -e .` in the checkout")
    else:
        lines.append(f"  file: {ext['path']}")
        build = ext.get("build")
        if build:
            lines.append(f"  CUDA kernels: {'compiled' if ext['cuda_kernels'] else 'not compiled'} "
                         f"({build.get('cuda_reason', '?')})")
            lines.append(f"  built against torch {build.get('torch', '?')} (CUDA {build.get('torch_cuda')}), "
                         f"Python {build.get('python', '?')}")
            lines.append(f"  sources: {' '.join(build.get('sources', []))}")
            lines.append(f"  compile flags: {build.get('flags')}, link: {build.get('link')}")
        else:
            lines.append(f"  CUDA kernels: {'compiled' if ext['cuda_kernels'] else 'not compiled'} (why is not "
                         f"recorded: the extension predates {BUILD_CONFIG_FILE}; rebuild to record it)")
    lines.append("threads")
    lines += [f"  {k}: {v}" for k, v in info["threads"].items()]
    lines.append("memory")
    lines += [f"  {k}: {v}" for k, v in info["memory"].items()]
    lines.append("devices")
    dev = info["devices"]
    lines.append(f"  CUDA available: {dev['CUDA available']}")
    lines += [f"  {d}" for d in dev["CUDA devices"]] or ["  CUDA devices: none (runs on the CPU)"]
    lines.append(f"  CPU capability: {dev['CPU capability']}")
    lines.append(f"  CPU convolution algorithm: {dev['CPU convolution algorithm']}")
    lines.append(f"  CPU direct sums: {dev['CPU direct sums']}")
    lines.append(f"  CPU NNPACK calls: {dev['CPU NNPACK calls']}")
    lines.append(f"  CPU convolution layout: {dev['CPU convolution layout']}")
    lines.append(f"  CPU inner products: {dev['CPU inner products']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netcompress info",
                                description="Versions, the extension's build (CUDA kernels or not, and why), "
                                            "threads and devices.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    info = collect_info()
    print(json.dumps(info, indent=2, default=str) if a.json else format_info(info))
    return 0
