"""Recipe options: named settings a recipe reads from its layers' context (`ctx.option(name)`),
given on the command line of `netcompress train` or as `options={...}` to `Net` and `Solver`.

A recipe registers each option once, next to the code that reads it (e.g. the DNS layers' "dns_stats"
in layers/dns.py); `netcompress train` then offers its flag, and distributed runs hand the options to
every process, without the core knowing which recipe owns them.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Mapping, Sequence

from .errors import NetcompressError

__all__ = ["RecipeOption", "register_option", "known_options", "add_option_args", "options_from_args",
           "check_options"]


@dataclasses.dataclass(frozen=True)
class RecipeOption:
    name: str                       # the key in ctx.options
    flag: str                       # the command-line flag, e.g. "--dns-stats"
    default: Any
    choices: tuple[Any, ...] | None
    help: str


_OPTIONS: dict[str, RecipeOption] = {}


def register_option(name: str, flag: str, *, default: Any, help: str,
                    choices: Sequence[Any] | None = None) -> RecipeOption:
    """Declare a recipe option (once per name; re-registering the same declaration is a no-op)."""
    opt = RecipeOption(name, flag, default, tuple(choices) if choices is not None else None, help)
    old = _OPTIONS.get(name)
    if old is not None and old != opt:
        raise NetcompressError(f"recipe option '{name}' is registered twice with different settings")
    _OPTIONS[name] = opt
    return opt


def known_options() -> dict[str, RecipeOption]:
    """Every registered option, by name (loads the layer modules, which register theirs)."""
    from .layers.base import known_layer_types

    known_layer_types()
    return dict(_OPTIONS)


def add_option_args(p: argparse.ArgumentParser) -> None:
    """Add every recipe option's flag to a command's parser."""
    for opt in known_options().values():
        p.add_argument(opt.flag, dest=f"option_{opt.name}", default=opt.default, choices=opt.choices,
                       help=opt.help)


def options_from_args(a: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(a, f"option_{name}") for name in known_options() if hasattr(a, f"option_{name}")}


def check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of `options`, refusing unknown names and values outside an option's choices."""
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of recipe option names to values, got {type(options).__name__}")
    out = dict(options or {})
    known = known_options()
    for name, value in out.items():
        opt = known.get(name)
        if opt is None:
            raise NetcompressError(f"unknown recipe option '{name}' (known: {', '.join(sorted(known)) or 'none'})")
        if opt.choices is not None and value not in opt.choices:
            raise NetcompressError(f"recipe option '{name}' ({opt.flag}) must be one of "
                                   f"{', '.join(map(str, opt.choices))}, got {value!r}")
    return out
