"""Shallow-Deep Network scripts (recipes-spec 2.2, 2.3, 5.5): `make_sdn_net` writes a net with
internal classifiers (ICs) and growth stages from a cell template; `sdn_early_exit` measures the
confidence early-exit cascade of a trained net.

make_sdn_net
------------
The template is a net prototxt cut into sections by marker lines (a line holding only
`# @<section>`; the markers are prototxt comments, so the file still parses as a NetParameter):

- the text before the first marker is the **stem**: the net's `name`, its data layers (which
  must produce the label blob, `--label`), and the stem layers. The stem's output is the first
  top of its last layer;
- `# @cell`: one cell, repeated once per entry of `--ics`;
- `# @dense_cell` (optional): the cell used with `--dense` for cells 2..N, whose input is the
  concatenation of the stem and all earlier cells (so it needs a projection shortcut where
  `cell` has the identity); without it `cell` is used throughout;
- `# @end`: the end layers. Its last InnerProduct is the final classifier; its top is the final
  output. The ICs copy that layer's type (InnerProduct, MaskedInnerProduct, ...), its
  `inner_product_param` (fillers, bias_term), mask fillers and `param` specs, with `--num-classes`
  outputs (default: its num_output).

Placeholders (Python `string.Template`, `$$` for a literal `$`):

- cells: `${k}` the 1-based cell number (every layer name must use it), `${bottom}` the cell's
  input blob, `${tap}` the blob an IC reads and `${top}` the cell's output blob; the cell must
  produce both `${tap}` and `${top}` (they may be the same blob). SDN and INRIA read the
  residual sum before the block's final ReLU, so write that ReLU out of place
  (`bottom: "${tap}" top: "${top}"`): an in-place layer on `${tap}` is refused;
- end: `${bottom}`, the last cell's output (with `--dense`, the concatenation of the stem and
  every cell).

Generated names: cell k's output blob is `cell<k>`, its tap `cell<k>_tap`, its dense input
`cell<k>_in` (Concat `cell<k>_concat`); the end's dense input is `end_in` (Concat `end_concat`);
IC j (the j-th cell with `--ics` 1) is MixedPooling `ic<j>_pool` (kernel = stride = S // 4 for
cell outputs of S x S, `--feature-size`; no pooling when S < 4) and `ic<j>`, of the final
classifier's type; the losses are SDNLoss `sdn_loss` (without `--growth`) or `sdn_loss_grow<K>`,
top `loss`; TEST-phase Accuracy layers `accuracy_ic<j>` and `accuracy_final`.

With `--growth`, stage K (NetState stage `grow<K>`, K = 0..M for M ICs) holds the cells after the
K-th IC's cell up to and including the (K+1)-th IC's cell, that IC, and its Accuracy layer; stage M
holds the cells after the last IC, the end layers and the final Accuracy. Stages are cumulative:
the net of stage K is built with stages grow0..growK (recipes-spec 5.3.2). Stem layers carry no
stage. Each stage has its own SDNLoss over the outputs it has (ic1..ic<K+1>, or ic1..icM and the
final output at stage M), selected by `include { stage: "grow<K>" not_stage: "grow<K+1>" }`.
A cell layer's own include rules (e.g. a phase) keep their conditions and gain the stage; a
layer with exclude rules cannot be tagged (Caffe forbids include and exclude together).
The explicit stages avoid INRIA's growth quirk (spec Q6): with `--ics 1,0,1` stage 1 holds
cells 2 and 3.

What the solver does with such a net (`netcompress.recipes.growth`): a `growth` with M epochs (one
per stage after grow0); it builds the TRAIN and TEST nets with stages grow0 at the start and
grow0..growK from the K-th growth epoch on, copying blobs by layer name; every net it builds
carries its epoch length (`LayerContext.epoch_iters`, which SDNLoss reads unless its own
`sdn_loss_param.epoch_iters` is set), and it calls `set_iteration` as for any TRAIN net. A layer's
growth block (for `snip_schedule`) is the K of the `grow<K>` in its include rules; untagged layers
(data, stem) belong to block 0.

sdn_early_exit
--------------
Runs the TEST phase of a net (its data layer provides the images and labels) for `--iterations`
batches, then replays SDN's cascade per sample (spec 2.2): exit at the first IC whose top softmax
probability is >= the threshold; a sample no IC is confident about returns the output (final
included) with the highest confidence, and is charged the ops of the last output (SDN's
accounting). Outputs are computed for all samples at once, which gives the same decisions as
SDN's batch-size-1 cascade because TEST-phase layers treat samples independently.

`--ops-per-output auto` counts, per sample, the multiply-accumulates of the Convolution,
Deconvolution and InnerProduct layers (and their DNS/INQ/masked variants; other layers count 0)
that a cascade runs to reach each output: output i costs every layer that outputs 1..i depend on,
each layer once. The last output's count is therefore the cost of the whole cascade.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import re
import string
import sys
from typing import Sequence

import numpy as np
import torch

from .. import io as ncio
from ..cliargs import require_int_flag
from ..errors import NetcompressError
from ..layers.base import INT_MAX
from ..proto import caffe_pb2 as pb
from ._common import ToolError, refuse_overwrites, require_files, run_tool

__all__ = ["SDNNet", "make_sdn_net", "sdn_net_from_template", "parse_template", "early_exit_table",
           "ops_per_output", "layer_macs", "sdn_early_exit", "make_sdn_net_main", "sdn_early_exit_main"]

SECTIONS = ("stem", "cell", "dense_cell", "end")
_MARKER = re.compile(r"^[ \t]*#[ \t]*@(\w+)[ \t]*$")
SDN_THRESHOLDS = (0.1, 0.15, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)


# ----------------------------------------------------------------------------------------------
# make_sdn_net
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Section:
    name: str
    text: str
    first_line: int  # 0-based line of the template where the section's text starts


@dataclasses.dataclass
class SDNNet:
    """What make_sdn_net wrote: the net and its structure (for printing and for tests)."""

    net: pb.NetParameter
    stages: list[dict]         # per stage: {"stage", "cells", "ic", "final"}; one entry without growth
    outputs: list[str]         # ic1..icM, final (blob names, in cascade order)
    losses: list[str]          # SDNLoss layer names, one per stage
    growth: bool


def parse_template(text: str, path: str = "<template>") -> dict[str, _Section]:
    """Cut a template into its sections (see the module docstring)."""
    sections: dict[str, _Section] = {}
    current, start, buf = "stem", 0, []
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        m = _MARKER.match(line.rstrip("\n"))
        if not m:
            buf.append(line)
            continue
        sections[current] = _Section(current, "".join(buf), start)
        current, start, buf = m.group(1), i + 1, []
        if current not in SECTIONS[1:]:
            raise ToolError(f"{path}:{i + 1}: unknown section marker '# @{current}' (sections: "
                            f"{', '.join('# @' + s for s in SECTIONS[1:])}; the text before the first "
                            "marker is the stem)")
        if current in sections:
            raise ToolError(f"{path}:{i + 1}: section '# @{current}' appears twice")
    sections[current] = _Section(current, "".join(buf), start)
    for s in ("cell", "end"):
        if s not in sections:
            raise ToolError(f"{path}: the template has no '# @{s}' section (it needs a stem, "
                            "'# @cell' and '# @end'; see `make_sdn_net --help`)")
    return sections


def _substitute(sec: _Section, path: str, values: dict[str, str]) -> str:
    try:
        return string.Template(sec.text).substitute(values)
    except KeyError as e:
        raise ToolError(f"{path}: section '{sec.name}' uses the placeholder ${{{e.args[0]}}}; it knows "
                        f"{', '.join('${' + k + '}' for k in values)}") from None
    except ValueError as e:  # a lone '$'
        raise ToolError(f"{path}: section '{sec.name}': {e} (write $$ for a literal $)") from None


def _parse_layers(sec: _Section, text: str, path: str, allow_net_fields: bool = False) -> pb.NetParameter:
    # Pad with the lines before the section so that parse errors give the template's line numbers.
    net = ncio.parse_text_proto("\n" * sec.first_line + text, pb.NetParameter(), path)
    if not allow_net_fields:
        extra = [f.name for f, _ in net.ListFields() if f.name != "layer"]
        if extra:
            raise ToolError(f"{path}: section '{sec.name}' may hold only layers, it sets "
                            f"{', '.join(extra)} (net-level fields belong in the stem)")
    for l in net.layer:
        if not l.name:
            raise ToolError(f"{path}: a layer of type '{l.type}' in section '{sec.name}' has no name")
    return net


def _tag(layer: pb.LayerParameter, stage: str, path: str) -> None:
    """Add `stage` to the layer's include rules (one new rule if it has none)."""
    if len(layer.exclude):
        raise ToolError(f"{path}: layer '{layer.name}' has exclude rules; make_sdn_net selects grown "
                        "layers with include rules and Caffe forbids both in one layer. Write its "
                        "condition as an include rule")
    if not len(layer.include):
        layer.include.add()
    for rule in layer.include:
        rule.stage.append(stage)


def _tops(net: pb.NetParameter) -> set[str]:
    return {t for l in net.layer for t in l.top}


def _check_cell(cell: pb.NetParameter, k: int, sec: str, bottom: str, tap: str, top: str, path: str) -> None:
    tops = _tops(cell)
    for blob, what in ((tap, "${tap}"), (top, "${top}")):
        if blob not in tops:
            raise ToolError(f"{path}: the {sec} section produces no {what} blob (no layer has "
                            f"top: \"{what}\"); cell {k} would have no {'IC input' if what == '${tap}' else 'output'}")
    if not any(bottom in l.bottom for l in cell.layer):
        raise ToolError(f"{path}: no layer of the {sec} section reads ${{bottom}}, the cell's input")
    if tap != top:
        produced = False
        for l in cell.layer:
            if produced and tap in l.top and tap in l.bottom:
                raise ToolError(f"{path}: layer '{l.name}' of the {sec} section writes ${{tap}} in place, so "
                                "the IC would read its result; give that layer another top (e.g. "
                                "the cell's final ReLU: bottom: \"${tap}\" top: \"${top}\")")
            produced = produced or tap in l.top


def _ic_layers(j: int, tap: str, size: int, classifier: pb.LayerParameter, num_classes: int) -> list[pb.LayerParameter]:
    layers = []
    bottom = tap
    if size >= 4:
        r = size // 4
        pool = pb.LayerParameter(name=f"ic{j}_pool", type="MixedPooling", bottom=[tap], top=[f"ic{j}_pool"])
        pool.mixed_pooling_param.kernel_size = r
        pool.mixed_pooling_param.stride = r
        layers.append(pool)
        bottom = pool.top[0]
    # The IC is the final classifier's type (InnerProduct, or e.g. MaskedInnerProduct with its mask
    # fillers, so that a pruning schedule prunes the ICs too, as INRIA does).
    ip = pb.LayerParameter(name=f"ic{j}", type=classifier.type, bottom=[bottom], top=[f"ic{j}"])
    ip.param.extend(classifier.param)
    ip.inner_product_param.CopyFrom(classifier.inner_product_param)
    ip.inner_product_param.num_output = num_classes
    for field in ("dns_inner_product_param", "weight_quant_param"):
        if classifier.HasField(field):
            getattr(ip, field).CopyFrom(getattr(classifier, field))
    layers.append(ip)
    return layers


def _parse_ints(text: str, what: str, allowed: set[int] | None = None) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise ToolError(f"{what} must be a comma-separated list of integers, got '{text}'") from None
    if not vals:
        raise ToolError(f"{what} is empty")
    if allowed is not None and any(v not in allowed for v in vals):
        raise ToolError(f"{what} takes only {' or '.join(map(str, sorted(allowed)))}, got '{text}'")
    return vals


def sdn_net_from_template(text: str, ics: Sequence[int], *, dense: bool = False, growth: bool = False,
                          label: str = "label", feature_size: Sequence[int] = (32,),
                          num_classes: int | None = None, policy: str | None = None,
                          ramp_epochs: int | None = None, path: str = "<template>") -> SDNNet:
    """Build the SDN net of `text` (a template, see the module docstring) for the IC placement
    `ics` (one 0/1 per cell)."""
    ics = [int(v) for v in ics]
    if not ics or any(v not in (0, 1) for v in ics):
        raise ToolError(f"--ics must list one 0 or 1 per cell, got {ics}")
    n_cells = len(ics)
    sizes = list(feature_size)
    if len(sizes) == 1:
        sizes = sizes * n_cells
    if len(sizes) != n_cells or not all(0 < s <= INT_MAX for s in sizes):
        raise ToolError(f"--feature-size takes one size (1..{INT_MAX}) or one per cell ({n_cells}), "
                        f"got {list(feature_size)}")
    if ramp_epochs is not None:
        require_int_flag(ramp_epochs, "--ramp-epochs", 1, "sdn_loss_param's int", error=ToolError)
    secs = parse_template(text, path)
    stem = _parse_layers(secs["stem"], secs["stem"].text, path, allow_net_fields=True)
    if not len(stem.layer) or not len(stem.layer[-1].top):
        raise ToolError(f"{path}: the stem (the text before '# @cell') needs layers; its last layer's "
                        "first top is the stem's output")
    stem_out = stem.layer[-1].top[0]
    if label not in _tops(stem):
        raise ToolError(f"{path}: no stem layer produces the label blob '{label}' (set --label to the "
                        "data layer's label top)")
    if dense and "dense_cell" in secs:
        dense_sec = secs["dense_cell"]
    else:
        dense_sec = secs["cell"]

    # The end section, with its final classifier.
    end_bottom = "end_in" if dense else f"cell{n_cells}"
    end = _parse_layers(secs["end"], _substitute(secs["end"], path, {"bottom": end_bottom}), path)
    classifiers = [l for l in end.layer if l.HasField("inner_product_param")]
    if not classifiers:
        raise ToolError(f"{path}: the end section has no InnerProduct: its last InnerProduct is the final "
                        "classifier, whose inner_product_param the ICs copy")
    classifier = classifiers[-1]
    if not len(classifier.top):
        raise ToolError(f"{path}: the final classifier '{classifier.name}' has no top")
    final = classifier.top[0]
    if num_classes is None:
        num_classes = int(classifier.inner_product_param.num_output)
    require_int_flag(num_classes, "--num-classes", 1, "a Caffe blob's size limit", error=ToolError)
    for l in end.layer:
        if l.type.endswith("Loss"):
            raise ToolError(f"{path}: the end section holds the loss layer '{l.name}'; make_sdn_net writes "
                            "the losses (SDNLoss over every output), remove it")

    out = pb.NetParameter()
    out.CopyFrom(stem)
    n_ics = sum(ics)
    stage_name = (lambda k: f"grow{k}") if growth else (lambda k: None)
    stages: list[dict] = [{"stage": stage_name(k), "cells": [], "ic": None, "final": None}
                          for k in range(n_ics + 1 if growth else 1)]
    outputs: list[str] = []
    prev = stem_out
    ic_seen = 0
    names_seen = {l.name for l in out.layer}

    def add(layer: pb.LayerParameter, stage: str | None) -> None:
        if layer.name in names_seen:
            raise ToolError(f"{path}: two layers are named '{layer.name}' in the generated net (cell layer "
                            "names must contain ${k}; generated names: see `make_sdn_net --help`)")
        names_seen.add(layer.name)
        if stage is not None:
            _tag(layer, stage, path)
        out.layer.add().CopyFrom(layer)

    for k in range(1, n_cells + 1):
        stage_idx = ic_seen if growth else 0
        stage = stage_name(stage_idx)
        stages[stage_idx]["cells"].append(k)
        use_dense = dense and k > 1
        sec = dense_sec if use_dense else secs["cell"]
        if use_dense:
            concat = pb.LayerParameter(name=f"cell{k}_concat", type="Concat",
                                       bottom=[stem_out] + [f"cell{i}" for i in range(1, k)], top=[f"cell{k}_in"])
            add(concat, stage)
            bottom = concat.top[0]
        else:
            bottom = prev
        tap, top = f"cell{k}_tap", f"cell{k}"
        cell = _parse_layers(sec, _substitute(sec, path, {"k": str(k), "bottom": bottom, "tap": tap, "top": top}), path)
        _check_cell(cell, k, "'" + sec.name + "'", bottom, tap, top, path)
        for l in cell.layer:
            add(l, stage)
        if ics[k - 1]:
            ic_seen += 1
            for l in _ic_layers(ic_seen, tap, sizes[k - 1], classifier, num_classes):
                add(l, stage)
            outputs.append(f"ic{ic_seen}")
            stages[stage_idx]["ic"] = f"ic{ic_seen}"
        prev = top
    last = stage_name(n_ics if growth else 0)
    if dense:
        add(pb.LayerParameter(name="end_concat", type="Concat",
                              bottom=[stem_out] + [f"cell{i}" for i in range(1, n_cells + 1)], top=["end_in"]), last)
    for l in end.layer:
        add(l, last)
    outputs.append(final)
    stages[-1]["final"] = final

    # Losses: one SDNLoss per stage over the outputs that stage has.
    sdn_param = pb.SDNLossParameter()
    if policy is not None:
        sdn_param.policy = pb.SDNLossParameter.Policy.Value(policy)
    if ramp_epochs is not None:
        sdn_param.ramp_epochs = ramp_epochs
    losses = []
    for k in range(len(stages)):
        have = outputs[:k + 1] if k < len(stages) - 1 else outputs
        loss = pb.LayerParameter(name=f"sdn_loss_grow{k}" if growth else "sdn_loss", type="SDNLoss",
                                 bottom=have + [label], top=["loss"])
        if sdn_param.ListFields():
            loss.sdn_loss_param.CopyFrom(sdn_param)
        if growth:
            rule = loss.include.add()
            rule.stage.append(f"grow{k}")
            if k < len(stages) - 1:
                rule.not_stage.append(f"grow{k + 1}")
        add(loss, None)
        losses.append(loss.name)
    # Per-output accuracy in the TEST net, present from the stage that grows the output.
    for k, st in enumerate(stages):
        for o in ([st["ic"]] if st["ic"] else []) + ([st["final"]] if st["final"] else []):
            acc = pb.LayerParameter(name=f"accuracy_{'final' if o == final else o}", type="Accuracy",
                                    bottom=[o, label], top=[f"accuracy_{'final' if o == final else o}"])
            rule = acc.include.add()
            rule.phase = pb.TEST
            if growth:
                rule.stage.append(f"grow{k}")
            add(acc, None)
    return SDNNet(out, stages, outputs, losses, growth)


def make_sdn_net(template: str, out: str, ics: Sequence[int], **kw) -> SDNNet:
    """Read `template`, build the SDN net (see `sdn_net_from_template`) and write it to `out`."""
    require_files(template)
    refuse_overwrites((out,), template=template)
    text = ncio.read_prototxt_text(template, "cells prototxt template")
    sdn = sdn_net_from_template(text, ics, path=template, **kw)
    ncio.write_text_proto(out, sdn.net)
    return sdn


def _cells_str(cells: list[int]) -> str:
    if not cells:
        return "no cells"
    if len(cells) == 1:
        return f"cell {cells[0]}"
    return f"cells {cells[0]}-{cells[-1]}"


def describe(sdn: SDNNet) -> list[str]:
    lines = []
    for st in sdn.stages:
        what = [_cells_str(st["cells"])]
        if st["ic"]:
            what.append(f"IC {st['ic']}")
        if st["final"]:
            what.append(f"the final classifier ({st['final']})")
        lines.append(f"{'stage ' + st['stage'] if st['stage'] else 'net'}: {', '.join(what)}")
    lines.append(f"outputs (cascade order): {','.join(sdn.outputs)}")
    lines.append(f"losses: {', '.join(sdn.losses)} (SDNLoss)")
    if sdn.growth:
        k = len(sdn.stages) - 1
        epochs = " ".join("epoch: E%d" % i for i in range(1, k + 1))
        lines.append(f"train it with stages grow0..grow{k}: a solver `growth {{ {epochs} }}` "
                     f"({k} growth epoch{'s' if k != 1 else ''}) and `epoch_iters` for SDNLoss's ramp")
    return lines


_TEMPLATE_HELP = """\
template layout (full description: `python -c "import netcompress.tools.sdn as m; help(m)"`):

  name: "sdn"                            # the stem: net fields, data layers, stem layers
  layer { name: "data" type: "Data" top: "data" top: "label" ... }
  layer { name: "conv0" ... top: "conv0" }   # the stem's output: its last layer's first top
  # @cell
  layer { name: "cell${k}_conv1" type: "Convolution" bottom: "${bottom}" top: "cell${k}_conv1" ... }
  ...
  layer { name: "cell${k}_sum" type: "Eltwise" bottom: "cell${k}_bn2" bottom: "${bottom}" top: "${tap}" }
  layer { name: "cell${k}_relu" type: "ReLU" bottom: "${tap}" top: "${top}" }
  # @dense_cell                           # optional: --dense cells 2..N (input = concat)
  ...
  # @end
  layer { name: "pool" type: "Pooling" bottom: "${bottom}" top: "pool"
          pooling_param { pool: AVE kernel_size: 8 stride: 8 } }
  layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 10 ... } }

ICs read ${tap} (MixedPooling kernel = stride = S//4, then a classifier like the final one, of its type).
With --growth, stage growK holds the cells up to the (K+1)-th IC; the last stage the remaining cells
and the end layers; one SDNLoss per stage (include { stage: "growK" not_stage: "growK+1" }).
"""


def make_sdn_net_main(argv: Sequence[str] | None = None) -> int:
    """`make_sdn_net <cells.prototxt-template> --ics 0,0,1,... [--dense] [--growth] --out train_val.prototxt`"""
    p = argparse.ArgumentParser(
        prog="netcompress make_sdn_net", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a Shallow-Deep net: cells from a template, internal classifiers "
                    "(MixedPooling + InnerProduct) after the cells --ics marks, SDNLoss, and with "
                    "--growth the NetState stages grow0..growM that the solver's `growth` adds.",
        epilog=_TEMPLATE_HELP)
    p.add_argument("template", help="the cells prototxt template (sections: stem, # @cell, [# @dense_cell], # @end)")
    p.add_argument("--ics", required=True,
                   help="one 0/1 per cell: 1 puts an IC after that cell, e.g. 0,0,1,0,0,1,0,1,0")
    p.add_argument("--dense", action="store_true",
                   help="cell k reads the concatenation of the stem and cells 1..k-1; the end reads all of them")
    p.add_argument("--growth", action="store_true", help="tag the cells with growth stages grow0..growM")
    p.add_argument("--out", required=True, help="the net prototxt to write")
    p.add_argument("--label", default="label", help="the label blob of the data layers (default: label)")
    p.add_argument("--feature-size", default="32",
                   help="spatial size S of the cell outputs the ICs read (one value, or one per cell); "
                        "the IC pools with kernel = stride = S//4 (default 32: CIFAR cells without down-sampling)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="IC outputs (default: num_output of the end section's last InnerProduct)")
    p.add_argument("--policy", choices=["SDN", "INRIA"], default=None,
                   help="sdn_loss_param.policy of the losses (default: the layer's, SDN)")
    p.add_argument("--ramp-epochs", type=int, default=None,
                   help="sdn_loss_param.ramp_epochs (default: the layer's, 100)")

    def run(a: argparse.Namespace) -> int:
        ics = _parse_ints(a.ics, "--ics", {0, 1})
        sizes = _parse_ints(a.feature_size, "--feature-size")
        sdn = make_sdn_net(a.template, a.out, ics, dense=a.dense, growth=a.growth, label=a.label,
                           feature_size=sizes, num_classes=a.num_classes, policy=a.policy,
                           ramp_epochs=a.ramp_epochs)
        for line in describe(sdn):
            print(line)
        print(f"wrote {a.out}")
        return 0
    return run_tool(p, argv, run)


# ----------------------------------------------------------------------------------------------
# sdn_early_exit
# ----------------------------------------------------------------------------------------------

def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def early_exit_table(logits: Sequence[np.ndarray], labels: np.ndarray, thresholds: Sequence[float],
                     ops: Sequence[float]) -> list[dict]:
    """SDN's confidence cascade (spec 2.2) for each threshold.

    logits: one (N, C) array per output, in cascade order (ICs, then the final output).
    labels: (N,) integer labels. ops: per-output cost (cumulative, see `ops_per_output`).
    Returns per threshold: accuracy, `early` (exits at each IC), `late` (samples no IC was
    confident about), `late_answered` (which output answered them: the most confident one),
    `average_ops` = (sum_i early_i * ops_i + late * ops_last) / N.
    """
    n_out = len(logits)
    if n_out < 1 or len(ops) != n_out:
        raise ToolError(f"{n_out} outputs need {n_out} ops values, got {len(ops)}")
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    N = labels.shape[0]
    probs = [_softmax(np.asarray(x, dtype=np.float64).reshape(N, -1)) for x in logits]
    conf = np.stack([p.max(axis=1) for p in probs], axis=1)      # (N, n_out)
    pred = np.stack([p.argmax(axis=1) for p in probs], axis=1)   # (N, n_out)
    rows = []
    for q in thresholds:
        confident = conf[:, :n_out - 1] >= q
        any_conf = confident.any(axis=1)
        # (with the final output alone there is no IC to exit at: argmax of an empty row is an error)
        first = np.where(any_conf, confident.argmax(axis=1), -1) if n_out > 1 else np.full(N, -1)
        best = conf.argmax(axis=1)  # the first of equally confident outputs, as np.argmax in SDN
        answer = np.where(any_conf, first, best)
        correct = pred[np.arange(N), answer] == labels
        early = [int(np.count_nonzero(first == i)) for i in range(n_out - 1)]
        late = int(N - sum(early))
        late_answered = [int(np.count_nonzero((~any_conf) & (best == i))) for i in range(n_out)]
        total_ops = sum(c * float(o) for c, o in zip(early, ops)) + late * float(ops[-1])
        rows.append({"threshold": float(q), "accuracy": float(correct.mean()) if N else float("nan"),
                     "correct": int(correct.sum()), "samples": int(N), "early": early, "late": late,
                     "late_answered": late_answered, "average_ops": total_ops / N if N else float("nan")})
    return rows


def layer_macs(layer, bottom_shapes: list[tuple], top_shapes: list[tuple]) -> int:
    """Per-sample multiply-accumulates of a Convolution/Deconvolution/InnerProduct (or variant)."""
    from ..layers.vision import InnerProduct, _ConvBase

    if isinstance(layer, _ConvBase):
        total = 0
        for b, t in zip(bottom_shapes, top_shapes):
            k = int(np.prod(layer.kernel))
            if layer.transposed:  # every input value is scattered through (num_output/group) kernels
                total += int(np.prod(b[:layer.axis])) * int(np.prod(b[layer.axis + 1:])) * \
                    layer.channels * (layer.num_output // layer.group) * k
            else:
                total += int(np.prod(t[:layer.axis])) * int(np.prod(t[layer.axis + 1:])) * \
                    layer.num_output * (layer.channels // layer.group) * k
        batch = bottom_shapes[0][0] if len(bottom_shapes[0]) else 1
        return total // max(1, batch)
    if isinstance(layer, InnerProduct):
        b = bottom_shapes[0]
        outer = int(np.prod(b[:layer.axis]))
        batch = b[0] if len(b) and layer.axis > 0 else 1
        return outer * layer.K * layer.num_output // max(1, batch)
    return 0


def ops_per_output(net, outputs: Sequence[str]) -> tuple[list[int], dict[str, int]]:
    """Cumulative per-sample MACs to reach each output (see the module docstring), and the MACs of
    every counted layer (by name; the k-th of several layers of one name as `name#k` from k = 2)."""
    producers: dict[str, frozenset[int]] = {}  # blob -> the positions of the layers it depends on
    macs: dict[int, int] = {}
    for li, (_, layer) in enumerate(net.named_layers()):
        bottoms, tops = net._bottoms[li], net._tops[li]
        deps = {li}
        for b in bottoms:
            deps |= producers.get(b, frozenset())
        deps_f = frozenset(deps)
        for t in tops:
            producers[t] = deps_f
        m = layer_macs(layer, [net.blob_shapes[b] for b in bottoms], [net.blob_shapes[t] for t in tops])
        if m:
            macs[li] = m
    cumulative, reached = [], set()
    for o in outputs:
        if o not in producers:
            raise ToolError(f"no layer of the net produces the output blob '{o}'")
        reached |= producers[o]
        cumulative.append(sum(macs.get(li, 0) for li in reached))
    labels = [label for label, _ in net.labelled_layers()]
    return cumulative, {labels[li]: m for li, m in sorted(macs.items())}


def _grow_stages(param: pb.NetParameter) -> list[str]:
    names = {s for l in param.layer for r in list(l.include) + list(l.exclude)
             for s in list(r.stage) + list(r.not_stage) if re.fullmatch(r"grow\d+", s)}
    return sorted(names, key=lambda s: int(s[4:]))


def sdn_early_exit(prototxt: str, weights: str, outputs: Sequence[str], thresholds: Sequence[float],
                   ops: Sequence[float] | str = "auto", iterations: int = 50, label: str = "label",
                   stages: Sequence[str] | None = None, device: str = "cpu", strict: bool = False) -> dict:
    """Run the TEST net for `iterations` batches and tabulate the early-exit cascade."""
    from ..net import Net, check_memory

    require_files(prototxt, weights)
    param = ncio.read_net(prototxt)
    if stages is None:
        stages = _grow_stages(param)
    if len(outputs) < 1:
        raise ToolError("--outputs needs at least one output blob")
    try:
        net = Net(prototxt, phase=pb.TEST, stages=list(stages), device=device, verbose=False)
        check_memory([net])
    except NetcompressError as e:
        raise ToolError(f"cannot build the TEST net of {prototxt} (stages {','.join(stages) or 'none'}): {e}") from None
    net.copy_from(weights, strict=strict)
    for o in list(outputs) + [label]:
        if o not in net.blob_shapes:
            raise ToolError(f"{prototxt}: the TEST net (stages {','.join(stages) or 'none'}) has no blob '{o}'; "
                            f"blobs: {', '.join(b for b in net.blob_shapes if not b.startswith('('))}")
    if net.input_names:
        raise ToolError(f"{prototxt}: the TEST net has Input layers ({', '.join(net.input_names)}); "
                        "sdn_early_exit needs a net whose data layer provides the images and labels")
    if ops == "auto":
        ops_values, macs_by_layer = ops_per_output(net, outputs)
    else:
        ops_values, macs_by_layer = [float(v) for v in ops], {}
        if len(ops_values) != len(outputs):
            raise ToolError(f"--ops-per-output: {len(outputs)} outputs need {len(outputs)} values, "
                            f"got {len(ops_values)}")
    if iterations <= 0:
        raise ToolError(f"--iterations must be positive, got {iterations}")
    # (past INT_MAX: as caffe test's flag; it ran for ever)
    require_int_flag(iterations, "--iterations", 1, error=ToolError)
    collected: list[list[np.ndarray]] = [[] for _ in outputs]
    labs: list[np.ndarray] = []
    net.eval()
    with torch.no_grad():
        for _ in range(iterations):
            net()
            n = net.blobs[label].shape[0]
            for i, o in enumerate(outputs):
                collected[i].append(net.blobs[o].detach().double().cpu().numpy().reshape(n, -1))
            labs.append(net.blobs[label].detach().cpu().numpy().reshape(-1))
    logits = [np.concatenate(c) for c in collected]
    labels = np.trunc(np.concatenate(labs)).astype(np.int64)
    rows = early_exit_table(logits, labels, thresholds, ops_values)
    alone = [float((l.argmax(axis=1) == labels).mean()) for l in logits]
    return {"net": prototxt, "weights": weights, "stages": list(stages), "outputs": list(outputs),
            "samples": int(labels.shape[0]), "ops_per_output": [float(v) for v in ops_values],
            "ops_counted": "auto" if ops == "auto" else "given", "layer_macs": macs_by_layer,
            "output_accuracy": alone, "thresholds": rows}


def print_early_exit(r: dict, out=None) -> None:
    out = out or sys.stdout
    names = r["outputs"]
    full = r["ops_per_output"][-1]
    unit = "MACs" if r["ops_counted"] == "auto" else "ops"
    print(f"{r['samples']} samples of the TEST net of {r['net']} (stages {','.join(r['stages']) or 'none'})", file=out)
    for name, ops, acc in zip(names, r["ops_per_output"], r["output_accuracy"]):
        print(f"  output {name}: accuracy {acc:.4f} alone, {ops:.6g} {unit} per sample to reach it", file=out)
    head = ["threshold", "accuracy"] + [f"exit@{n}" for n in names[:-1]] + ["not_confident", f"avg_{unit}", "of_last"]
    print("  ".join(f"{h:>12}" for h in head), file=out)
    for row in r["thresholds"]:
        cells = [f"{row['threshold']:g}", f"{row['accuracy']:.4f}"] + [str(c) for c in row["early"]] + \
            [str(row["late"]), f"{row['average_ops']:.6g}", f"{row['average_ops'] / full:.2%}" if full else "-"]
        print("  ".join(f"{c:>12}" for c in cells), file=out)


def plot_early_exit(r: dict, path: str) -> None:
    """Accuracy against average ops, one point per threshold (and each output alone)."""
    from ..pyplot import pyplot
    plt = pyplot(force=False)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    xs = [row["average_ops"] for row in r["thresholds"]]
    ys = [100 * row["accuracy"] for row in r["thresholds"]]
    ax.plot(xs, ys, "o-", label="early exit")
    for row, x, y in zip(r["thresholds"], xs, ys):
        ax.annotate(f"{row['threshold']:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.plot(r["ops_per_output"], [100 * a for a in r["output_accuracy"]], "s", label="each output alone")
    for name, x, a in zip(r["outputs"], r["ops_per_output"], r["output_accuracy"]):
        ax.annotate(name, (x, 100 * a), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("average " + ("MACs" if r["ops_counted"] == "auto" else "ops") + " per sample")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"SDN early exit ({r['samples']} samples)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=path.rsplit(".", 1)[-1] if "." in path else "png")
    plt.close(fig)
    ncio.atomic_write(path, buf.getvalue())


def _parse_floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise ToolError(f"{what} must be a comma-separated list of numbers, got '{text}'") from None
    if not vals:
        raise ToolError(f"{what} is empty")
    return vals


def sdn_early_exit_main(argv: Sequence[str] | None = None) -> int:
    """`sdn_early_exit <net.prototxt> <weights> --outputs ic1,...,final [--thresholds ...] [--ops-per-output auto]`"""
    p = argparse.ArgumentParser(
        prog="netcompress sdn_early_exit",
        description="SDN confidence early exit: per threshold, the accuracy, how many samples exit at "
                    "each IC, and the average ops (samples no IC is confident about are charged the "
                    "last output's ops, as SDN does). Data: the TEST phase of the net (its data layer "
                    "with labels), for --iterations batches.")
    p.add_argument("net", help="a net prototxt whose TEST phase reads data and labels (e.g. make_sdn_net's train_val)")
    p.add_argument("weights", help=".caffemodel")
    p.add_argument("--outputs", required=True,
                   help="the output blobs in cascade order, the final one last: ic1,ic2,ic3,fc")
    p.add_argument("--thresholds", default=",".join(f"{t:g}" for t in SDN_THRESHOLDS),
                   help="confidence thresholds (default: SDN's 0.1,0.15,0.25,0.5,0.6,0.7,0.8,0.9,0.95,0.99,0.999)")
    p.add_argument("--ops-per-output", default="auto",
                   help="'auto' (per-sample multiply-accumulates of the Convolution/InnerProduct layers needed to "
                        "reach each output, cumulative over the cascade) or one number per output")
    p.add_argument("--iterations", type=int, default=50, help="TEST batches to run (default 50, as caffe test)")
    p.add_argument("--label", default="label", help="the label blob (default: label)")
    p.add_argument("--stage", default=None,
                   help="comma-separated NetState stages (default: every growK stage the net names, i.e. fully grown)")
    p.add_argument("--gpu", default=None, help="GPU id (default: CPU)")
    p.add_argument("--plot", metavar="OUT.png", help="also plot accuracy against average ops")
    p.add_argument("--json", metavar="OUT", help="also write the table as JSON")
    p.add_argument("--strict", action="store_true",
                   help="a learnable layer that the weights do not fill is an error (default: a warning)")

    def run(a: argparse.Namespace) -> int:
        from ..device import device_from_gpu_flag

        refuse_overwrites([a.json, a.plot], writes=["the JSON table", "the plot"], net=a.net, weights=a.weights)
        outputs = [o for o in a.outputs.split(",") if o]
        thresholds = _parse_floats(a.thresholds, "--thresholds")
        ops = "auto" if a.ops_per_output == "auto" else _parse_floats(a.ops_per_output, "--ops-per-output")
        stages = None if a.stage is None else [s for s in a.stage.split(",") if s]
        r = sdn_early_exit(a.net, a.weights, outputs, thresholds, ops, a.iterations, a.label, stages,
                           device=str(device_from_gpu_flag(a.gpu)), strict=a.strict)
        print_early_exit(r)
        if a.json:
            ncio.atomic_write(a.json, json.dumps(r, indent=2) + "\n")
        if a.plot:
            plot_early_exit(r, a.plot)
        return 0
    return run_tool(p, argv, run)
