"""Caffe's view of a net's graph: the Split layers it inserts, and its backward analysis.

Caffe's `InsertSplits` (util/insert_splits.cpp) puts a Split layer after every top that more than one
bottom reads (or a bottom and a loss weight), and renames those bottoms to the Split's tops
(`<blob>_<layer>_<top index>_split_<k>`). `Net::Init` then decides, layer by layer, which layers
need a backward and which bottoms get a diff: forward, a layer needs one if a bottom needs one or a
parameter has `lr_mult != 0`; backward, a layer that feeds no loss, or all of whose tops skip
propagation, needs none; `force_backward` turns every layer on afterwards (Caffe logs the analysis
before that), except for the bottoms a layer's `allow_force_backward` refuses.

The core `Net` logs both as Caffe does (its set-up log names the Split layers; it does not build
them: a blob read twice is simply read twice), and `netcompress.pycaffe` shows the net through them.
This module imports neither.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from .proto import caffe_pb2 as pb

__all__ = ["SplitLayer", "SplitPlan", "split_blob_name", "plan_splits", "remove_splits", "GraphLayer",
           "BackwardNeeds", "backward_needs", "param_needs_backward"]


@dataclasses.dataclass
class SplitLayer:
    name: str
    bottom: str
    tops: list[str]
    loss_weight: float  # of its first top; 0 when none

    def top_loss(self) -> list[float]:
        """Each top's loss weight, as ConfigureSplitLayer gives them (the first carries the weight)."""
        return [self.loss_weight] + [0.0] * (len(self.tops) - 1)

    def graph_layer(self) -> "GraphLayer":
        return GraphLayer(name=self.name, bottoms=[self.bottom], tops=self.tops, loss=self.top_loss(),
                          param_need=False, propagate_down=None, allow_force=[True])


@dataclasses.dataclass
class SplitPlan:
    bottoms: list[list[str]]        # each layer's bottoms, renamed to the Split tops they read
    splits: list[list[SplitLayer]]  # the Split layers Caffe puts after each layer
    cleared: list[bool]             # InsertSplits cleared the layer's loss_weight (a Split carries it)


def split_blob_name(layer: str, blob: str, index: int, k: int) -> str:
    return f"{blob}_{layer}_{index}_split_{k}"


def plan_splits(layers: Sequence[pb.LayerParameter]) -> SplitPlan:
    """Caffe's InsertSplits over a (phase-filtered) net's layers. A bottom that no earlier top
    produces is left as it is (the net reports it where it builds that layer)."""
    last_top: dict[str, tuple[int, int]] = {}
    source: dict[tuple[int, int], tuple[int, int]] = {}
    uses: dict[tuple[int, int], int] = {}
    weight: dict[tuple[int, int], float] = {}
    for i, lp in enumerate(layers):
        for j, b in enumerate(lp.bottom):
            src = last_top.get(b)
            if src is None:
                continue
            source[(i, j)] = src
            uses[src] = uses.get(src, 0) + 1
        for j, t in enumerate(lp.top):
            last_top[t] = (i, j)
        for j in range(min(len(lp.loss_weight), len(lp.top))):
            src = last_top[lp.top[j]]
            weight[src] = float(lp.loss_weight[j])
            if lp.loss_weight[j]:
                uses[src] = uses.get(src, 0) + 1
    taken: dict[tuple[int, int], int] = {}
    plan = SplitPlan([], [], [])
    for i, lp in enumerate(layers):
        bottoms = list(lp.bottom)
        for j, b in enumerate(bottoms):
            src = source.get((i, j))
            if src is not None and uses.get(src, 0) > 1:
                bottoms[j] = split_blob_name(layers[src[0]].name, b, src[1], taken.get(src, 0))
                taken[src] = taken.get(src, 0) + 1
        splits: list[SplitLayer] = []
        cleared = False
        for j, t in enumerate(lp.top):
            n = uses.get((i, j), 0)
            if n > 1:
                w = weight.get((i, j), 0.0)
                splits.append(SplitLayer(f"{t}_{lp.name}_{j}_split", t,
                                         [split_blob_name(lp.name, t, j, k) for k in range(n)], w))
                if w:
                    cleared = True  # the Split's first top carries the weight; the loss reads it
                    taken[(i, j)] = taken.get((i, j), 0) + 1
        plan.bottoms.append(bottoms)
        plan.splits.append(splits)
        plan.cleared.append(cleared)
    return plan


def remove_splits(net: pb.NetParameter) -> pb.NetParameter:
    """`net` without its Split layers, as before InsertSplits: a bottom that read a Split's top reads the
    Split's bottom, and a loss weight InsertSplits moved onto a Split goes back to the top it weighs. Caffe
    writes its Split layers into a caffemodel; they hold no blobs, and their names follow their layers' and
    blobs' names, so a tool that renames a model's layers drops them (the net that loads it inserts its own)."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    source: dict[str, str] = {}          # a Split's top -> the blob it copies
    producer: dict[str, tuple[int, int]] = {}  # blob -> (index in out.layer, top index) of its last writer
    for lp in net.layer:
        if lp.type == "Split" and len(lp.bottom) == 1:
            blob = source.get(lp.bottom[0], lp.bottom[0])
            for t in lp.top:
                source[t] = blob
            weight = next((w for w in lp.loss_weight if w), 0.0)
            if weight and blob in producer:
                # (the layer's own loss_weight, if any, is the 1 a loss layer's set-up gave it after
                # InsertSplits cleared the written one: Caffe's ToProto writes that)
                i, j = producer[blob]
                writer = out.layer[i]
                if len(writer.loss_weight) < len(writer.top):
                    writer.loss_weight.extend([0.0] * (len(writer.top) - len(writer.loss_weight)))
                writer.loss_weight[j] = weight
            continue
        layer = out.layer.add()
        layer.CopyFrom(lp)
        for j, b in enumerate(lp.bottom):
            layer.bottom[j] = source.get(b, b)
        for j, t in enumerate(lp.top):
            producer[t] = (len(out.layer) - 1, j)
    return out


def param_needs_backward(lp: pb.LayerParameter, num_blobs: int) -> bool:
    """Whether a layer's parameters make it need a backward: a blob whose ParamSpec (the default's
    lr_mult is 1) has lr_mult != 0, as Net::Init decides."""
    return any((lp.param[i].lr_mult if i < len(lp.param) else 1.0) != 0 for i in range(num_blobs))


@dataclasses.dataclass
class GraphLayer:
    name: str
    bottoms: list[str]
    tops: list[str]
    loss: list[float]                    # each top's loss weight
    param_need: bool                     # `param_needs_backward`
    propagate_down: list[bool] | None    # the prototxt's, when given
    allow_force: list[bool]              # each bottom's allow_force_backward


@dataclasses.dataclass
class BackwardNeeds:
    logged: list[bool]          # each layer's need as Caffe logs it (before force_backward)
    layer: list[bool]           # after force_backward
    bottom: list[list[bool]]    # each bottom's need of a diff, after force_backward


def backward_needs(layers: Sequence[GraphLayer], force_backward: bool) -> BackwardNeeds:
    """Net::Init's analysis over the layers in Caffe's order (Split layers included). Blobs are
    named: Caffe's blob ids and names agree (a name is re-used only in place)."""
    blob_need: dict[str, bool] = {}
    layer_need: list[bool] = []
    bottom_need: list[list[bool]] = []
    for gl in layers:
        need = gl.param_need
        bn = []
        for k, b in enumerate(gl.bottoms):
            need |= blob_need.get(b, False)
            bn.append(bool(gl.propagate_down[k]) if gl.propagate_down is not None
                      else blob_need.get(b, False))
        layer_need.append(need)
        bottom_need.append(bn)
        if need:
            for t in gl.tops:
                blob_need[t] = True
    under_loss: set[str] = set()
    skip: set[str] = set()
    for i in range(len(layers) - 1, -1, -1):
        gl = layers[i]
        contributes, skip_down = False, True
        for j, t in enumerate(gl.tops):
            if gl.loss[j] or t in under_loss:
                contributes = True
            if t not in skip:
                skip_down = False
            if contributes and not skip_down:
                break
        if layer_need[i] and skip_down:
            layer_need[i] = False
            bottom_need[i] = [False] * len(bottom_need[i])
        if not contributes:
            layer_need[i] = False
        for k, b in enumerate(gl.bottoms):
            if contributes:
                under_loss.add(b)
            else:
                bottom_need[i][k] = False
            if not bottom_need[i][k]:
                skip.add(b)
    logged = list(layer_need)
    if force_backward:
        for i, gl in enumerate(layers):
            layer_need[i] = True
            bottom_need[i] = [n or gl.allow_force[k] for k, n in enumerate(bottom_need[i])]
    return BackwardNeeds(logged, layer_need, bottom_need)
