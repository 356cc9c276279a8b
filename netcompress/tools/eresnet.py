"""ε-ResNet tools (recipes-spec §3.1, §3.5, §5.5): the prototxt generator and the compressor.

- `make_epsilon_resnet`: a CIFAR-style pre-activation ε-ResNet (depth 2·S·n + 2, 6n + 2 for three
  stages) with StrictIdentity gates, AvgPool + ChannelPad shortcuts and an optional side output.
- `compress_epsilon_resnet`: drops the discarded blocks and the side branches of a trained net and
  writes a deploy prototxt, its caffemodel and the source's `compressed_model_<step>.cfg`.

Blocks are found from the graph, not from names: a block is an Eltwise SUM one of whose two bottoms
comes from a StrictIdentity layer (the gate). Its residual branch is every layer the gate depends
on that the shortcut does not; its shortcut layers (AvgPool, ChannelPad, a projection) are those the
shortcut depends on and the gate does not. Names give only the stage and index of a block: the
Eltwise is named `res<g>.<k>` (CIFAR) or `group<g>/block<k>` (ImageNet), as in the source.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from typing import Sequence

import numpy as np
import torch

from .. import io as ncio
from ..cliargs import int_flag_error
from ..errors import NetcompressError
from ..layers.base import INT_MAX
from ..log import get_logger
from ..proto import caffe_pb2 as pb
from ._common import (MAX_GENERATED_UNITS, ToolError, comma_floats, comma_ints, fmt_shape, net_error_text,
                      refuse_overwrites, require_files, run_tool)

__all__ = ["make_epsilon_resnet", "make_epsilon_resnet_main", "Block", "find_blocks", "layer_producers",
           "layer_ancestors",
           "DiscardLog", "read_discard_log", "CompressResult", "compress_epsilon_resnet",
           "compress_epsilon_resnet_main", "format_cfg", "count_parameters"]

log = get_logger("eresnet")

_SIP = pb.StrictIdentityParameter

# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------


def _bn_scale_relu(net: pb.NetParameter, prefix: str, bottom: str, top: str, relu: bool = True,
                   bn_name: str | None = None) -> None:
    """BatchNorm (tensorpack's EMA decay 0.9, eps 1e-5) → Scale (bias, no weight decay) → ReLU,
    the last two in place on `top`."""
    bn = net.layer.add(name=bn_name or f"{prefix}_bn", type="BatchNorm", bottom=[bottom], top=[top])
    bn.batch_norm_param.moving_average_fraction = 0.9
    bn.batch_norm_param.eps = 1e-5
    sc = net.layer.add(name=f"{bn.name}_scale", type="Scale", bottom=[top], top=[top])
    sc.scale_param.bias_term = True
    for _ in range(2):
        sc.param.add(decay_mult=0.0)  # tensorpack regularises only the '*/W' weights
    if relu:
        net.layer.add(name=f"{bn.name}_relu", type="ReLU", bottom=[top], top=[top])


def _conv(net: pb.NetParameter, name: str, bottom: str, top: str, num_output: int, stride: int = 1,
          kernel: int = 3) -> None:
    c = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[top])
    cp = c.convolution_param
    cp.num_output = num_output
    cp.kernel_size.append(kernel)
    cp.pad.append((kernel - 1) // 2)
    if stride != 1:
        cp.stride.append(stride)
    cp.bias_term = False
    # variance_scaling_initializer(mode='FAN_OUT'): std sqrt(2 / (k·k·C_out)) (Caffe's msra FAN_OUT)
    cp.weight_filler.type = "msra"
    cp.weight_filler.variance_norm = pb.FillerParameter.FAN_OUT


def _fc(net: pb.NetParameter, name: str, bottom: str, num_output: int) -> None:
    fc = net.layer.add(name=name, type="InnerProduct", bottom=[bottom], top=[name])
    fc.param.add(lr_mult=1.0, decay_mult=1.0)
    fc.param.add(lr_mult=1.0, decay_mult=0.0)  # biases are not regularised either
    ip = fc.inner_product_param
    ip.num_output = num_output
    ip.weight_filler.type = "msra"  # variance_scaling_initializer(): FAN_IN, factor 2
    ip.weight_filler.variance_norm = pb.FillerParameter.FAN_IN
    ip.bias_filler.type = "constant"


def _head(net: pb.NetParameter, prefix: str, bottom: str, classes: int, loss_weight: float | None,
          bn_name: str, fc_name: str, acc_name: str, loss_name: str) -> None:
    _bn_scale_relu(net, prefix, bottom, bn_name, bn_name=bn_name)
    gap = net.layer.add(name=f"{prefix}gap", type="Pooling", bottom=[bn_name], top=[f"{prefix}gap"])
    gap.pooling_param.pool = pb.PoolingParameter.AVE
    gap.pooling_param.global_pooling = True
    _fc(net, fc_name, f"{prefix}gap", classes)
    loss = net.layer.add(name=loss_name, type="SoftmaxWithLoss", bottom=[fc_name, "label"], top=[loss_name])
    if loss_weight is not None:
        loss.loss_weight.append(loss_weight)
    acc = net.layer.add(name=acc_name, type="Accuracy", bottom=[fc_name, "label"], top=[acc_name])
    acc.include.add(phase=pb.TEST)


def make_epsilon_resnet(depth: int, *, widths: Sequence[int] = (16, 32, 64),
                        input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                        epsilon: float = 2.5, epsilon_start_epoch: int = 0,
                        side_output: bool = True, side_after: str | None = None, side_weight: float = 0.1,
                        train_source: str | None = None, test_source: str | None = None,
                        batch_size: int = 128, test_batch_size: int = 100, scale: float | None = None,
                        mean_value: Sequence[float] = (), mirror: bool = False,
                        indicator_tops: bool = False, faithful_ratio: bool = False,
                        name: str | None = None) -> pb.NetParameter:
    """A pre-activation ε-ResNet train/val net (recipes-spec §3.1-§3.3).

    Args:
        depth: 2·S·n + 2 for S = len(widths) stages of n units (6n + 2 for CIFAR's three).
        widths: channels per stage; a stage's first unit (after the first stage) has a stride-2
            conv1 and an AvgPool 2×2 + ChannelPad shortcut (pads split (w' − w)//2 before, the rest
            after: the source's symmetric [in/2, in/2] when widths double).
        input_shape: (C, H, W) of one image.
        epsilon, epsilon_start_epoch: the StrictIdentity gates' parameters.
        side_output: add the side branch (BN-ReLU → global AvgPool → FC → loss with `side_weight`)
            after `side_after` (default `res2.{n//2}`, the source's Python-2 `n/2`).
        train_source, test_source: LMDBs for Data layers (TRAIN and TEST); without them the net
            reads `data` and `label` from an Input layer (batch_size images).
        scale, mean_value, mirror: the Data layers' transform_param.
        indicator_tops: give each gate its second top (the per-batch discard indicator).
        faithful_ratio: discard_ratio_denominator BLOCKS_PLUS_2 (Q8, the source's 3n + 2).

    Returns the NetParameter; each unit is `res<g>.<k>` (g from 1, k from 0), with layers
    `res<g>.<k>_bn1`…`_conv2`, the gate `res<g>.<k>_gate` and the Eltwise `res<g>.<k>`.
    """
    stages = len(widths)
    if stages < 1 or not all(0 < int(w) <= INT_MAX for w in widths):
        raise ToolError(f"make_epsilon_resnet: widths must lie in 1..{INT_MAX}, got {list(widths)}")
    per = 2 * stages
    if depth < per + 2 or (depth - 2) % per:
        raise ToolError(f"make_epsilon_resnet: depth must be {per}n + 2 for {stages} stages (n >= 1), "
                        f"got {depth}")
    n = (depth - 2) // per
    if n * stages > MAX_GENERATED_UNITS:  # (else a net of millions of layers, written for hours)
        raise ToolError(f"make_epsilon_resnet: depth {depth} is {stages} stages of n = {n} units, "
                        f"{n * stages:,} in all, more than the {MAX_GENERATED_UNITS:,} this generator writes")
    if len(input_shape) != 3 or not all(0 < int(d) <= INT_MAX for d in input_shape):
        raise ToolError(f"make_epsilon_resnet: input_shape is (C, H, W) of sizes 1..{INT_MAX}, "
                        f"got {list(input_shape)}")
    for what, value, least in (("num_classes", num_classes, 1), ("batch_size", batch_size, 1),
                               ("test_batch_size", test_batch_size, 1),
                               ("epsilon_start_epoch", epsilon_start_epoch, 0)):
        if int_flag_error(int(value), what, least, "a Caffe int"):
            raise ToolError(f"make_epsilon_resnet: {int_flag_error(int(value), what, least, 'a Caffe int')}")
    if not 0 <= epsilon < math.inf:
        raise ToolError(f"make_epsilon_resnet: epsilon must be a finite number >= 0, got {epsilon}")
    for what, value in (("side_weight", side_weight), ("scale", scale)) + tuple(
            ("mean_value", m) for m in mean_value):
        if value is not None and not math.isfinite(value):
            raise ToolError(f"make_epsilon_resnet: {what} must be a finite number, got {value}")
    for i in range(1, stages):
        if widths[i] < widths[i - 1]:
            raise ToolError(f"make_epsilon_resnet: a stage cannot be narrower than the one before "
                            f"(widths {list(widths)}); the shortcut pads channels, it cannot drop them")
    if side_output and side_after is None:
        if stages < 2:
            raise ToolError("make_epsilon_resnet: the default side output sits in stage 2; give "
                            "side_after for a one-stage net")
        side_after = f"res2.{n // 2}"
    net = pb.NetParameter(name=name or f"eresnet{depth}")
    c, h, w = (int(d) for d in input_shape)
    if train_source or test_source:
        if not (train_source and test_source):
            raise ToolError("make_epsilon_resnet: give both train_source and test_source, or neither")
        for phase, src, bs in ((pb.TRAIN, train_source, batch_size), (pb.TEST, test_source, test_batch_size)):
            d = net.layer.add(name="data", type="Data", top=["data", "label"])
            d.include.add(phase=phase)
            d.data_param.source = src
            d.data_param.batch_size = int(bs)
            d.data_param.backend = pb.DataParameter.LMDB
            tp = d.transform_param
            if scale is not None:
                tp.scale = float(scale)
            tp.mean_value.extend(float(m) for m in mean_value)
            if mirror and phase == pb.TRAIN:
                tp.mirror = True
    else:
        d = net.layer.add(name="data", type="Input", top=["data", "label"])
        d.input_param.shape.add(dim=[int(batch_size), c, h, w])
        d.input_param.shape.add(dim=[int(batch_size)])
    _conv(net, "conv0", "data", "conv0", int(widths[0]))
    _bn_scale_relu(net, "conv0", "conv0", "conv0")
    x, cin = "conv0", int(widths[0])
    units = []
    for g in range(1, stages + 1):
        for k in range(n):
            u = f"res{g}.{k}"
            units.append(u)
            cout = int(widths[g - 1])
            down = g > 1 and k == 0
            first = g == 1 and k == 0
            if first:
                pre = x  # res1.0 takes the stem's BN-ReLU output as it is
            else:
                pre = f"{u}_pre"
                _bn_scale_relu(net, u, x, pre, bn_name=f"{u}_bn1")
            _conv(net, f"{u}_conv1", pre, f"{u}_c1", cout, stride=2 if down else 1)
            _bn_scale_relu(net, u, f"{u}_c1", f"{u}_c1", bn_name=f"{u}_bn2")
            _conv(net, f"{u}_conv2", f"{u}_c1", f"{u}_F", cout)
            gate = net.layer.add(name=f"{u}_gate", type="StrictIdentity", bottom=[f"{u}_F"], top=[f"{u}_gF"])
            if indicator_tops:
                gate.top.append(f"{u}_disc")
            sp = gate.strict_identity_param
            sp.epsilon = float(epsilon)
            if epsilon_start_epoch:
                sp.epsilon_start_epoch = int(epsilon_start_epoch)
            if faithful_ratio:
                sp.discard_ratio_denominator = _SIP.BLOCKS_PLUS_2
            short = x
            if down or cout != cin:
                if down:
                    pool = net.layer.add(name=f"{u}_pool", type="Pooling", bottom=[x], top=[f"{u}_pool"])
                    pool.pooling_param.pool = pb.PoolingParameter.AVE
                    pool.pooling_param.kernel_size = 2
                    pool.pooling_param.stride = 2
                    short = f"{u}_pool"
                if cout != cin:
                    pad = net.layer.add(name=f"{u}_pad", type="ChannelPad", bottom=[short], top=[f"{u}_shortcut"])
                    pad.channel_pad_param.pad_before = (cout - cin) // 2
                    pad.channel_pad_param.pad_after = cout - cin - (cout - cin) // 2
                    short = f"{u}_shortcut"
            net.layer.add(name=u, type="Eltwise", bottom=[f"{u}_gF", short], top=[u])
            x, cin = u, cout
            if side_output and u == side_after:
                p = f"side_output/{u}/"
                _head(net, p, u, num_classes, side_weight, bn_name=f"{p}bn", fc_name=f"{p}linear",
                      acc_name=f"{p}accuracy", loss_name=f"{p}loss")
    if side_output and side_after not in units:
        raise ToolError(f"make_epsilon_resnet: side_after '{side_after}' is not a unit of this net "
                        f"({units[0]} … {units[-1]})")
    _head(net, "", x, num_classes, None, bn_name="bnlast", fc_name="linear", acc_name="accuracy",
          loss_name="loss")
    return net


def make_epsilon_resnet_main(argv: Sequence[str] | None = None) -> int:
    """`make_epsilon_resnet --depth D --out train_val.prototxt [options]`"""
    p = argparse.ArgumentParser(
        prog="netcompress make_epsilon_resnet",
        description="Write a pre-activation ε-ResNet train/val prototxt (CIFAR style, depth 6n+2 for "
                    "three stages) with StrictIdentity gates, ChannelPad shortcuts and a side output.")
    p.add_argument("--depth", type=int, required=True, help="2*S*n + 2 for S stages of n units (6n+2)")
    p.add_argument("--out", required=True, help="the prototxt to write")
    p.add_argument("--widths", default="16,32,64", help="channels per stage (default 16,32,64)")
    p.add_argument("--input", default="3,32,32", help="C,H,W of one image (default 3,32,32)")
    p.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    p.add_argument("--epsilon", type=float, default=2.5, help="the gates' epsilon (default 2.5)")
    p.add_argument("--epsilon-start-epoch", type=int, default=0,
                   help="epsilon is 0 until this epoch has ended (150: the source's 2020 schedule)")
    p.add_argument("--no-side-output", action="store_true", help="leave out the side branch")
    p.add_argument("--side-after", default=None, help="the unit the side branch follows (default res2.{n//2})")
    p.add_argument("--side-weight", type=float, default=0.1, help="its loss weight (default 0.1)")
    p.add_argument("--train-source", help="TRAIN LMDB (with --test-source: Data layers; else an Input layer)")
    p.add_argument("--test-source", help="TEST LMDB")
    p.add_argument("--batch-size", type=int, default=128, help="TRAIN batch (default 128)")
    p.add_argument("--test-batch-size", type=int, default=100, help="TEST batch (default 100)")
    p.add_argument("--scale", type=float, default=None, help="transform_param.scale, e.g. 0.0078125")
    p.add_argument("--mean-value", default="", help="comma-separated transform_param.mean_value")
    p.add_argument("--mirror", action="store_true", help="random horizontal flips in TRAIN")
    p.add_argument("--indicator-tops", action="store_true", help="give each gate its indicator top")
    p.add_argument("--faithful-ratio", action="store_true",
                   help="discarded_ratio over 3n+2 blocks, as the source (Q8)")
    p.add_argument("--name", default=None, help="the net's name (default eresnet<depth>)")

    def run(a: argparse.Namespace) -> int:
        mean = comma_floats(a.mean_value, "--mean-value")
        net = make_epsilon_resnet(
            a.depth, widths=comma_ints(a.widths, "--widths"), input_shape=comma_ints(a.input, "--input"),
            num_classes=a.classes, epsilon=a.epsilon, epsilon_start_epoch=a.epsilon_start_epoch,
            side_output=not a.no_side_output, side_after=a.side_after, side_weight=a.side_weight,
            train_source=a.train_source, test_source=a.test_source, batch_size=a.batch_size,
            test_batch_size=a.test_batch_size, scale=a.scale, mean_value=mean, mirror=a.mirror,
            indicator_tops=a.indicator_tops, faithful_ratio=a.faithful_ratio, name=a.name)
        ncio.write_text_proto(a.out, net)
        gates = sum(l.type == "StrictIdentity" for l in net.layer)
        print(f"Wrote {a.out}: {net.name}, {gates} gated units, {len(net.layer)} layers")
        return 0
    # ValueError too: a --mean-value that is not a number (float's own message)
    return run_tool(p, argv, run, errors=(NetcompressError, OSError, ValueError))


# ----------------------------------------------------------------------------------------------
# The graph: producers, ancestors, blocks
# ----------------------------------------------------------------------------------------------

_RE_CIFAR = re.compile(r"^res(\d+)\.(\d+)$")
_RE_IMAGENET = re.compile(r"^group(\d+)/block(\d+)$")


def layer_producers(param: pb.NetParameter) -> list[list[int | None]]:
    """For each layer and bottom, the index of the layer whose top it reads (in-place layers
    make a new version of a blob; None for a blob nothing produces)."""
    last: dict[str, int] = {}
    out = []
    for i, lp in enumerate(param.layer):
        out.append([last.get(b) for b in lp.bottom])
        for t in lp.top:
            last[t] = i
    return out


def layer_ancestors(prod: list[list[int | None]], start: int | None) -> set[int]:
    """`start` and every layer it depends on."""
    seen: set[int] = set()
    stack = [start] if start is not None else []
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(p for p in prod[i] if p is not None)
    return seen


@dataclasses.dataclass
class Block:
    """A gated residual unit found in the graph (indices into the NetParameter's layers)."""

    name: str              # the Eltwise's name, e.g. "res2.3"
    stage: int
    index: int
    style: str             # "cifar" (res<g>.<k>) or "imagenet" (group<g>/block<k>)
    eltwise: int
    gate: int
    gate_bottom: int       # which Eltwise bottom the gate feeds (the other is the shortcut)
    residual: set[int]     # the gate and every layer only the gate depends on
    shortcut: set[int]     # layers only the shortcut depends on (pool, pad, projection)

    @property
    def shortcut_bottom(self) -> int:
        return 1 - self.gate_bottom


def find_blocks(param: pb.NetParameter, prod: list[list[int | None]] | None = None) -> list[Block]:
    """Every Eltwise SUM with a StrictIdentity top as one of its two bottoms, in layer order."""
    prod = prod if prod is not None else layer_producers(param)
    layers = param.layer
    blocks = []
    for i, lp in enumerate(layers):
        if lp.type != "Eltwise":
            continue
        from_gate = [k for k, p in enumerate(prod[i]) if p is not None and layers[p].type == "StrictIdentity"]
        if not from_gate:
            continue
        ep = lp.eltwise_param
        if ep.operation != pb.EltwiseParameter.SUM or any(c != 1 for c in ep.coeff):
            raise ToolError(f"layer '{lp.name}' (Eltwise) adds a StrictIdentity output but is not a plain "
                            "SUM (operation SUM, no coeff other than 1): not an ε-ResNet block")
        if len(lp.bottom) != 2 or len(from_gate) != 1:
            raise ToolError(f"layer '{lp.name}' (Eltwise): an ε-ResNet block adds one gated branch and "
                            f"one shortcut, got {len(lp.bottom)} bottoms, {len(from_gate)} of them gated")
        k = from_gate[0]
        gate = prod[i][k]
        gate_lp = layers[gate]
        if list(gate_lp.top).index(lp.bottom[k]) != 0:
            raise ToolError(f"layer '{lp.name}' adds the indicator top of '{gate_lp.name}', not its gated output")
        m = _RE_CIFAR.match(lp.name) or _RE_IMAGENET.match(lp.name)
        if not m:
            raise ToolError(f"block '{lp.name}' (the Eltwise after StrictIdentity '{gate_lp.name}'): name it "
                            "res<stage>.<index> (CIFAR) or group<stage>/block<index> (ImageNet), as the "
                            "source does, so that kept blocks can be renumbered")
        a_gate = layer_ancestors(prod, gate)
        a_short = layer_ancestors(prod, prod[i][1 - k])
        blocks.append(Block(name=lp.name, stage=int(m.group(1)), index=int(m.group(2)),
                            style="cifar" if m.re is _RE_CIFAR else "imagenet", eltwise=i, gate=gate,
                            gate_bottom=k, residual=a_gate - a_short, shortcut=a_short - a_gate))
    styles = {b.style for b in blocks}
    if len(styles) > 1:
        raise ToolError("the blocks mix res<g>.<k> and group<g>/block<k> names: "
                        + ", ".join(b.name for b in blocks))
    seen: dict[tuple[int, int], str] = {}
    for b in blocks:
        if (b.stage, b.index) in seen:
            raise ToolError(f"two blocks are stage {b.stage} index {b.index}: '{seen[(b.stage, b.index)]}' "
                            f"and '{b.name}'")
        seen[(b.stage, b.index)] = b.name
    return blocks


# ----------------------------------------------------------------------------------------------
# Which blocks are discarded
# ----------------------------------------------------------------------------------------------

_GLOG = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [^\]]*\] ?(.*)$")
# The solver's epoch-end line, and tensorpack's (a log converted from the source).
_EPOCH = re.compile(r"^Epoch (\d+) (?:done \(iteration|\(global_step) (\d+)\b")
_STAT = re.compile(r"^(\S+): ([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf))$")
_TESTING = re.compile(r"^Iteration (\d+), Testing net \(#(\d+)\)")
_TEST_OUT = re.compile(r"^\s*Test net output #\d+: (\S+) = (\S+)")


def _message(line: str) -> str:
    m = _GLOG.match(line.rstrip("\n"))
    return m.group(1) if m else line.strip()


@dataclasses.dataclass
class DiscardLog:
    """The epoch-end statistics of one step of a training log."""

    epoch: int
    step: int
    stats: dict[str, str]   # name -> the printed value (e.g. "res1.1_gate/is_discarded" -> "1")
    val_error: list[float]  # 1 − each TEST accuracy logged at this step, in the order printed


def read_discard_log(path: str, step: int) -> DiscardLog:
    """The stats printed at the epoch end of iteration `step`: the `name: value` lines after the
    solver's `Epoch E done (iteration <step>, ...)` line (or tensorpack's `Epoch E (global_step
    <step>) finished`), up to the next `Iteration`/`Epoch` line, and the TEST accuracies logged at
    `Iteration <step>, Testing net`."""
    require_files(path)
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        msgs = [_message(l) for l in f]
    hits = [i for i, m in enumerate(msgs) if (e := _EPOCH.match(m)) and int(e.group(2)) == step]
    if not hits:
        ends = [int(e.group(2)) for m in msgs if (e := _EPOCH.match(m))]
        hint = (f"epochs end at iterations {', '.join(map(str, ends[:5]))}"
                f"{' … ' + str(ends[-1]) if len(ends) > 5 else ''}"
                if ends else "it has no epoch-end lines (was the net trained with StrictIdentity layers "
                "and an epoch length?)")
        raise ToolError(f"{path}: no epoch-end line 'Epoch E done (iteration {step}, ...)': --iter must be "
                        f"an epoch-end iteration; {hint}")
    h = hits[-1]  # a resumed run may repeat a step: its last occurrence wins
    epoch = int(_EPOCH.match(msgs[h]).group(1))
    stats: dict[str, str] = {}
    for m in msgs[h + 1:]:
        if m.startswith("Iteration ") or _EPOCH.match(m):
            break
        st = _STAT.match(m)
        if st:  # other epoch-end lines (other callbacks, snapshots) may come in between
            stats.setdefault(st.group(1), st.group(2))
    val_error: list[float] = []
    current: int | None = None
    for m in msgs:
        t = _TESTING.match(m)
        if t:  # the solver tests at iteration `step` after that epoch's end (or after the last iteration)
            current = int(t.group(1))
            continue
        if m.startswith("Iteration ") or _EPOCH.match(m):
            current = None
            continue
        o = _TEST_OUT.match(m)
        if o and current == step and "accuracy" in o.group(1).lower():
            try:
                val_error.append(float("%.6g" % (1.0 - float(o.group(2)))))
            except ValueError:
                pass
    return DiscardLog(epoch=epoch, step=step, stats=stats, val_error=val_error)


def prints_as_one(value: float | str) -> bool:
    """The source's rule: the value printed with '.5g' parses to exactly 1.0 (EMA >= 0.999995)."""
    text = value if isinstance(value, str) else "{:.5g}".format(float(value))
    try:
        return float(text) == 1.0
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------
# Compression
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CompressResult:
    blocks: list[str]               # every block of the main path, in layer order
    discarded: list[str]
    structure: list[int]            # kept blocks per stage, stages in order
    discard_first_block: list[int]
    stages: list[int]
    renamed: dict[str, str]         # kept block: old name -> new name (only those that change)
    step: int
    val_error: list[float]
    cfg_path: str
    cfg_text: str
    deploy: pb.NetParameter
    params_after: int = 0


def format_cfg(n, model_path: str, step: int, discarded: list[str], is_cifar: bool,
               discard_first_block: list[int], structure: list[int], val_error: list[float]) -> str:
    """`compressed_model_<step>.cfg`, byte for byte in the source's format (str() of the lists)."""
    return (f"N: {n}\nmodel: {model_path}\nstep: {step}\ndiscarded_block: {discarded}\n"
            f"is_cifar_model: {is_cifar}\ndiscard_first_block: {discard_first_block}\n"
            f"structure: {structure}\nval_error: {val_error}\n")


def count_parameters(net) -> int:
    """Learnable values of a built Net (weights, biases, Scale; not BatchNorm statistics, not
    frozen lr_mult-0 blobs such as an exported ChannelPad)."""
    return int(sum(e.tensor.numel() for e in net.learnable_params() if e.learnable and e.lr_mult != 0))


def _main_logits(param: pb.NetParameter, prod: list[list[int | None]], output: str | None) -> tuple[str, int]:
    """(the logits blob, the index of the layer that produces the version the net outputs)."""
    from ..layers.base import layer_class

    if output:
        for i in range(len(param.layer) - 1, -1, -1):
            if output in param.layer[i].top:
                return output, i
        raise ToolError(f"--output '{output}': no layer of the TEST net produces that blob")
    mains = []
    for i, lp in enumerate(param.layer):
        weights = list(lp.loss_weight)
        if not weights and layer_class(lp.type).is_loss:
            weights = [1.0]
        if weights and weights[0] >= 1.0 and len(lp.bottom):
            mains.append(i)
    if len(mains) != 1:
        what = ", ".join(f"'{param.layer[i].name}'" for i in mains) or "none"
        raise ToolError(f"cannot tell the main output: the TEST net has {len(mains)} losses with loss "
                        f"weight >= 1 ({what}); name the logits blob with --output")
    i = mains[0]
    if prod[i][0] is None:
        raise ToolError(f"the main loss '{param.layer[i].name}' reads '{param.layer[i].bottom[0]}', which no "
                        "layer produces")
    return param.layer[i].bottom[0], prod[i][0]


def _rename_fn(mapping: dict[str, str]):
    if not mapping:
        return lambda s: s
    pat = re.compile("^(" + "|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True))
                     + r")(?![0-9])")
    return lambda s: pat.sub(lambda m: mapping[m.group(1)], s, count=1)


def _gate_decisions_by_forward(train_prototxt: str, weights: str, blocks: list[Block],
                               param: pb.NetParameter, iters: int | None) -> dict[str, bool]:
    """criterion 'gate': a block is discarded iff its gate is 0 on every TEST batch run."""
    from ..net import Net

    net = Net(train_prototxt, phase=pb.TEST, weights=weights, verbose=False)
    if iters is None:
        for _, layer in net.named_layers():
            stream = getattr(getattr(layer, "reader", None), "stream", None)
            if layer.is_data and stream is not None:
                iters = max(1, math.ceil(int(stream.n) / int(stream.batch_size)))
                break
    if not iters:
        raise ToolError(f"{train_prototxt}: --criterion gate needs --gate-iters (the TEST net has no "
                        "data layer to count its batches from)")
    opened = {b.name: False for b in blocks}
    with torch.no_grad():
        for _ in range(iters):
            net()
            for b in blocks:
                g = net.layer(param.layer[b.gate].name).last_gate
                opened[b.name] = opened[b.name] or g != 0.0
    log.info("criterion gate: %d TEST batches", iters)
    return {k: not v for k, v in opened.items()}


def compress_epsilon_resnet(train_prototxt: str, weights: str, out_prototxt: str, out_model: str, *,
                            log_path: str | None = None, iteration: int | None = None,
                            solverstate: str | None = None, criterion: str = "ema1",
                            cfg_path: str | None = None, caffe_compatible: bool = False,
                            output: str | None = None, input_shape: Sequence[int] | None = None,
                            gate_iters: int | None = None, quiet: bool = False) -> CompressResult:
    """recipes-spec §3.5/§5.5: write the compressed deploy net, its weights and the `.cfg`.

    The discarded blocks come from the log (`log_path` + `iteration`: the `<gate>/is_discarded`
    lines of that epoch end) or from a snapshot (`solverstate`: its EMAs), by `criterion` "ema1"
    (the EMA prints as 1 with '.5g', the source's rule) or "gate" (the gate is 0 on every TEST
    batch of the current weights). Kept blocks are renumbered per stage from 0, or from 1 when the
    stage's block 0 is discarded (`discard_first_block`); a discarded block becomes its shortcut
    (identity, or AvgPool + ChannelPad), so a discarded res1.0 is the identity (Q9's fix).
    """
    from ..layers.base import layer_class
    from ..layers.eresnet import channel_pad_as_convolution
    from ..net import Net, filter_net
    from ..solvers.state import SIDECAR_SUFFIX, load_state
    from .bvlc_check import BVLC_LAYER_TYPES, check_bvlc_net

    say = (lambda *a: None) if quiet else print
    require_files(train_prototxt, weights)
    refuse_overwrites((out_prototxt, out_model, cfg_path), writes=(None, "the caffemodel", "the configuration"),
                      train_prototxt=train_prototxt, weights=weights,
                      log=log_path, solverstate=solverstate)
    if criterion not in ("ema1", "gate"):
        raise ToolError(f"--criterion must be ema1 or gate, got '{criterion}'")
    if (log_path is None) == (solverstate is None):
        raise ToolError("give either --log with --iter, or --solverstate")
    if log_path is not None and iteration is None:
        raise ToolError("--log needs --iter (the epoch-end iteration of the weights)")
    src = ncio.read_net(train_prototxt)
    param = filter_net(src, pb.NetState(phase=pb.TEST), verbose=False)
    layers = param.layer
    prod = layer_producers(param)
    logits, logits_prod = _main_logits(param, prod, output)
    main = layer_ancestors(prod, logits_prod)
    blocks = [b for b in find_blocks(param, prod) if b.eltwise in main]
    if not blocks:
        raise ToolError(f"{train_prototxt}: no ε-ResNet block on the path to '{logits}' (an Eltwise SUM "
                        "of a StrictIdentity output and a shortcut)")
    model = ncio.read_caffemodel(weights)
    stored = {l.name: l for l in model.layer}

    # -- the decision ---------------------------------------------------------------------------
    val_error: list[float] = []
    emas: dict[str, str | float] = {}
    if log_path is not None:
        dl = read_discard_log(log_path, int(iteration))
        step, val_error = dl.step, dl.val_error
        for b in blocks:
            key = f"{layers[b.gate].name}/is_discarded"
            if key not in dl.stats:
                raise ToolError(f"{log_path}: no '{key}' line at the end of epoch {dl.epoch} (iteration "
                                f"{step}); the block '{b.name}' cannot be judged")
            emas[b.name] = dl.stats[key]
            blob = stored.get(layers[b.gate].name)
            if blob is not None and len(blob.blobs):
                mine = "{:.5g}".format(float(ncio.blob_to_array(blob.blobs[0]).reshape(-1)[0]))
                if mine != dl.stats[key] and not quiet:
                    log.warning("%s: the EMA of '%s' prints as %s, the log says %s at step %d: are the "
                                "weights from iteration %d?", weights, layers[b.gate].name, mine,
                                dl.stats[key], step, step)
    else:
        require_files(solverstate)
        state = ncio.read_binary_proto(solverstate, pb.SolverState())
        step = int(state.iter)
        side = solverstate + SIDECAR_SUFFIX
        train_state = load_state(side).get("train", {}) if os.path.exists(side) else {}
        for b in blocks:
            name = layers[b.gate].name
            st = train_state.get(name) if isinstance(train_state, dict) else None
            if st and "discard_ema" in st:
                emas[b.name] = float(torch.as_tensor(st["discard_ema"]).reshape(-1)[0])
            elif name in stored and len(stored[name].blobs):
                emas[b.name] = float(ncio.blob_to_array(stored[name].blobs[0]).reshape(-1)[0])
            else:
                raise ToolError(f"{solverstate}: neither its state nor {weights} holds the EMA of '{name}'")
    if criterion == "gate":
        by_gate = _gate_decisions_by_forward(train_prototxt, weights, blocks, param, gate_iters)
        discarded_set = {k for k, v in by_gate.items() if v}
    else:
        discarded_set = {b.name for b in blocks if prints_as_one(emas[b.name])}
    order = sorted(blocks, key=lambda b: (b.stage, b.index))
    discarded = [b.name for b in order if b.name in discarded_set]

    # -- renumbering (the source's remap_variable) ---------------------------------------------
    stages = sorted({b.stage for b in blocks})
    fmt = "res{}.{}" if blocks[0].style == "cifar" else "group{}/block{}"
    renamed: dict[str, str] = {}
    structure, first_flags, per_stage = [], [], []
    for g in stages:
        in_stage = [b for b in order if b.stage == g]
        per_stage.append(len(in_stage))
        kept = [b for b in in_stage if b.name not in discarded_set]
        first_gone = any(b.index == 0 for b in in_stage) and all(b.index != 0 for b in kept)
        for pos, b in enumerate(kept):
            new = fmt.format(g, pos + (1 if first_gone else 0))
            if new != b.name:
                renamed[b.name] = new
        structure.append(len(kept))
        first_flags.append(1 if first_gone else 0)
        if not quiet:
            say("#block in group%d: %d" % (g, len(kept)))
    rename = _rename_fn(renamed)

    # -- the deploy graph ----------------------------------------------------------------------
    gates = {b.gate: b for b in blocks}
    gone_elt = {b.eltwise: b for b in blocks if b.name in discarded_set}
    drop: set[int] = set(gates)
    for b in gone_elt.values():
        drop |= b.residual | {b.eltwise}
    keep = [i for i in sorted(main) if i not in drop]

    def resolve(p: int | None, blob: str, who: str) -> str:
        if p is None:
            return blob
        if p in gates:
            return resolve(prod[p][0], layers[p].bottom[0], who)
        if p in gone_elt:
            b = gone_elt[p]
            k = b.shortcut_bottom
            return resolve(prod[p][k], layers[p].bottom[k], who)
        if p in drop:
            raise ToolError(f"layer '{who}' reads '{blob}' from '{layers[p].name}', which belongs to the "
                            "discarded residual branch of a block: the block is not self-contained")
        return blob

    deploy = pb.NetParameter(name=param.name)
    old_name: dict[str, str] = {}
    data_tops: dict[int, list[str]] = {}
    for i in keep:
        lp = layers[i]
        cls = layer_class(lp.type)
        if cls.is_data and not cls.is_input:
            data_tops[i] = []
    for i in keep:
        lp = layers[i]
        if i in data_tops:
            continue
        new = deploy.layer.add()
        new.CopyFrom(lp)
        new.ClearField("include")
        new.ClearField("exclude")
        new.ClearField("blobs")
        new.ClearField("loss_weight")
        new.name = rename(lp.name)
        del new.bottom[:]
        for k, b in enumerate(lp.bottom):
            p = prod[i][k]
            if p in data_tops:
                if b not in data_tops[p]:
                    data_tops[p].append(b)
            new.bottom.append(rename(resolve(p, b, lp.name)))
        del new.top[:]
        new.top.extend(rename(t) for t in lp.top)
        old_name[new.name] = lp.name
    if data_tops:
        shapes: dict[str, tuple[int, ...]] = {}
        if input_shape is not None:
            tops = [t for ts in data_tops.values() for t in ts]
            if len(tops) != 1:
                raise ToolError(f"--input-shape gives one shape, the deploy net reads {len(tops)} data blobs "
                                f"({', '.join(tops)})")
            shapes[tops[0]] = tuple(int(d) for d in input_shape)
        else:
            try:
                probe = Net(param, phase=pb.TEST, verbose=False, source=train_prototxt)
            except (NetcompressError, OSError) as e:
                raise ToolError(f"{train_prototxt}: building the TEST net to learn the input shape failed "
                                f"({net_error_text(e, train_prototxt)}); give --input-shape N,C,H,W") from e
            for ts in data_tops.values():
                for t in ts:
                    shapes[t] = probe.blob_shapes[t]
        inputs = []
        for i, ts in data_tops.items():
            if not ts:
                continue
            inp = pb.LayerParameter(name=layers[i].name, type="Input", top=ts)
            for t in ts:
                inp.input_param.shape.add(dim=list(shapes[t]))
            inputs.append(inp)
        rest = list(deploy.layer)
        del deploy.layer[:]
        deploy.layer.extend(inputs + rest)
    names = [l.name for l in deploy.layer]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ToolError(f"renumbering the kept blocks gives two layers the name(s) {', '.join(dup)}; rename "
                        "the shortcut layers of the discarded blocks")

    # -- ChannelPad as a frozen 1x1 Convolution ------------------------------------------------
    pad_weights: dict[str, torch.Tensor] = {}
    made = f"the deploy net made from {train_prototxt}"  # (a net that does not build names the train prototxt)
    if caffe_compatible:
        shaped = Net(deploy, phase=pb.TEST, verbose=False, source=made)
        for j, lp in enumerate(deploy.layer):
            if lp.type == "ChannelPad":
                conv, w = channel_pad_as_convolution(lp, int(shaped.blob_shapes[lp.bottom[0]][1]))
                deploy.layer[j].CopyFrom(conv)
                pad_weights[conv.name] = w
        bad = [(l.name, l.type) for l in deploy.layer if l.type not in BVLC_LAYER_TYPES]
        if bad:
            raise ToolError("--caffe-compatible: these layers have no BVLC Caffe form: "
                            + ", ".join(f"'{n}' ({t})" for n, t in bad)
                            + " (convert DNS/INQ layers with dns_to_normal / inq_to_normal first)")

    # -- weights -------------------------------------------------------------------------------
    net = Net(deploy, phase=pb.TEST, verbose=False, source=made)
    with torch.no_grad():
        for name, layer in net.named_layers():
            if not layer.blob_names:
                continue
            if name in pad_weights:
                getattr(layer, layer.blob_names[0]).copy_(pad_weights[name])
                continue
            old = old_name[name]
            sl = stored.get(old)
            if sl is None or len(sl.blobs) != len(layer.blob_names):
                raise ToolError(f"{weights}: layer '{old}' stores {0 if sl is None else len(sl.blobs)} blobs, "
                                f"its compressed copy '{name}' ({layer.type_name}) needs {len(layer.blob_names)}")
            for k, bn in enumerate(layer.blob_names):
                t = getattr(layer, bn)
                arr = ncio.blob_to_array(sl.blobs[k])
                if arr.size != t.numel():
                    raise ToolError(f"{weights}: layer '{old}' blob {k} has shape {fmt_shape(arr.shape)}, "
                                    f"'{name}' needs {fmt_shape(t.shape)}")
                t.copy_(torch.from_numpy(np.ascontiguousarray(arr.reshape(tuple(t.shape)))))
    ncio.write_text_proto(out_prototxt, deploy)
    net.save(out_model)

    # -- the .cfg --------------------------------------------------------------------------------
    n_field = per_stage[0] if len(set(per_stage)) == 1 else per_stage
    if cfg_path is None:
        cfg_path = os.path.join(os.path.dirname(os.path.abspath(out_model)), f"compressed_model_{step}.cfg")
    text = format_cfg(n_field, os.path.abspath(out_model), step, discarded, blocks[0].style == "cifar",
                      first_flags, structure, val_error)
    ncio.atomic_write(cfg_path, text)
    if caffe_compatible:
        check_bvlc_net(out_prototxt, out_model)
    res = CompressResult(blocks=[b.name for b in blocks], discarded=discarded, structure=structure,
                         discard_first_block=first_flags, stages=stages, renamed=renamed, step=step,
                         val_error=val_error, cfg_path=cfg_path, cfg_text=text, deploy=deploy,
                         params_after=count_parameters(net))
    if not quiet:
        say(f"discarded blocks ({len(discarded)} of {len(blocks)}): {discarded}")
        say("The first block is discarded: %s" % dict(zip(stages, first_flags)))
        say(f"Wrote {out_prototxt}, {out_model} ({res.params_after} learnable parameters) and {cfg_path}"
            + (" (BVLC Caffe types only; checked)" if caffe_compatible else ""))
    return res


def compress_epsilon_resnet_main(argv: Sequence[str] | None = None) -> int:
    """`compress_epsilon_resnet <train.prototxt> <weights> <out_deploy.prototxt> <out.caffemodel>
    (--log train.log --iter N | --solverstate S) [--criterion ema1|gate] [--cfg F] [--caffe-compatible]`"""
    p = argparse.ArgumentParser(
        prog="netcompress compress_epsilon_resnet",
        description="Drop the discarded blocks and side branches of a trained ε-ResNet: writes a deploy "
                    "prototxt, its caffemodel and compressed_model_<step>.cfg (the source's compressModel.py).")
    p.add_argument("train_prototxt", help="the train/val prototxt the weights were trained with")
    p.add_argument("weights", help="its .caffemodel at the chosen step")
    p.add_argument("out_prototxt", help="the deploy prototxt to write")
    p.add_argument("out_model", help="the .caffemodel to write")
    p.add_argument("--log", dest="log_path", help="the training log (its epoch-end is_discarded lines)")
    p.add_argument("--iter", dest="iteration", type=int, help="the epoch-end iteration of --log to use")
    p.add_argument("--solverstate", help="take the EMAs and the step from this snapshot instead of a log")
    p.add_argument("--criterion", choices=["ema1", "gate"], default="ema1",
                   help="ema1 (default): the EMA prints as 1 ('.5g'), as the source; gate: the gate is 0 "
                        "on every TEST batch of these weights")
    p.add_argument("--gate-iters", type=int, default=None,
                   help="TEST batches for --criterion gate (default: one pass over the TEST data)")
    p.add_argument("--cfg", dest="cfg_path", help="the .cfg to write (default compressed_model_<step>.cfg "
                                                  "beside the output caffemodel)")
    p.add_argument("--caffe-compatible", action="store_true",
                   help="only BVLC layer types: ChannelPad becomes a frozen 1x1 Convolution")
    p.add_argument("--output", default=None, help="the logits blob (default: the bottom of the one loss "
                                                  "with weight >= 1)")
    p.add_argument("--input-shape", default=None, help="N,C,H,W of the deploy input (default: the TEST "
                                                       "data layer's)")

    def run(a: argparse.Namespace) -> int:
        if (a.log_path is None) == (a.solverstate is None):
            raise ToolError("give either --log with --iter, or --solverstate")
        compress_epsilon_resnet(
            a.train_prototxt, a.weights, a.out_prototxt, a.out_model, log_path=a.log_path,
            iteration=a.iteration, solverstate=a.solverstate, criterion=a.criterion, cfg_path=a.cfg_path,
            caffe_compatible=a.caffe_compatible, output=a.output, gate_iters=a.gate_iters,
            input_shape=comma_ints(a.input_shape, "--input-shape") if a.input_shape else None)
        return 0
    return run_tool(p, argv, run)
