"""`Net`: a Caffe NetParameter built into an nn.Module for one phase.

Follows Caffe's `Net::Init`: layers are filtered by the NetState (phase, level, stages), built in
order with the shapes of their bottoms, and each top's shape is logged as Caffe logs it. Blobs are
addressed by name; a top that repeats its bottom's name is in place; a top used by several layers
needs no Split layer (autograd sums the gradients). Loss tops are weighed by `loss_weight` (1 for
the first top of a *Loss layer); `propagate_down: false` stops the gradient into that bottom;
`param { name }` shares a blob between layers; `lr_mult`/`decay_mult` are kept for the solver.

As in Caffe: `force_backward: true` overrides `propagate_down: false` (the bottom gets its diff);
parameters with `lr_mult: 0` get no gradient unless the net forces backward; layer names need not
be unique (a warning says so): weights copy into the first layer of a name, and `layer(name)`
finds the last (Caffe's `layer_by_name`).
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections import OrderedDict
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from . import io as ncio
from .device import checked_device
from .errors import NetcompressError, NetDefinitionError, SettingError, WeightLoadError
from .debuginfo import DebugRecorder
from .graph import GraphLayer, SplitLayer, SplitPlan, backward_needs, param_needs_backward, plan_splits
from .layers.base import INT_MAX, Layer, LayerContext, Shape, check_blob_count, create_layer, layer_class
from .log import get_logger
from .proto import caffe_pb2 as pb
from .rng import CaffeRNG

log = get_logger("net")

__all__ = ["Net", "ParamEntry", "filter_net", "state_meets_rule"]


# ----------------------------------------------------------------------------------------------
# Phase / level / stage filtering (Caffe's Net::FilterNet and StateMeetsRule)
# ----------------------------------------------------------------------------------------------

def state_meets_rule(state: pb.NetState, rule: pb.NetStateRule, layer_name: str, verbose: bool = True) -> bool:
    def say(msg: str) -> None:
        if verbose:
            log.info(msg)

    if rule.HasField("phase") and rule.phase != state.phase:
        say(f"The NetState phase ({state.phase}) differed from the phase ({rule.phase}) "
            f"specified by a rule in layer {layer_name}")
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        say(f"The NetState level ({state.level}) is below the min_level ({rule.min_level}) "
            f"specified by a rule in layer {layer_name}")
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        say(f"The NetState level ({state.level}) is above the max_level ({rule.max_level}) "
            f"specified by a rule in layer {layer_name}")
        return False
    stages = set(state.stage)
    for s in rule.stage:
        if s not in stages:
            say(f"The NetState did not contain stage '{s}' specified by a rule in layer {layer_name}")
            return False
    for s in rule.not_stage:
        if s in stages:
            say(f"The NetState contained a not_stage '{s}' specified by a rule in layer {layer_name}")
            return False
    return True


def filter_net(param: pb.NetParameter, state: pb.NetState, verbose: bool = True) -> pb.NetParameter:
    """The layers of `param` that the NetState selects (include/exclude rules)."""
    out = pb.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for layer in param.layer:
        if len(layer.include) and len(layer.exclude):
            raise NetDefinitionError(f"layer '{layer.name}' (type {layer.type}) specifies both include and exclude; "
                                     "specify at most one of them")
        keep = len(layer.include) == 0
        for rule in layer.exclude:
            if state_meets_rule(state, rule, layer.name, verbose):
                keep = False
        for rule in layer.include:
            if state_meets_rule(state, rule, layer.name, verbose):
                keep = True
        if keep:
            out.layer.add().CopyFrom(layer)
    return out


# ----------------------------------------------------------------------------------------------
# Net
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ParamEntry:
    """One of Caffe's `learnable_params_`: every layer blob, in layer and blob order, owners only.

    Caffe treats every blob as a parameter (masks and BatchNorm statistics too), so solver-state
    history follows this order; `learnable` says whether the optimizer may update it (masks and
    statistics are buffers in netcompress, see Decision 2).
    """

    layer: str
    index: int
    tensor: torch.Tensor
    lr_mult: float
    decay_mult: float
    learnable: bool
    name: str = ""  # the ParamSpec name if shared
    module: str = ""  # the layer's key in `Net.layers` (layer names may repeat; keys do not)

    @property
    def key(self) -> str:
        return f"{self.layer}[{self.index}]"


def _escape(name: str) -> str:
    # nn.Module names cannot contain '.'; keep the mapping reversible.
    return name.replace("%", "%25").replace(".", "%2E")


def _module_key(name: str, occurrence: int) -> str:
    """The `Net.layers` key of the `occurrence`-th (1-based) layer named `name`: the escaped name,
    then `%23<k>` ('#k') for repeats, which no escaped name can end with ('%' is escaped)."""
    key = _escape(name)
    return key if occurrence == 1 else f"{key}%23{occurrence}"


def _shape_str(shape: Shape) -> str:
    if len(shape) == 0:
        return "(1)"
    return " ".join(str(d) for d in shape) + f" ({math.prod(shape)})"



def reshaped_bottoms_error(layer, names: Sequence[str], xs: Sequence[torch.Tensor],
                           error: BaseException) -> "NetcompressError | None":
    """The error of `layer` failing on bottoms of other shapes than it was set up for (its own checks ran at set-up
    only), naming each such bottom then and at set-up; None where every bottom has its set-up shape."""
    changed = [f"'{b}' is {list(x.shape)}, was {list(s)}" for b, x, s in zip(names, xs, layer.bottom_shapes)
               if x is not None and tuple(x.shape) != tuple(s)]
    if not changed:
        return None
    return layer.error(f"cannot run on bottoms of other shapes than it was set up for ({'; '.join(changed)}): "
                       f"{error}")

class Net(nn.Module):
    """A Caffe net for one phase. See the module docstring.

    Args:
        param: a NetParameter or the path of a net prototxt.
        phase: `caffe_pb2.TRAIN` or `caffe_pb2.TEST` (or "train"/"test").
        level, stages: NetState level and stages for include/exclude rules.
        weights: optional .caffemodel to copy in after building (Caffe's rules).
        device, dtype: where the blobs live.
        seed: seeds the fillers (and is given to layers as the solver's random_seed).
        options: recipe options by name (`netcompress.options`), given to every layer's context.
        rng: the Caffe-compatible stream to draw from (a solver's test nets continue its train net's
            stream, as in Caffe); by default a new one seeded with seed + rank.
        verbose: log Caffe's set-up lines (top shapes, memory, backward needs).
        source: the file a NetParameter `param` was read from (errors name it); a path `param`
            names itself.
    """

    def __init__(self, param: pb.NetParameter | str, phase: int | str = pb.TEST, level: int = 0,
                 stages: Iterable[str] = (), *, weights: str | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int | None = None, rank: int = 0, world_size: int = 1, verbose: bool = True,
                 state: pb.NetState | None = None, options: dict | None = None, rng: CaffeRNG | None = None,
                 source: str | None = None):
        super().__init__()
        if isinstance(param, (bytes, os.PathLike)):
            param = os.fsdecode(param)
        if not isinstance(param, (str, pb.NetParameter)):
            raise TypeError(f"Net takes a prototxt path or a NetParameter, got {type(param).__name__}")
        self.source = param if isinstance(param, str) else (source or "<NetParameter>")
        if isinstance(param, str):
            param = ncio.read_net(param)
        else:
            from .upgrade import net_needs_upgrade, upgrade_net
            if net_needs_upgrade(param):
                p = pb.NetParameter()
                p.CopyFrom(param)
                param = upgrade_net(p)
        phase = {"train": pb.TRAIN, "test": pb.TEST}.get(phase.lower(), phase) if isinstance(phase, str) else phase
        if isinstance(phase, bool) or not isinstance(phase, (int, np.integer)) or phase not in (pb.TRAIN, pb.TEST):
            raise ValueError(f"{self.source}: phase must be 'train' or 'test' (or caffe_pb2.TRAIN / TEST), got {phase!r}")
        if state is None:
            state = pb.NetState(phase=phase, level=level, stage=list(stages))
            if param.HasField("state"):
                # The prototxt's own state is the default; explicit arguments win.
                merged = pb.NetState()
                merged.CopyFrom(param.state)
                merged.MergeFrom(state)
                merged.phase = phase
                state = merged
        self.state = state
        self.phase: int = state.phase
        self.verbose = verbose
        try:
            filtered = filter_net(param, state, verbose)
        except NetcompressError as e:
            raise _naming_source(e, self.source) from None
        filtered.state.CopyFrom(state)
        self.param = filtered
        self.name: str = filtered.name
        self.device = checked_device(device, f"net '{self.name}'")
        self.dtype = dtype
        # Caffe seeds its global stream with random_seed + solver rank before building the nets.
        gen = rng if rng is not None else CaffeRNG(None if seed is None or seed < 0 else seed + rank)
        from .options import check_options

        self.ctx = LayerContext(phase=self.phase, device=self.device, dtype=dtype, generator=gen,
                                seed=seed, rank=rank, world_size=world_size, net_name=self.name,
                                options=check_options(options))
        if verbose:
            log.info("Initializing net from parameters: \n%s", ncio.text_proto(_without_blobs(filtered)))
        self.layers = nn.ModuleDict()
        self.layer_names: list[str] = []
        self._keys: list[str] = []  # each layer's key in self.layers, in layer order
        self._last_key: dict[str, str] = {}  # name -> key of the last layer of that name
        self._first_key: dict[str, str] = {}  # name -> key of the first
        self._bottoms: list[list[str]] = []
        self._tops: list[list[str]] = []
        self._prop_down: list[list[bool]] = []
        self.loss_weights: dict[str, float] = OrderedDict()
        self.blob_shapes: dict[str, Shape] = OrderedDict()
        self.blobs: dict[str, torch.Tensor] = OrderedDict()
        self.input_names: list[str] = []
        self._fed: dict[str, torch.Tensor] = {}
        self._param_owner: dict[str, tuple[str, int]] = {}
        self._params: list[ParamEntry] = []
        self._sources: list[int] | None = None  # the data layers' indices (_source_layers)
        # Caffe's debug_info (netcompress.debuginfo): the NetParameter's, and the solver's on display iterations
        self.debug_info = bool(param.debug_info)
        self._debug = DebugRecorder(self)
        try:
            self._build(filtered)
        except NetcompressError as e:
            # Layers name themselves; the file is named here, once, for every set-up error.
            raise _naming_source(e, self.source) from None
        if weights:
            self.copy_from(weights)

    # -- construction ----------------------------------------------------------------------
    def _build(self, param: pb.NetParameter) -> None:
        available: dict[str, None] = OrderedDict()  # blobs produced and not yet consumed
        memory = 0
        seen_names: dict[str, int] = {}
        # Caffe's Split layers are not built (a blob read twice is read twice), but the log names
        # them, their tops and their memory as Caffe's does, and the backward analysis runs over them.
        splits = self._splits = plan_splits(param.layer)
        self.split_names = {sp.name for layer_splits in splits.splits for sp in layer_splits}
        top_loss: list[list[float]] = []
        for li, lp in enumerate(param.layer):
            name = lp.name
            if not name:
                raise NetDefinitionError(f"{self.source}: a layer of type '{lp.type}' has no name")
            occurrence = seen_names.get(name, 0) + 1
            seen_names[name] = occurrence
            if occurrence == 2:
                # Caffe accepts repeated names (e.g. its mnist_autoencoder's two 'loss' layers).
                log.warning("%s: more than one layer is named '%s' in the %s net; as in Caffe, weights "
                            "copy into the first of them and name lookups find the last", self.source, name,
                            "TRAIN" if self.phase == pb.TRAIN else "TEST")
            key = _module_key(name, occurrence)
            if not lp.type:
                raise NetDefinitionError(f"{self.source}: layer '{name}' has no type")
            lp_local = pb.LayerParameter()
            lp_local.CopyFrom(lp)
            if not lp_local.HasField("phase"):
                lp_local.phase = self.phase
            if self.verbose:
                log.info("Creating layer %s", name)  # Caffe's layer_factory line
            cls = layer_class(lp.type)
            constructed = cls.construct(lp_local, self.ctx)  # the layer's constructor work (a Data layer's open)
            if constructed is not None:
                self.ctx.keep_constructed(name, constructed)
            if self.verbose:
                log.info("Creating Layer %s", name)
            bottom_shapes = []
            for i, b in enumerate(lp.bottom):
                if b not in self.blob_shapes:
                    raise NetDefinitionError(
                        f"{self.source}: Unknown bottom blob '{b}' (layer '{name}', bottom index {i}); "
                        f"blobs available at this point: {', '.join(self.blob_shapes) or 'none'}")
                bottom_shapes.append(self.blob_shapes[b])
                if self.verbose:
                    log.info("%s <- %s", name, splits.bottoms[li][i])
            tops = list(lp.top)
            n_auto = max(0, (cls.min_tops or 0) - len(tops)) if cls.auto_top else 0
            # Caffe's anonymous tops: logged as "(automatic)", counted in the loss, never a net output.
            auto_tops = [f"(automatic) {name}#{len(tops) + k}" for k in range(n_auto)]
            self._check_counts(cls, lp, len(tops) + n_auto)
            if cls.is_loss and len(lp_local.loss_weight) == 0:
                # Caffe's LossLayer::LayerSetUp records its default weight in its LayerParameter,
                # so a saved model carries `loss_weight: 1` (and ours is byte-identical).
                lp_local.loss_weight.append(1.0)
            # The tops before the layer's set-up (Caffe's AppendTop comes before Layer::SetUp, which logs
            # e.g. a Data layer's "output data size")
            for j, t in enumerate(tops):
                in_place = j < len(lp.bottom) and lp.bottom[j] == t
                if t in self.blob_shapes and not in_place:
                    raise NetDefinitionError(f"{self.source}: Top blob '{t}' produced by multiple "
                                             f"sources (layer '{name}' writes it again, not in place)")
                if self.verbose:
                    log.info("%s -> %s%s", name, t, " (in-place)" if in_place else "")
            for t in auto_tops:
                if self.verbose:
                    log.info("%s -> (automatic)", name)
            if self.verbose:
                for _ in range(cls.factory_children(lp_local)):
                    log.info("Creating layer %s", name)
            layer = create_layer(lp_local, bottom_shapes, self.ctx)
            self.ctx.generator.skip(cls.setup_draws(lp_local, self.phase))  # Caffe's set-up draws
            for b in lp.bottom:
                available.pop(b, None)
            tops += auto_tops
            if self.verbose:
                log.info("Setting up %s", name)
            shapes = layer.top_shapes(bottom_shapes)
            _check_top_shapes(layer, tops, shapes)
            if len(shapes) != len(tops):
                raise NetDefinitionError(f"layer '{name}' produces {len(shapes)} tops, the prototxt "
                                         f"names {len(tops)}")
            # Loss weights
            if len(lp.loss_weight) and len(lp.loss_weight) != len(tops):
                raise NetDefinitionError(f"layer '{name}': loss_weight must be unspecified or given "
                                         f"once per top blob ({len(tops)}), got {len(lp.loss_weight)}")
            if cls.is_loss and not len(lp.loss_weight) and len(tops) > 1:
                del lp_local.loss_weight[:]
                lp_local.loss_weight.extend([1.0] + [0.0] * (len(tops) - 1))
            weights = []
            for j, (t, s) in enumerate(zip(tops, shapes)):
                self.blob_shapes[t] = tuple(s)
                if t not in auto_tops:
                    available[t] = None
                w = float(lp.loss_weight[j]) if len(lp.loss_weight) else (1.0 if (j == 0 and layer.is_loss) else 0.0)
                weights.append(w)
                if self.verbose:
                    log.info("Top shape: %s", _shape_str(tuple(s)))
                if w != 0.0:
                    self.loss_weights[t] = w
                    if self.verbose:
                        log.info("    with loss weight %g", w)
                memory += math.prod(s) if len(s) else 1
            top_loss.append(weights)
            if self.verbose:
                log.info("Memory required for data: %d", memory * torch.finfo(self.dtype).bits // 8)
            for sp in splits.splits[li]:
                memory += self._log_split(sp)
                if self.verbose:
                    log.info("Memory required for data: %d", memory * torch.finfo(self.dtype).bits // 8)
            if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
                raise NetDefinitionError(f"layer '{name}': propagate_down must be given once per "
                                         f"bottom ({len(lp.bottom)}), got {len(lp.propagate_down)}")
            self.layers[key] = layer
            self.layer_names.append(name)
            self._keys.append(key)
            self._last_key[name] = key
            self._first_key.setdefault(name, key)
            self._bottoms.append(list(lp.bottom))
            self._tops.append(tops)
            self._prop_down.append([bool(p) for p in lp.propagate_down] if len(lp.propagate_down)
                                   else [True] * len(lp.bottom))
            if layer.is_input:
                self.input_names.extend(tops)
            # The layer's own copy, as Caffe's AppendParam reads it (BatchNorm adds lr_mult 0 specs).
            self._append_params(layer, layer.layer_param, key)
        self.output_names: list[str] = sorted(available)  # Caffe iterates a std::set: sorted
        self.data_bytes = memory * torch.finfo(self.dtype).bits // 8  # Caffe's "Memory required for data"
        self._log_backward_needs(param, splits, top_loss)
        if self.verbose:
            for o in self.output_names:
                log.info("This network produces output %s", o)
            log.info("Network initialization done.")

    def _check_counts(self, layer: type[Layer], lp: pb.LayerParameter, nt: int) -> None:
        # (the bottom count: create_layer checks it, for every caller)
        check_blob_count(lp, nt, layer.min_tops, layer.max_tops, "top")

    def _append_params(self, layer: Layer, lp: pb.LayerParameter, key: str) -> None:
        for i, bname in enumerate(layer.blob_names):
            spec = lp.param[i] if i < len(lp.param) else pb.ParamSpec()
            tensor = getattr(layer, bname)
            pname = spec.name
            if pname and pname in self._param_owner:
                owner_key, owner_idx = self._param_owner[pname]
                owner = self.layers[owner_key]
                owner_layer = owner.name
                otensor = getattr(owner, owner.blob_names[owner_idx])
                if spec.share_mode == pb.ParamSpec.PERMISSIVE:
                    ok = otensor.numel() == tensor.numel()
                else:
                    ok = tuple(otensor.shape) == tuple(tensor.shape)
                if not ok:
                    raise NetDefinitionError(
                        f"layer '{lp.name}': cannot share param '{pname}' owned by layer '{owner_layer}': "
                        f"owner shape is {list(otensor.shape)}, sharing layer expects {list(tensor.shape)}"
                        f"{' (same count required, PERMISSIVE)' if spec.share_mode == pb.ParamSpec.PERMISSIVE else ''}")
                if spec.share_mode == pb.ParamSpec.PERMISSIVE and otensor.shape != tensor.shape:
                    raise NetDefinitionError(f"layer '{lp.name}': PERMISSIVE sharing of '{pname}' with a "
                                             "different shape is not supported; reshape the layer")
                entry = next(e for e in self._params if e.module == owner_key and e.index == owner_idx)
                if spec.HasField("lr_mult") and entry.lr_mult != spec.lr_mult:
                    raise NetDefinitionError(f"Shared param '{pname}' has mismatched lr_mult "
                                             f"({entry.lr_mult} in '{owner_layer}', {spec.lr_mult} in '{lp.name}')")
                if spec.HasField("decay_mult") and entry.decay_mult != spec.decay_mult:
                    raise NetDefinitionError(f"Shared param '{pname}' has mismatched decay_mult "
                                             f"({entry.decay_mult} in '{owner_layer}', {spec.decay_mult} in '{lp.name}')")
                if isinstance(otensor, nn.Parameter):
                    layer._parameters[bname] = otensor
                else:
                    layer._buffers[bname] = otensor
                continue
            if pname:
                self._param_owner[pname] = (key, i)
            learnable = isinstance(tensor, nn.Parameter)
            if learnable and spec.lr_mult == 0 and not self.param.force_backward:
                # Caffe's AppendParam: param_propagate_down is lr_mult != 0, so no diff is computed
                # (force_backward turns every param_propagate_down back on).
                tensor.requires_grad_(False)
            self._params.append(ParamEntry(layer=lp.name, index=i, tensor=tensor, lr_mult=float(spec.lr_mult),
                                           decay_mult=float(spec.decay_mult), learnable=learnable, name=pname,
                                           module=key))

    def _log_split(self, sp: SplitLayer) -> int:
        """Log a Split layer's set-up as Caffe's does; returns its tops' count of values."""
        shape = self.blob_shapes[sp.bottom]
        count = math.prod(shape) if len(shape) else 1
        if self.verbose:
            log.info("Creating layer %s", sp.name)  # Caffe's layer_factory line
            log.info("Creating Layer %s", sp.name)
            log.info("%s <- %s", sp.name, sp.bottom)
            for t in sp.tops:
                log.info("%s -> %s", sp.name, t)
            log.info("Setting up %s", sp.name)
            for k in range(len(sp.tops)):
                log.info("Top shape: %s", _shape_str(shape))
                if k == 0 and sp.loss_weight:
                    log.info("    with loss weight %g", sp.loss_weight)
        return count * len(sp.tops)

    def _log_backward_needs(self, param: pb.NetParameter, splits: SplitPlan, top_loss: list[list[float]]) -> None:
        """Caffe's 'needs backward computation' analysis (netcompress.graph), over the layers and the
        Split layers Caffe would insert: logged as Caffe logs it, kept whole in `backward` (a
        BackwardNeeds in Caffe's layer order, each layer followed by its Split layers: pycaffe's view)
        and by layer name in `layer_need_backward` (after force_backward, as Caffe's
        `layer_need_backward()`)."""
        graph: list[GraphLayer] = []
        core_index: list[int | None] = []
        for li, key in enumerate(self._keys):
            layer = self.layers[key]
            lp = param.layer[li]
            graph.append(GraphLayer(
                name=self.layer_names[li], bottoms=splits.bottoms[li], tops=self._tops[li], loss=top_loss[li],
                param_need=param_needs_backward(layer.layer_param, len(layer.blob_names)),
                propagate_down=[bool(p) for p in lp.propagate_down] if len(lp.propagate_down) else None,
                allow_force=[layer.allow_force_backward(k) for k in range(len(lp.bottom))]))
            core_index.append(li)
            for sp in splits.splits[li]:
                graph.append(sp.graph_layer())
                core_index.append(None)
        needs = self.backward = backward_needs(graph, bool(param.force_backward))
        self._graph = graph  # Caffe's layers, Split layers included (debug_info names them)
        self._graph_index = [gi for gi, li in enumerate(core_index) if li is not None]
        self._split_graph_index: list[list[int]] = [[] for _ in self._keys]
        owner = 0  # the layer a Split follows (the graph starts with a layer)
        for gi, li in enumerate(core_index):
            if li is None:
                self._split_graph_index[owner].append(gi)
            else:
                owner = li
        self.layer_need_backward: dict[str, bool] = {}
        for gi in reversed(range(len(graph))):
            if self.verbose:
                log.info("%s %s backward computation.", graph[gi].name,
                         "needs" if needs.logged[gi] else "does not need")
            if core_index[gi] is not None:
                self.layer_need_backward[graph[gi].name] = needs.layer[gi]

    # -- access ----------------------------------------------------------------------------
    def layer(self, name: str) -> Layer:
        """The layer named `name`; of several so named, the last (Caffe's `layer_by_name`)."""
        try:
            return self.layers[self._last_key[name]]  # type: ignore[return-value]
        except KeyError:
            raise KeyError(f"no layer named '{name}' in net '{self.name}' "
                           f"(layers: {', '.join(self.layer_names)})") from None

    def has_layer(self, name: str) -> bool:
        return name in self._last_key

    def named_layers(self) -> Iterator[tuple[str, Layer]]:
        """Every layer with its name, in order (a repeated name comes once per layer)."""
        for n, key in zip(self.layer_names, self._keys):
            yield n, self.layers[key]  # type: ignore[misc]

    def labelled_layers(self) -> Iterator[tuple[str, Layer]]:
        """Every layer under a unique label for saved state: its name, or `name#k` for the k-th
        layer of a repeated name."""
        seen: dict[str, int] = {}
        for n, key in zip(self.layer_names, self._keys):
            seen[n] = seen.get(n, 0) + 1
            yield (n if seen[n] == 1 else f"{n}#{seen[n]}"), self.layers[key]  # type: ignore[misc]

    def param_layer(self, entry: ParamEntry) -> Layer:
        """The layer that owns parameter `entry` (exact where layer names repeat)."""
        return self.layers[entry.module]  # type: ignore[return-value]

    def learnable_layer_names(self) -> list[str]:
        """Names of the layers that own a learnable parameter, in order."""
        return list(OrderedDict.fromkeys(e.layer for e in self._params if e.learnable))

    @property
    def params(self) -> "OrderedDict[str, list[torch.Tensor]]":
        """Layer name -> its blobs (pycaffe's `net.params`), for layers that have blobs."""
        return OrderedDict((n, l.blobs()) for n, l in self.named_layers() if l.blob_names)

    def _owned_blobs(self) -> set[tuple[str, int]]:
        """(layer key, blob index) of every blob its layer owns (Caffe's param_owners_ == -1); the
        others are shared from an earlier layer's."""
        return {(e.module, e.index) for e in self._params}

    def learnable_params(self) -> list[ParamEntry]:
        """Caffe's learnable_params_ order (every owned blob; see ParamEntry)."""
        # Tensors may have been replaced (sharing with another net); re-read them.
        for e in self._params:
            layer = self.layers[e.module]
            e.tensor = getattr(layer, layer.blob_names[e.index])
        return list(self._params)

    def rng_state(self) -> "OrderedDict[str, torch.Tensor]":
        """Snapshot hook: the generator state of every layer that draws random numbers in its
        forward (Dropout, STOCHASTIC pooling, DummyData), by layer name (uint8 CPU tensors)."""
        states: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for name, layer in self.labelled_layers():
            state = layer.rng_state()
            if state is not None:
                states[name] = state
        return states

    def set_rng_state(self, states: "dict[str, torch.Tensor]", strict: bool = True) -> None:
        """Restore what `rng_state()` returned, so a resumed run draws the same numbers (`strict=False`: skip
        the states of layers this net does not have)."""
        layers = dict(self.labelled_layers())
        for name, state in states.items():
            if strict or name in layers:
                layers[name].set_rng_state(state)

    def set_iteration(self, iteration: int) -> None:
        """Tell every layer the solver's iteration (Caffe's set_current_iter_num)."""
        self.iteration = iteration
        for _, layer in self.named_layers():
            layer.set_iteration(iteration)

    def before_train_forward(self) -> None:
        """Run the layers' pre-forward state changes (e.g. mask updates) in order."""
        for _, layer in self.named_layers():
            layer.before_train_forward()

    def before_backward(self) -> None:
        for _, layer in self.named_layers():
            layer.before_backward()

    def after_backward(self) -> None:
        for _, layer in self.named_layers():
            layer.after_backward()

    def epoch_end(self, epoch: int) -> None:
        """Tell every layer that epoch `epoch` (1-based) has ended."""
        for _, layer in self.named_layers():
            layer.epoch_end(epoch)

    def replicated_state(self) -> "OrderedDict[str, torch.Tensor | None]":
        """Every layer's `replicated_state()`, as "<layer>.<name>" -> tensor: what must be identical
        on every process of a distributed run."""
        out: "OrderedDict[str, torch.Tensor | None]" = OrderedDict()
        for lname, layer in self.labelled_layers():
            for key, t in layer.replicated_state().items():
                out[f"{lname}.{key}" if key.isidentifier() else f"{lname} {key}"] = t
        return out

    def before_snapshot(self) -> None:
        for _, layer in self.named_layers():
            layer.before_snapshot()

    def blobs_of_outputs(self) -> "OrderedDict[str, torch.Tensor]":
        """The output blobs of the last forward, by name."""
        return OrderedDict((o, self.blobs[o]) for o in self.output_names if o in self.blobs)

    def extra_state(self) -> dict:
        """Every layer's `snapshot_state()` (layers that have one), by layer name."""
        out = {}
        for name, layer in self.labelled_layers():
            st = layer.snapshot_state()
            if st is not None:
                out[name] = st
        gens = self.ctx.named_generators()
        if gens:
            out["__net__"] = {"generators": {name: g.get_state() for name, g in gens.items()}}
        return out

    def load_extra_state(self, state: dict | None) -> None:
        """Give each layer its saved state (None for all when the snapshot has none)."""
        for name, layer in self.labelled_layers():
            layer.restore_state(None if state is None else state.get(name))
        net_state = (state or {}).get("__net__") or {}
        for name, gen_state in (net_state.get("generators") or {}).items():
            self.ctx.named_generator(name).set_state(gen_state)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, *args: torch.Tensor, **inputs: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Run the net. Inputs (for Input layers) by blob name, or positionally in input order.

        Returns the output blobs (those no layer consumes) by name; every blob stays available in
        `net.blobs`, and `net.loss` holds the weighted sum of the loss tops.
        """
        if args:
            if len(args) > len(self.input_names):
                raise TypeError(f"net '{self.name}' has {len(self.input_names)} inputs "
                                f"({', '.join(self.input_names)}), got {len(args)} positional tensors")
            inputs = {**dict(zip(self.input_names, args)), **inputs}
        unknown = set(inputs) - set(self.input_names)
        if unknown:
            raise KeyError(f"net '{self.name}' has no input blob(s) {sorted(unknown)}; "
                           f"inputs are {self.input_names}")
        return self._run(inputs, None)

    def data_tops(self) -> "OrderedDict[str, torch.Tensor]":
        """Run only the data layers (those without bottoms: Data, Input, DummyData, ...) and return
        their tops by name, as the next forward would see them. With `forward_with`, a caller (the
        solver's CUDA-graphed step) runs the data layers eagerly and the rest of the net on tensors
        of its own."""
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for li in self._source_layers():
            layer = self.layers[self._keys[li]]
            xs = [self._fed.get(t) for t in self._tops[li]] if layer.is_input else []
            y = layer(*xs)
            for t, v in zip(self._tops[li], (y,) if isinstance(y, torch.Tensor) else y):
                out[t] = v
        return out

    def forward_with(self, tops: "dict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        """`forward()` with the data layers' tops given (see `data_tops`): those layers do not run."""
        missing = [t for li in self._source_layers() for t in self._tops[li] if t not in tops]
        if missing:
            raise KeyError(f"net '{self.name}': forward_with needs every data layer's top; missing {missing}")
        return self._run({}, tops)

    def _source_layers(self) -> list[int]:
        """Indices of the layers that produce blobs without bottoms (the data layers)."""
        if self._sources is None:
            self._sources = [li for li, key in enumerate(self._keys)
                             if self.layers[key].is_data and not self._bottoms[li]]
        return self._sources

    def _run(self, inputs: "dict[str, torch.Tensor]",
             given: "dict[str, torch.Tensor] | None") -> "OrderedDict[str, torch.Tensor]":
        blobs = self.blobs
        blobs.clear()
        force = self.param.force_backward
        for li, key in enumerate(self._keys):
            layer = self.layers[key]
            if given is not None and li in self._source_layers():
                out = tuple(given[t] for t in self._tops[li])
            else:
                if layer.is_input:
                    xs = [self._as_input(inputs[t]) if t in inputs else self._fed.get(t)
                          for t in self._tops[li]]
                else:
                    # Caffe's force_backward overrides propagate_down: false (the bottom gets its diff).
                    xs = [blobs[b] if (pd or force) else blobs[b].detach()
                          for b, pd in zip(self._bottoms[li], self._prop_down[li])]
                    if self.debug_info:
                        xs = self._debug.watch_bottoms(li, xs)
                try:
                    out = layer(*xs)
                except NetcompressError:
                    raise
                except (RuntimeError, IndexError, ValueError) as e:
                    if isinstance(e, torch.cuda.OutOfMemoryError):
                        raise
                    odd_inputs = any(tuple(getattr(v, "shape", ())) != tuple(self.blob_shapes.get(k, ()))
                                     for k, v in inputs.items())
                    changed = reshaped_bottoms_error(layer, self._bottoms[li], xs, e)
                    if changed is not None and not odd_inputs:
                        # bottoms of other shapes than at set-up from inputs of the set-up shapes: a layer above
                        # (a Python layer) reshaped its top in forward, as Caffe allows
                        raise changed from e
                    if not inputs:
                        raise
                    # tensors a caller gave that the layers cannot take: say which layer and which inputs
                    given = ", ".join(f"{k} {list(v.shape)}" for k, v in inputs.items() if hasattr(v, "shape"))
                    raise ValueError(f"net '{self.name}': layer '{layer.name}' ({layer.type_name}) cannot run on the "
                                     f"inputs given ({given}): {e}") from e
                if isinstance(out, torch.Tensor):
                    out = (out,)
            if self.param.force_backward and layer.is_input:
                # Caffe's force_backward: gradients reach the net's inputs too.
                out = tuple(y.detach().requires_grad_() if y.is_floating_point() else y for y in out)
            for t, y in zip(self._tops[li], out):
                blobs[t] = y
            if self.debug_info:
                self._debug.forward(li, out)
        loss = None
        for t, w in self.loss_weights.items():
            term = blobs[t].sum() * w
            loss = term if loss is None else loss + term
        self.loss = loss
        return OrderedDict((o, blobs[o]) for o in self.output_names)

    def log_backward_debug_info(self) -> None:
        """Caffe's debug_info lines of the backward just run (`loss.backward()`), when `debug_info` is on."""
        if self.debug_info:
            self._debug.backward()

    def set_input(self, **tensors) -> None:
        """Values for Input tops that persist across forwards (like pycaffe's `blobs[...].data`),
        e.g. so a solver can train a net whose data comes from an Input layer."""
        unknown = set(tensors) - set(self.input_names)
        if unknown:
            raise KeyError(f"net '{self.name}' has no input blob(s) {sorted(unknown)}; "
                           f"inputs are {self.input_names}")
        for k, v in tensors.items():
            self._fed[k] = self._as_input(v)

    def _as_input(self, x) -> torch.Tensor | None:
        if x is None:
            return None
        x = torch.as_tensor(x)
        return x.to(device=self.device, dtype=self.dtype if x.is_floating_point() else x.dtype)

    # -- weights ---------------------------------------------------------------------------
    def copy_from(self, source: pb.NetParameter | str, *, strict: bool = False,
                  report: bool = True, source_name: str | None = None) -> list[str]:
        """Copy weights by layer name with Caffe's rules (CopyTrainedLayersFrom, fork version).

        Source layers absent here are ignored (logged). A source layer fills the first layer of
        its name. A target layer must receive exactly as many blobs as it holds, except masked
        layers, which may receive fewer (the rest keep their filler values, so a normal model
        loaded into a masked net gets its filler masks). Shapes must match (a legacy 4-D
        num/channels/height/width of the same count is accepted).

        With `report`, learnable layers that received nothing (a layer renamed between net and
        model keeps its random initialization, silently in Caffe) are listed in a WARNING, or
        with `strict` raise `WeightLoadError`. Returns the names of the layers filled.
        A model file that fills no layer at all is an error whatever `strict`
        (`weights.require_some_layer_filled`); NaN or infinite values load with a warning.
        `source_name` names a NetParameter `source` in messages.
        """
        from .weights import require_some_layer_filled, warn_non_finite

        if isinstance(source, (bytes, os.PathLike)):
            source = os.fsdecode(source)
        if not isinstance(source, (str, pb.NetParameter)):
            raise TypeError(f"copy_from takes a caffemodel path or a NetParameter, got {type(source).__name__}")
        path = source if isinstance(source, str) else (source_name or "<NetParameter>")
        if isinstance(source, str):
            source = ncio.read_caffemodel(source)
            require_some_layer_filled(path, source, self)
        filled: list[str] = []
        for sl in source.layer:
            if not self.has_layer(sl.name):
                if self.verbose and sl.name not in self.split_names:  # Caffe's net has that Split layer
                    log.info("Ignoring source layer %s", sl.name)
                continue
            layer = self.layers[self._first_key[sl.name]]
            if self.verbose:
                log.info("Copying source layer %s Type:%s #blobs=%d", sl.name, sl.type, len(sl.blobs))
            n_src, n_dst = len(sl.blobs), len(layer.blob_names)
            if n_src != n_dst and not (layer.accepts_partial_blobs and n_src < n_dst):
                raise WeightLoadError(
                    f"{path}: Incompatible number of blobs for layer '{sl.name}': the model has "
                    f"{n_src}, the net's {layer.type_name} layer expects {n_dst}"
                    + (_convert_hint(sl.type) if n_src > n_dst else ""))
            key = self._first_key[sl.name]
            for j in range(n_src):
                blob = sl.blobs[j]
                target = getattr(layer, layer.blob_names[j])
                if ncio.is_placeholder_blob(blob):  # no blob j in an HDF5 file (ncio.read_hdf5_weights)
                    if (key, j) not in self._owned_blobs():
                        continue  # a blob this layer shares with an earlier one: Caffe writes it once
                    raise WeightLoadError(f"{path}: Incompatible number of blobs for layer '{sl.name}': the model "
                                          f"has no blob {j}, which the net's {layer.type_name} layer owns")
                src_shape = ncio.blob_shape(blob)
                if tuple(src_shape) != tuple(target.shape):
                    legacy = not blob.HasField("shape") and math.prod(src_shape) == target.numel()
                    if not legacy:
                        raise WeightLoadError(
                            f"{path}: Cannot copy param {j} weights from layer '{sl.name}'; shape "
                            f"mismatch. Source param shape is {_shape_str(tuple(src_shape))}; target "
                            f"param shape is {_shape_str(tuple(target.shape))}. To learn this layer's "
                            "parameters from scratch rather than copying from a saved net, rename the layer.")
                try:
                    arr = np.ascontiguousarray(ncio.blob_to_array(blob))  # (ascontiguousarray makes 0-d 1-d)
                except ValueError as e:
                    raise WeightLoadError(f"{path}: layer '{sl.name}', param {j}: {e} (a corrupted model)") from None
                with torch.no_grad():
                    target.copy_(torch.from_numpy(arr).reshape(target.shape))
                warn_non_finite(path, sl.name, j, layer.blob_names[j], target)
            layer.blobs_loaded(n_src) if hasattr(layer, "blobs_loaded") else None
            if n_src and sl.name not in filled:
                filled.append(sl.name)
        if report:
            self.report_unfilled(filled, path, strict=strict)
        return filled

    def report_unfilled(self, filled: Iterable[str], source: str, strict: bool = False) -> list[str]:
        """Warn about (or with `strict`, refuse) the learnable layers not in `filled`; returns them."""
        done = set(filled)
        missing = [n for n in self.learnable_layer_names() if n not in done]
        if missing:
            what = (f"{source}: {len(missing)} learnable layer(s) of net '{self.name}' received no weights: "
                    f"{', '.join(missing)} (the model has no layer of that name, e.g. a layer renamed between "
                    "net and model)")
            if strict:
                raise WeightLoadError(what)
            log.warning("%s; they keep their initial (filler) values, as in Caffe (--strict makes this an "
                        "error)", what)
        return missing

    def to_proto(self, write_diff: bool = False) -> pb.NetParameter:
        """The net as a NetParameter with blobs, as Caffe's Net::ToProto writes it: with the Split layers
        Caffe inserts (no blobs), the bottoms they feed renamed to their tops, and a loss weight that
        InsertSplits moves to a Split's first top cleared from its layer (a loss layer then has its
        default 1 again, as Caffe's LossLayer::LayerSetUp adds it)."""
        out = pb.NetParameter()
        out.name = self.name
        splits = self._splits
        for li, (name, layer) in enumerate(self.named_layers()):
            layer.sync_host_writes()  # (a Python layer's host copies of its parameters)
            lp = out.layer.add()
            lp.CopyFrom(layer.layer_param)
            lp.ClearField("blobs")
            if list(lp.bottom) != splits.bottoms[li]:
                del lp.bottom[:]
                lp.bottom.extend(splits.bottoms[li])
            if splits.cleared[li]:
                del lp.loss_weight[:]
                if layer.is_loss:
                    lp.loss_weight.append(1.0)
            for t in layer.blobs():
                grad = t.grad if (write_diff and isinstance(t, nn.Parameter) and t.grad is not None) else None
                if write_diff and grad is None:
                    grad = torch.zeros_like(t)
                ncio.array_to_blob(t, lp.blobs.add(), diff=grad)
            for sp in splits.splits[li]:
                s = out.layer.add(name=sp.name, type="Split", phase=self.phase)
                s.bottom.append(sp.bottom)
                s.top.extend(sp.tops)
                if sp.loss_weight:
                    s.loss_weight.extend(sp.top_loss())
        return out

    def save(self, path: str, write_diff: bool = False) -> None:
        """Write the weights as a binary .caffemodel (atomically)."""
        ncio.write_caffemodel(path, self.to_proto(write_diff))

    def hdf5_layer_names(self) -> list[str]:
        """The layer names `save_hdf5` writes a group for, in order (the Split layers' included)."""
        names = []
        for li in range(len(self._keys)):
            names.append(self.layer_names[li])
            names.extend(sp.name for sp in self._splits.splits[li])
        return names

    def save_hdf5(self, path: str, write_diff: bool = False) -> None:
        """Write the weights as Caffe's HDF5 weights file (Net::ToHDF5, `snapshot_format: HDF5`),
        atomically: a group per layer in Caffe's order, the Split layers' (empty) groups included, a
        float32 dataset per blob the layer owns; with `write_diff` the diffs under /diff."""
        owned = self._owned_blobs()
        splits = self._splits
        layers, diffs = [], []
        for li, key in enumerate(self._keys):
            layer = self.layers[key]
            blobs = [t.detach().to("cpu", torch.float32).numpy() if (key, j) in owned else None
                     for j, t in enumerate(layer.blobs())]
            layers.append((self.layer_names[li], blobs))
            diffs.append([(t.grad if isinstance(t, nn.Parameter) and t.grad is not None else torch.zeros_like(t))
                          .detach().to("cpu", torch.float32).numpy() for t in layer.blobs()] if write_diff else [])
            for sp in splits.splits[li]:
                layers.append((sp.name, []))
                diffs.append([])
        ncio.write_hdf5_weights(path, layers, diffs if write_diff else None)

    def share_weights_with(self, other: "Net") -> None:
        """Use `other`'s blobs (by layer name) in this net: Caffe's ShareTrainedLayersWith (each of
        `other`'s layers shares into the first layer here of its name)."""
        for name, src in other.named_layers():
            if not self.has_layer(name):
                continue
            layer = self.layers[self._first_key[name]]
            if len(src.blob_names) != len(layer.blob_names):
                raise WeightLoadError(f"Incompatible number of blobs for layer '{name}': "
                                      f"{len(src.blob_names)} vs {len(layer.blob_names)}")
            for bn_dst, bn_src in zip(layer.blob_names, src.blob_names):
                s, d = getattr(src, bn_src), getattr(layer, bn_dst)
                if tuple(s.shape) != tuple(d.shape):
                    raise WeightLoadError(f"Cannot share param of layer '{name}': shape mismatch "
                                          f"{list(s.shape)} vs {list(d.shape)}")
                if isinstance(s, nn.Parameter):
                    layer._parameters[bn_dst] = s
                else:
                    layer._buffers[bn_dst] = s
        for e in self._params:
            layer = self.layers[e.module]
            e.tensor = getattr(layer, layer.blob_names[e.index])


def device_memory(device: torch.device) -> int:
    """The memory nets on `device` may use, in bytes: the GPU's, or the process's (`physical_memory`);
    0 when unknown."""
    from .layers.base import physical_memory

    if device.type == "cuda":
        try:
            return int(torch.cuda.get_device_properties(device).total_memory)
        except (RuntimeError, AssertionError):
            return 0
    return physical_memory()


def check_memory(nets: Sequence["Net"]) -> None:
    """Refuse nets that cannot run in their device's memory: the blobs of each (Caffe's "Memory required for
    data", every top of the net: a forward keeps them all) and their weights, together. Checked before the
    first forward, where the kernel's out-of-memory killer would end the process without a word (the per-blob
    check of `Layer.check_shape` cannot see a total)."""
    if not nets:
        return
    device = nets[0].device
    total = device_memory(device)
    share = ""
    procs = os.environ.get("LOCAL_WORLD_SIZE", "1")  # torchrun's (and the --cpu-procs launcher's) processes here
    if device.type == "cpu" and procs.isdigit() and int(procs) > 1:
        total //= int(procs)
        share = f" (its share of this machine's memory, with {procs} processes on it)"
    sizes = [n.data_bytes + sum(int(t.numel()) * t.element_size() for t in n.parameters()) for n in nets]
    need = sum(sizes)
    if not total or need <= total:
        return
    gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
    phase = lambda n: "TRAIN" if n.phase == pb.TRAIN else "TEST"  # noqa: E731
    if len(nets) == 1:
        what = (f"{nets[0].source}: the {phase(nets[0])} net needs {gib(need)} for its blobs and weights (Memory "
                f"required for data: {nets[0].data_bytes:,} bytes)")
    else:
        what = (f"{nets[0].source}: the {phase(nets[0])} net and its {len(nets) - 1} other net(s) need {gib(need)} for "
                f"their blobs and weights ({', '.join(f'{phase(n)} {gib(b)}' for n, b in zip(nets, sizes))})")
    where = f"GPU {device.index or 0}'s" if device.type == "cuda" else "this process's" if share else "this machine's"
    raise NetcompressError(f"{what}, more than {where} {gib(total)} of memory{share}: lower the batch size (the data "
                           "layers' batch_size, or an Input's first dimension)")


def _naming_source(e: NetcompressError, source: str) -> NetcompressError:
    """`e` (same class and attributes) with its message prefixed by the net's file, unless it names
    it already or the net has no file."""
    msg = str(e)
    if source and source != "<NetParameter>" and not msg.startswith(source) and not isinstance(e, SettingError):
        e.args = (f"{source}: {msg}",)
    return e


def _check_top_shapes(layer: Layer, tops: Sequence[str], shapes: Sequence[Shape]) -> None:
    """Caffe's Blob::Reshape CHECKs on every top: no negative dimension, at most INT_MAX values."""
    for t, s in zip(tops, shapes):
        if any(int(d) < 0 for d in s):
            raise layer.error(f"top '{t}' would have shape {list(s)}, with a negative dimension")
        if math.prod(s) > INT_MAX:
            raise layer.error(f"top '{t}' would have shape {list(s)}, {math.prod(s):,} values; a blob holds "
                              f"at most {INT_MAX:,} (Caffe's limit)")


def _convert_hint(source_type: str) -> str:
    from .layers.base import registered_class

    cls = registered_class(source_type)
    command = getattr(cls, "normal_converter", "") if cls is not None else ""
    how = f"`netcompress {command}`" if command else "its recipe's converter"
    return (f" (a raw model with mask blobs loads only into masked layers; convert it to a normal model "
            f"first with {how})")


def _without_blobs(param: pb.NetParameter) -> pb.NetParameter:
    if not any(len(l.blobs) for l in param.layer):
        return param
    p = pb.NetParameter()
    p.CopyFrom(param)
    for l in p.layer:
        l.ClearField("blobs")
    return p
