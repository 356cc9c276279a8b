"""Which device a command runs on: Caffe's `-gpu` flag and a solver's `solver_mode`/`device_id`.

One parser for every command (`train`, `test`, `time`, `pipeline`, the recipe scripts):
`parse_gpu_flag` reads `--gpu` ("" or None: the CPU; "0"; "0,1"; "all") into device ids, and
`device_for` turns that, or the solver's own fields, into the first device plus the list of ids a
data-parallel run uses.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .errors import NetcompressError
from .log import get_logger
from .proto import caffe_pb2 as pb

log = get_logger("device")

__all__ = ["checked_device", "parse_gpu_flag", "device_from_gpu_flag", "device_for", "device_query_lines", "device_query_main"]


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_gpu_flag(gpu: str | None) -> list[int] | None:
    """`--gpu` as device ids: None for the CPU (no flag, "" or "cpu"), every device for "all",
    or the listed ids, each checked against the devices that exist."""
    if gpu is None or gpu.strip() == "" or gpu.strip().lower() == "cpu":
        return None
    n = _cuda_count()
    if n == 0:
        raise NetcompressError(f"--gpu {gpu}: no CUDA device is available (this torch build has CUDA: "
                               f"{torch.version.cuda is not None}); leave --gpu out to run on the CPU")
    if gpu.strip().lower() == "all":
        return list(range(n))
    try:
        ids = [int(g) for g in gpu.split(",") if g.strip()]
    except ValueError:
        raise NetcompressError(f"--gpu {gpu}: expected 'all' or comma-separated device ids such as 0,1") from None
    bad = [i for i in ids if not 0 <= i < n]
    if not ids or bad or len(set(ids)) != len(ids):
        what = (f"device {bad[0]} does not exist ({n} CUDA device(s): 0..{n - 1})" if bad
                else "each device may be listed once" if ids else "no device id given")
        raise NetcompressError(f"--gpu {gpu}: {what}")
    return ids


def checked_device(device, who: str) -> torch.device:
    """`device` (a torch.device or its string) for the Python API (`Net(device=...)`, `Solver(device=...)`),
    as a ValueError naming `who` where torch cannot parse it or where it names a CUDA device that does not exist."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{who}: device {device!r} is not a device ({e}); e.g. 'cpu' or 'cuda:0'") from None
    if dev.type == "cuda" and (dev.index or 0) >= _cuda_count():
        raise ValueError(f"{who}: device {device!r}: {_cuda_count()} CUDA device(s) available (this torch build has "
                         f"CUDA: {torch.version.cuda is not None})")
    return dev


def device_from_gpu_flag(gpu: str | None) -> torch.device:
    """The one device a single-process command uses: the first of `--gpu`, or the CPU (logged as
    Caffe logs it)."""
    ids = parse_gpu_flag(gpu)
    if ids is None:
        log.info("Use CPU.")
        return torch.device("cpu")
    log.info("Use GPU with device ID %d", ids[0])
    return torch.device("cuda", ids[0])


def device_for(gpu: str | None, sp: pb.SolverParameter | None = None) -> tuple[torch.device, list[int] | None]:
    """Caffe's rule for `train`: `--gpu` wins; otherwise the solver's solver_mode/device_id (GPU
    mode without a CUDA device falls back to the CPU, with a log line). Returns the first device and
    the GPU ids (None on the CPU)."""
    if gpu:
        ids = parse_gpu_flag(gpu)
        if ids is not None:
            log.info("Use GPU with device ID %d", ids[0])
            return torch.device("cuda", ids[0]), ids
    if sp is not None and sp.solver_mode == pb.SolverParameter.GPU:
        if torch.cuda.is_available():
            return device_from_gpu_flag(str(sp.device_id)), [sp.device_id]
        log.info("solver_mode is GPU but no CUDA device is available: using the CPU")
    return device_from_gpu_flag(None), None


# Caffe::DeviceQuery's lines that torch's device properties can fill: (Caffe's label, torch's property name; a
# property this torch lacks is left out). Labels are padded to Caffe's column.
_QUERY_FIELDS = [
    ("Major revision number:", "major"),
    ("Minor revision number:", "minor"),
    ("Name:", "name"),
    ("Total global memory:", "total_memory"),
    ("Total shared memory per block:", "shared_memory_per_block"),
    ("Total registers per block:", "regs_per_block"),
    ("Warp size:", "warp_size"),
    ("Maximum threads per block:", "max_threads_per_block"),
    ("Number of multiprocessors:", "multi_processor_count"),
]


def device_query_lines(device_id: int, props) -> list[str]:
    """Caffe::DeviceQuery's lines for one device, from torch's device properties (the fields torch exposes;
    Caffe's others, e.g. the texture alignment, are not available through torch and are left out)."""
    lines = [f"{'Device id:':<31}{device_id}"]
    for label, attr in _QUERY_FIELDS:
        value = getattr(props, attr, None)
        if value is not None:
            lines.append(f"{label:<31}{value}")
    return lines


def device_query_main(argv: Sequence[str] | None = None) -> int:
    """`netcompress device_query --gpu 0[,1|all]`: Caffe's device_query verb."""
    import argparse

    p = argparse.ArgumentParser(prog="netcompress device_query",
                                description="Show the properties of GPUs (caffe device_query).")
    p.add_argument("--gpu", "-gpu", default=None, help="the GPU ids to query: 0, 0,1 or all")
    a = p.parse_args(argv)
    if not a.gpu:
        raise NetcompressError("Need a device ID to query: --gpu 0 (or a list, or all)")
    if _cuda_count() == 0:  # (parse_gpu_flag's own message tells a training run to use the CPU instead)
        raise NetcompressError(f"--gpu {a.gpu}: no CUDA device is available to query (this torch build has CUDA: "
                               f"{torch.version.cuda is not None})")
    ids = parse_gpu_flag(a.gpu)
    if ids is None:
        raise NetcompressError(f"--gpu {a.gpu}: name GPU ids to query (0, 0,1 or all)")
    log.info("Querying GPUs %s", a.gpu)
    for i in ids:
        for line in device_query_lines(i, torch.cuda.get_device_properties(i)):
            log.info("%s", line)
    return 0
