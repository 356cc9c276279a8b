"""Drawing a net's graph, as pycaffe's `caffe.draw` and Caffe's python/draw_net.py do (through pydot).

`netcompress draw_net NET.prototxt OUT.png [--rankdir LR] [--phase TRAIN|TEST|ALL] [--display_lrm]` draws
the layers as boxes (named, typed, convolutions and poolings with kernel, stride and pad; coloured by type;
in-place layers green) and the blobs as grey octagons, with edges labelled by a layer's output count or a
Data layer's batch size, in Caffe's styles. `pydot` is an optional dependency (`pip install pydot`, or the
`draw` extra); image formats also need Graphviz's `dot` program, while `.dot`, `.gv` and `.raw` files hold the
graph's DOT text and need nothing else. Unlike Caffe's script, the prototxt is read with netcompress's reader
(legacy V1 nets are upgraded first) and `--phase` applies Caffe's full NetStateRule (phase, level, stages
as a net of that phase sees them).
"""
from __future__ import annotations

import argparse
import os
import shutil
from typing import Sequence

from .. import io as ncio
from ..errors import NetcompressError
from ..proto import caffe_pb2 as pb
from ._common import ToolError, refuse_overwrite, run_tool

__all__ = ["get_pydot_graph", "draw_net", "draw_net_to_file", "main", "TEXT_FORMATS"]

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
_TYPE_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                "InnerProduct": "#CC33FF"}
_LEARNING = ("Convolution", "Deconvolution", "InnerProduct")
TEXT_FORMATS = ("dot", "gv", "raw")


def _pydot():
    try:
        import pydot
    except ImportError as e:
        raise ToolError("drawing a net needs the 'pydot' package: pip install pydot (or pip install "
                        "'netcompress[draw]')") from e
    return pydot


def get_edge_label(layer: pb.LayerParameter) -> str:
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer: pb.LayerParameter) -> tuple[float, float]:
    """(weights, bias) learning rate multipliers of a Convolution, Deconvolution or InnerProduct layer."""
    if layer.type not in _LEARNING:
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    mults = [p.lr_mult for p in layer.param]
    if len(mults) > 2:  # a net error (Caffe: "Too many params specified for layer"), not a misuse of this function
        raise ToolError(f"layer '{layer.name}' ({layer.type}) has {len(mults)} param specs; it has at most 2 "
                        "blobs (weights and bias) to give them to")
    return tuple(mults + [1.0] * (2 - len(mults)))  # type: ignore[return-value]


def _dot_text(text: str) -> str:
    """`text` inside a double-quoted DOT string: a name holding `"` or `\\` broke the graph (Caffe's script too:
    a blob named `co"nv1` drew stray nodes, a layer so named made Graphviz fail)."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def get_layer_label(layer: pb.LayerParameter, rankdir: str, display_lrm: bool = False) -> str:
    """The node's label: name, (type), the window of a convolution or pooling, the lr multipliers."""
    sep = " " if rankdir in ("TB", "BT") else r"\n"  # vertical graphs have room across, horizontal ones down
    if layer.type == "Pooling":
        kind = pb.PoolingParameter.PoolMethod.Name(layer.pooling_param.pool)
        parts = [_dot_text(layer.name), f"({_dot_text(layer.type)} {kind})"]
    else:
        parts = [_dot_text(layer.name), f"({_dot_text(layer.type)})"]
    if layer.type == "Pooling":
        pp = layer.pooling_param
        kernel, stride, pad = pp.kernel_size, pp.stride, pp.pad
    elif layer.type in ("Convolution", "Deconvolution"):
        cp = layer.convolution_param
        kernel = cp.kernel_size[0] if len(cp.kernel_size) else 1
        stride = cp.stride[0] if len(cp.stride) else 1
        pad = cp.pad[0] if len(cp.pad) else 0
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        parts.append(sep.join([f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]))
    if display_lrm and layer.type in _LEARNING:
        w, b = get_layer_lr_mult(layer)
        if w or b:
            parts.append(f"lr mult: {w:.1f}, {b:.1f}")
    return '"' + sep.join(parts) + '"'  # quoted: a colon would not parse otherwise


def _layers_of(net: pb.NetParameter, phase: int | None) -> list[pb.LayerParameter]:
    if phase is None:
        return list(net.layer)
    from ..net import filter_net

    try:
        return list(filter_net(net, pb.NetState(phase=phase), verbose=False).layer)
    except NetcompressError as e:
        raise ToolError(str(e)) from None


def get_pydot_graph(caffe_net: pb.NetParameter, rankdir: str, label_edges: bool = True, phase: int | None = None,
                    display_lrm: bool = False):
    """A pydot graph of `caffe_net` (all layers, or those of `phase`)."""
    pydot = _pydot()
    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    nodes: dict[str, object] = {}
    edges: list[tuple[str, str, str]] = []
    for layer in _layers_of(caffe_net, phase):
        label = get_layer_label(layer, rankdir, display_lrm)
        key = f"{layer.name}_{layer.type}"
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        style = NEURON_LAYER_STYLE if in_place else dict(LAYER_STYLE_DEFAULT,
                                                         fillcolor=_TYPE_COLORS.get(layer.type, "#6495ED"))
        nodes[key] = pydot.Node(label, **style)
        for b in layer.bottom:
            nodes[b + "_blob"] = pydot.Node(_blob_id(b), **BLOB_STYLE)
            edges.append((b + "_blob", key, '""'))
        for t in layer.top:
            nodes.setdefault(t + "_blob", pydot.Node(_blob_id(t), **BLOB_STYLE))
            edges.append((key, t + "_blob", get_edge_label(layer) if label_edges else '""'))
    for node in nodes.values():
        graph.add_node(node)
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(nodes[src], nodes[dst], label=label))
    return graph


def _blob_id(name: str) -> str:
    """A blob node's DOT id: the name as it is where it needs no quotes (what Caffe's script writes), else quoted
    and escaped."""
    return name if name.isidentifier() else '"' + _dot_text(name) + '"'


def draw_net(caffe_net: pb.NetParameter, rankdir: str, ext: str = "png", phase: int | None = None,
             display_lrm: bool = False) -> bytes:
    """The drawing of `caffe_net` in format `ext` (its DOT text for dot, gv and raw; else Graphviz's output)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext.lower() in TEXT_FORMATS:
        return graph.to_string().encode()
    if shutil.which("dot") is None:
        raise ToolError(f"drawing a .{ext} file needs Graphviz's 'dot' program (e.g. apt-get install graphviz); "
                        f"a .dot file ({', '.join('.' + f for f in TEXT_FORMATS)}) needs only pydot")
    try:
        return graph.create(format=ext)
    except Exception as e:  # pydot reports Graphviz's failure (an unknown format, ...) in several ways
        raise ToolError(f"Graphviz could not draw a .{ext} file: {e}") from None


def draw_net_to_file(caffe_net: pb.NetParameter, filename: str, rankdir: str = "LR", phase: int | None = None,
                     display_lrm: bool = False) -> None:
    """Draw `caffe_net` into `filename`, in the format its extension names (written atomically)."""
    filename = os.fspath(filename)
    ext = os.path.splitext(filename)[1][1:]
    if not ext:
        raise ToolError(f"{filename}: no extension to take the image format from (e.g. .png, .svg, .dot)")
    ncio.atomic_write(filename, draw_net(caffe_net, rankdir, ext, phase, display_lrm))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netcompress draw_net", description=(
        "Draw a graph of the net architecture (Caffe's python/draw_net.py): layers as boxes, blobs as "
        "octagons. Image formats need Graphviz's dot; .dot/.gv/.raw files hold the DOT text."))
    p.add_argument("input_net_proto_file", help="the net prototxt")
    p.add_argument("output_image_file", help="the drawing; its extension is the format (png, svg, pdf, dot, ...)")
    p.add_argument("--rankdir", default="LR", help="TB (top-bottom), LR (left-right, default), BT or RL")
    p.add_argument("--phase", default="ALL", choices=["TRAIN", "TEST", "ALL"],
                   help="the phase whose layers are drawn (default ALL: every layer)")
    p.add_argument("--display_lrm", action="store_true",
                   help="show the non-zero learning rate multipliers of Convolution, Deconvolution and "
                        "InnerProduct layers")

    def body(a: argparse.Namespace) -> int:
        net = ncio.read_net(a.input_net_proto_file)
        refuse_overwrite(a.output_image_file, writes="the drawing", input_net_proto_file=a.input_net_proto_file)
        print(f"Drawing net to {a.output_image_file}")
        phase = {"TRAIN": pb.TRAIN, "TEST": pb.TEST}.get(a.phase)
        try:
            draw_net_to_file(net, a.output_image_file, a.rankdir, phase, a.display_lrm)
        except ToolError as e:  # a layer's error gets the file it is in
            raise ToolError(f"{a.input_net_proto_file}: {e}" if str(e).startswith("layer '") else str(e)) from None
        return 0

    return run_tool(p, None if argv is None else list(argv), body)
