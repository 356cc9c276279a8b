"""Command-line arguments that several commands share: the device flag and the NetState."""
from __future__ import annotations

import argparse

from .layers.base import INT_MAX
from .proto import caffe_pb2 as pb

__all__ = ["add_gpu_arg", "add_state_args", "state_from_args", "int_flag_error"]


def add_gpu_arg(p: argparse.ArgumentParser, help_text: str = "GPU id (default: CPU)") -> None:
    p.add_argument("--gpu", "-gpu", default=None, help=help_text)


def add_state_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default=None,
                   help="network phase (default: TEST for test, TRAIN for time)")
    p.add_argument("--level", type=int, default=0, help="NetState level")
    p.add_argument("--stage", default="", help="comma-separated NetState stages")


def state_from_args(a: argparse.Namespace, default_phase: int) -> tuple[int, int, list[str]]:
    """(phase, level, stages) from `add_state_args`' arguments."""
    phase = default_phase if a.phase is None else (pb.TRAIN if a.phase == "TRAIN" else pb.TEST)
    return phase, a.level, [s for s in a.stage.split(",") if s]


def int_flag_error(value: int, flag: str, least: int) -> str | None:
    """What is wrong with an integer flag of Caffe's (`least` to INT_MAX), or None."""
    if value < least:
        return f"{flag} must be at least {least}, got {value}"
    if value > INT_MAX:
        return f"{flag} takes at most {INT_MAX} (Caffe's int flag), got {value}"
    return None
