"""A net's computation at a glance, as Caffe's tools/extra/summarize.py prints it (that script is Python 2 only).

`netcompress summarize NET.prototxt [-w 30] [--phase TRAIN|TEST|ALL] [--color auto|always|never]` prints one
row a layer: name, type (a Python layer's module.class), its param specs (`name`, `xLR` for an lr_mult other
than 1, `DxD` for a decay_mult other than 1), bottoms -> tops (a loss weight as `W * top`) and, for a
convolution, `kernel[/stride][+pad] outputs[/group]`, for a pooling `kernel[/stride][+pad]`. Each blob has a
colour, so a bottom shows which top it reads; a bottom no earlier layer writes is on red, and a top no later
layer reads (an output of the net) is bold and underlined. Unlike Caffe's script: the colours are written only
to a terminal (or with --color always), the net is read with netcompress's reader (legacy V1 nets are upgraded
first), --phase keeps the layers of one phase (Caffe's NetStateRule), a rectangular convolution or pooling
shows its `HxW` window, a global pooling `global`, and multipliers and loss weights print as `%g` (`x2`, not
`x2.0`).
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Sequence

from .. import io as ncio
from ..errors import NetcompressError
from ..proto import caffe_pb2 as pb
from ._common import ToolError, run_tool

__all__ = ["summarize_net", "format_table", "main"]

# ANSI colours for blobs (used cyclically), and the one for a bottom nothing wrote: as Caffe's script.
COLORS = ["92", "93", "94", "95", "97", "96", "42", "43;30", "100", "444", "103;30", "107;30"]
DISCONNECTED_COLOR = "41"
_ANSI = re.compile(r"\033\[[\d;]+m")


def _paint(text: str, code: str, color: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if color else text


def _format_param(spec: pb.ParamSpec) -> str:
    out = [spec.name] if spec.name else []
    if spec.lr_mult != 1:
        out.append(f"x{spec.lr_mult:g}")
    if spec.decay_mult != 1:
        out.append(f"Dx{spec.decay_mult:g}")
    return " ".join(out)


def _window(kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int]) -> str:
    def one(values: Sequence[int]) -> str:
        return "x".join(str(v) for v in values)
    text = one(kernel)
    if any(s != 1 for s in stride):
        text += "/" + one(stride)
    if any(p != 0 for p in pad):
        text += "+" + one(pad)
    return text


def _conv_args(cp: pb.ConvolutionParameter) -> str:
    if cp.HasField("kernel_h") or cp.HasField("kernel_w"):
        kernel = [cp.kernel_h, cp.kernel_w]
        stride = [cp.stride_h or 1, cp.stride_w or 1] if cp.HasField("stride_h") or cp.HasField("stride_w") \
            else list(cp.stride) or [1]
        pad = [cp.pad_h, cp.pad_w] if cp.HasField("pad_h") or cp.HasField("pad_w") else list(cp.pad) or [0]
    elif len(cp.kernel_size):
        kernel, stride, pad = list(cp.kernel_size), list(cp.stride) or [1], list(cp.pad) or [0]
    else:
        return str(cp.num_output)
    text = f"{_window(kernel, stride, pad)} {cp.num_output}"
    return text + (f"/{cp.group}" if cp.group != 1 else "")


def _pool_args(pp: pb.PoolingParameter) -> str:
    if pp.global_pooling:
        return "global"
    kernel = [pp.kernel_h, pp.kernel_w] if pp.HasField("kernel_h") else [pp.kernel_size]
    stride = [pp.stride_h, pp.stride_w] if pp.HasField("stride_h") else [pp.stride]
    pad = [pp.pad_h, pp.pad_w] if pp.HasField("pad_h") else [pp.pad]
    return _window(kernel, stride, pad)


def summarize_net(net: pb.NetParameter, color: bool = False) -> list[list[str]]:
    """One row a layer: name, type, params, bottoms, '->', tops, arguments (ANSI-coloured with `color`)."""
    disconnected: set[str] = set()
    for layer in net.layer:
        disconnected |= set(layer.top)
        disconnected -= set(layer.bottom)
    colors: dict[str, str] = {}
    table = []
    for layer in net.layer:
        bottoms = ", ".join(_paint(b, colors.get(b, DISCONNECTED_COLOR), color) for b in layer.bottom)
        tops = []
        for i, top in enumerate(layer.top):
            code = colors.setdefault(top, COLORS[len(colors) % len(COLORS)])
            text = top
            if i < len(layer.loss_weight):
                text = f"{layer.loss_weight[i]:g} * {text}"
            if top in disconnected and color:
                text = "\033[1;4m" + text
            tops.append(_paint(text, code, color))
        if layer.type == "Python":
            kind = f"{layer.python_param.module}.{layer.python_param.layer}"
        else:
            kind = layer.type
        params = [_format_param(p) for p in layer.param]
        param_text = f"({', '.join(params)})" if any(params) else ""
        if layer.type == "Pooling":
            args = _pool_args(layer.pooling_param)
        elif layer.HasField("convolution_param"):  # Convolution, Deconvolution, the DNS/INQ/masked kinds
            args = _conv_args(layer.convolution_param)
        else:
            args = ""
        table.append([layer.name, kind, param_text, bottoms, "->", ", ".join(tops), args])
    return table


def _printed_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def format_table(table: Sequence[Sequence[str]], max_width: int = 30) -> str:
    """Columns as narrow as their widest cell (colour codes not counted) but at most `max_width`; a longer cell
    overflows into the next column, which then starts later (Caffe's print_table)."""
    if not table:
        return ""
    widths = [min(max(_printed_len(row[j]) + 1 for row in table), max_width) for j in range(len(table[0]))]
    lines = []
    for row in table:
        text, right = "", 0
        for cell, width in zip(row, widths):
            right += width
            text += cell + " "
            text += " " * max(right - _printed_len(text), 0)
        lines.append(text.rstrip())
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netcompress summarize", description=(
        "Print a concise summary of a net's computation, a row a layer (Caffe's tools/extra/summarize.py)."))
    p.add_argument("filename", help="net prototxt file to summarize")
    p.add_argument("-w", "--max-width", type=int, default=30, help="maximum field width (default 30)")
    p.add_argument("--phase", default="ALL", choices=["TRAIN", "TEST", "ALL"],
                   help="the phase whose layers are listed (default ALL: every layer, as Caffe's script)")
    p.add_argument("--color", default="auto", choices=["auto", "always", "never"],
                   help="colour the blobs with ANSI codes (default: when writing to a terminal)")

    def body(a: argparse.Namespace) -> int:
        if a.max_width < 1:
            raise ToolError(f"--max-width must be at least 1, got {a.max_width}")
        net = ncio.read_net(a.filename)
        phase = {"TRAIN": pb.TRAIN, "TEST": pb.TEST}.get(a.phase)
        if phase is not None:
            from ..net import filter_net
            try:
                net = filter_net(net, pb.NetState(phase=phase), verbose=False)
            except NetcompressError as e:
                raise ToolError(f"{a.filename}: {e}") from None
        color = a.color == "always" or (a.color == "auto" and sys.stdout.isatty())
        sys.stdout.write(format_table(summarize_net(net, color), a.max_width))
        return 0

    return run_tool(p, None if argv is None else list(argv), body)
