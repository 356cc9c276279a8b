"""Command-line arguments that several commands share: the device flag and the NetState."""
from __future__ import annotations

import argparse

from .errors import NetcompressError
from .layers.base import INT_MAX
from .proto import caffe_pb2 as pb

__all__ = ["add_gpu_arg", "add_state_args", "state_from_args", "int_flag_error", "require_int_flag", "seed_arg",
           "int32_arg", "INT64_MAX"]

INT64_MAX = 2**63 - 1  # Caffe's random_seed is an int64


def add_gpu_arg(p: argparse.ArgumentParser, help_text: str = "GPU id (default: CPU)") -> None:
    p.add_argument("--gpu", "-gpu", default=None, help=help_text)


def add_state_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phase", "-phase", choices=["TRAIN", "TEST"], default=None,
                   help="network phase (default: TEST for test, TRAIN for time)")
    p.add_argument("--level", "-level", type=int32_arg("NetState's level"), default=0, help="NetState level")
    p.add_argument("--stage", "-stage", default="", help="comma-separated NetState stages")


def state_from_args(a: argparse.Namespace, default_phase: int) -> tuple[int, int, list[str]]:
    """(phase, level, stages) from `add_state_args`' arguments."""
    phase = default_phase if a.phase is None else (pb.TRAIN if a.phase == "TRAIN" else pb.TEST)
    return phase, a.level, [s for s in a.stage.split(",") if s]


def int_flag_error(value: int, flag: str, least: int, limit: str = "Caffe's int flag") -> str | None:
    """What is wrong with an integer flag of Caffe's (`least` to INT_MAX), or None; `limit` says whose
    limit INT_MAX is."""
    if value < least:
        return f"{flag} must be at least {least}, got {value}"
    if value > INT_MAX:
        return f"{flag} takes at most {INT_MAX} ({limit}), got {value}"
    return None


def require_int_flag(value: int, flag: str, least: int, limit: str = "Caffe's int flag",
                     error: type[NetcompressError] = NetcompressError) -> None:
    """Raise `error` with `int_flag_error`'s message when there is one."""
    message = int_flag_error(value, flag, least, limit)
    if message:
        raise error(message)


def _int_arg(name: str, least: int, most: int, out_of_range: str):
    """An argparse type: an integer from `least` to `most`, else argparse's usage error with `out_of_range`
    (formatted with the value) instead of an overflow or range error deep inside."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if not least <= value <= most:
            raise argparse.ArgumentTypeError(out_of_range.format(value=value))
        return value
    parse.__name__ = name  # argparse names the type in its messages
    return parse


def seed_arg(least: int = 0):
    """`--seed`: an integer from `least` to 2^63 - 1 (the range of Caffe's int64 random_seed; numpy and torch
    take every seed in it)."""
    return _int_arg("seed", least, INT64_MAX, f"a seed is an integer from {least} to {INT64_MAX}, got {{value}}")


def int32_arg(what: str):
    """An integer that goes into a Caffe int32 field (`what`)."""
    return _int_arg("int32", -INT_MAX - 1, INT_MAX,
                    f"{what} is a 32-bit integer ({-INT_MAX - 1} to {INT_MAX}), got {{value}}")
