"""Layer base class and the type registry.

A layer is an `nn.Module` built from its Caffe `LayerParameter` and the shapes of its bottoms.
It reads its own `*_param` message once in `__init__`, holds learnable blobs as `nn.Parameter`
and other blobs (masks, BatchNorm statistics) as persistent buffers, and lists them in Caffe's
blob order in `blob_names`. `forward(*bottoms)` is pure; state changes that Caffe makes inside
Forward (DNS mask updates, INQ quantization) are explicit methods the training loop calls. The
documented exceptions: BatchNorm updates its running statistics inside a TRAIN forward (as Caffe
does, under `torch.no_grad()`); layers that draw random numbers (Dropout, STOCHASTIC pooling,
DummyData) advance their own generator, whose state is the snapshot hook `rng_state()` /
`set_rng_state()` (and `Net.rng_state()` for a whole net), so a resumed run draws the same numbers
as an uninterrupted one; RNN and LSTM carry their final state to the next forward, as Caffe's
recurrent layers do (snapshotted too); and layers that write or call out (HDF5Output, Python)
do what their Caffe counterparts do at every forward.
"""
from __future__ import annotations

import dataclasses
import math
import os
import zlib
from typing import Any, Callable, ClassVar, Sequence

import torch
from google.protobuf import descriptor
from torch import nn

from ..errors import NetDefinitionError
from ..proto import caffe_pb2 as pb, is_repeated
from ..rng import CaffeRNG

__all__ = ["Layer", "LayerContext", "register_layer", "layer_class", "known_layer_types",
           "layer_types_where", "registered_class", "create_layer", "check_blob_count", "Shape", "canonical_axis"]

Shape = tuple[int, ...]

INT_MAX = 2**31 - 1  # Caffe's limit on the values of one blob (Blob::Reshape)


_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max",                     # cgroup v2 ("max": none)
                  "/sys/fs/cgroup/memory/memory.limit_in_bytes")     # cgroup v1 (~2^63: none)


def physical_memory() -> int:
    """The memory this process may use, in bytes: the machine's physical memory, or its cgroup's limit
    (a container's) when that is lower, since the kernel kills the process there (0 when unknown)."""
    try:
        total = int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        total = 0
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as f:
                limit = int(f.read().strip())
        except (OSError, ValueError):  # no such file, or "max"
            continue
        if 0 < limit < (total or limit + 1):
            total = limit
    return total


@dataclasses.dataclass
class LayerContext:
    """What a layer may need from the net that builds it.

    Recipes keep their own per-net state here without the core knowing them: `named_generator(name)`
    gives a torch generator that the net snapshots and a distributed run broadcasts from rank 0, and
    `options` holds the recipe options a command line or a caller passed (see `netcompress.options`).
    """

    phase: int = pb.TEST                    # caffe_pb2.TRAIN or caffe_pb2.TEST
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    # Fillers draw from this Caffe-compatible stream (netcompress.rng), in layer order, so a net
    # built with Caffe's random_seed starts from Caffe's initial weights.
    generator: CaffeRNG = dataclasses.field(default_factory=CaffeRNG)
    seed: int | None = None                 # the solver's random_seed, when there is one
    rank: int = 0                           # data sharding for distributed runs
    world_size: int = 1
    net_name: str = ""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Iterations per epoch (the solver's epoch_iters, or derived from its data), set by the Solver
    # once its nets are built; 0 outside a solver. Layers with epoch schedules read it at run time.
    epoch_iters: int = 0
    _generators: dict[str, torch.Generator] = dataclasses.field(default_factory=dict, repr=False)
    # What a layer class's `construct` returned, by layer name, until its __init__ takes it
    _constructed: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def keep_constructed(self, layer_name: str, value: Any) -> None:
        """Hold what `Layer.construct` gave for the layer `layer_name` until its __init__ takes it."""
        self._constructed[layer_name] = value

    def take_constructed(self, layer_name: str) -> Any:
        """What `Layer.construct` gave for the layer `layer_name` (once; None when it was not called)."""
        return self._constructed.pop(layer_name, None)

    def named_generator(self, name: str, default_seed: int = 1) -> torch.Generator:
        """The net's generator called `name` (a CPU torch.Generator), created at first use and seeded
        with the solver's random_seed, or `default_seed` without one (None or negative). The same on
        every process of a distributed run; saved in snapshots by name."""
        gen = self._generators.get(name)
        if gen is None:
            gen = torch.Generator()
            seed = self.seed if self.seed is not None and self.seed >= 0 else default_seed
            gen.manual_seed(int(seed))
            self._generators[name] = gen
        return gen

    def named_generators(self) -> dict[str, torch.Generator]:
        """The generators created so far, by name."""
        return dict(self._generators)

    def option(self, name: str, default: Any = None) -> Any:
        """A recipe option (`netcompress.options`), or `default` when none was given."""
        return self.options.get(name, default)

    @property
    def train(self) -> bool:
        return self.phase == pb.TRAIN


class Layer(nn.Module):
    """Base class of every netcompress layer (see the module docstring)."""

    type_name: ClassVar[str] = ""
    # Caffe's ExactNum/MinNum/MaxNum{Bottom,Top}Blobs; None means unchecked.
    min_bottoms: ClassVar[int | None] = None
    max_bottoms: ClassVar[int | None] = None
    min_tops: ClassVar[int | None] = None
    max_tops: ClassVar[int | None] = None
    # Caffe: types ending in "Loss" weigh their first top with 1 unless loss_weight says otherwise.
    is_loss: ClassVar[bool] = False
    # Caffe's AutoTopBlobs (loss layers): tops the prototxt leaves out are created anonymously.
    auto_top: ClassVar[bool] = False
    # Masked layers may receive fewer blobs than they hold (reference-semantics 2.7).
    accepts_partial_blobs: ClassVar[bool] = False
    # Data layers produce tops from a source rather than from bottoms; Input layers take their
    # tops from the caller (both are also data layers).
    is_data: ClassVar[bool] = False
    is_input: ClassVar[bool] = False
    # Layers holding Caffe's [W, b] weight blobs name the message with num_output/bias_term
    # ("convolution_param", "inner_product_param"); scripts select weight layers by it.
    weight_param: ClassVar[str] = ""
    # Layers with mask blobs after their weights ([W, b, W_mask, b_mask]): "dns", "inq" or
    # "masked" (see layers/masked.py); scripts select converters by it.
    mask_kind: ClassVar[str] = ""
    # The command that turns a model of this (masked) type into a normal one, for error messages.
    normal_converter: ClassVar[str] = ""
    # Whether a CUDA graph may capture this layer in a TRAIN step (solvers/step.py): its forward and
    # backward are device work only, the same at every iteration (no host read, no Python state that
    # changes, no value taken from the host per call such as the iteration or a Python float that a
    # hook updates), and its hooks change tensors in place (a replay keeps reading the tensors it
    # captured). `set_iteration` and `before_train_forward` run outside the graph, before each replay;
    # `before_backward`/`after_backward` run only while capturing, so they must do no device work when
    # iter_size is 1. Data layers (no bottoms) need not declare it: they run outside the graph and
    # their tops are copied into its inputs. Off by default: a layer type is captured once audited.
    graph_safe: ClassVar[bool] = False

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__()
        self.layer_param = param
        self.name: str = param.name
        self.ctx = ctx
        self.phase: int = ctx.phase
        self.bottom_shapes: list[Shape] = [tuple(int(d) for d in s) for s in bottom_shapes]
        self.blob_names: list[str] = []

    # -- blobs -----------------------------------------------------------------------------
    def blobs(self) -> list[torch.Tensor]:
        """This layer's blobs in Caffe's order (parameters and buffers alike)."""
        return [getattr(self, n) for n in self.blob_names]

    def add_blob(self, name: str, tensor: torch.Tensor, learnable: bool = True) -> torch.Tensor:
        """Register `tensor` as the next Caffe blob: a Parameter, or a persistent buffer."""
        tensor = tensor.to(device=self.ctx.device, dtype=self.ctx.dtype)
        if learnable:
            self.register_parameter(name, nn.Parameter(tensor))
        else:
            self.register_buffer(name, tensor, persistent=True)
        self.blob_names.append(name)
        return getattr(self, name)

    def blob_is_learnable(self, index: int) -> bool:
        return isinstance(getattr(self, self.blob_names[index]), nn.Parameter)

    def allow_force_backward(self, bottom: int) -> bool:
        """Caffe's AllowForceBackward: whether `force_backward` may give this bottom a diff (loss
        layers refuse their labels, recurrent layers their sequence continuation indicators)."""
        return True

    def new_empty(self, *shape: int, what: str = "a parameter blob") -> torch.Tensor:
        """An uninitialized blob of `shape`, after Caffe's Blob::Reshape checks (`check_shape`);
        an allocation the machine cannot give is an error naming the layer, not a crash."""
        self.check_shape(shape, what)
        try:
            return torch.empty(shape, dtype=self.ctx.dtype)
        except (RuntimeError, MemoryError) as e:
            if isinstance(e, MemoryError) or "alloc" in str(e).lower():
                nbytes = math.prod(shape) * torch.finfo(self.ctx.dtype).bits // 8
                raise self.error(f"cannot allocate {what} of shape {list(shape)} ({nbytes:,} bytes): "
                                 "out of memory") from None
            raise

    def check_shape(self, shape: Sequence[int], what: str = "a blob") -> None:
        """Caffe's Blob::Reshape CHECKs: no negative dimension, at most INT_MAX values; and no blob
        larger than the machine's memory (it could only fail later, or swap the machine to a halt)."""
        dims = [int(d) for d in shape]
        if any(d < 0 for d in dims):
            raise self.error(f"{what} would have shape {dims}, with a negative dimension")
        count = math.prod(dims)
        if count > INT_MAX:
            raise self.error(f"{what} would have shape {dims}, {count:,} values; a blob holds at most "
                             f"{INT_MAX:,} (Caffe's limit)")
        nbytes = count * torch.finfo(self.ctx.dtype).bits // 8
        total = physical_memory()
        if total and nbytes > total:
            raise self.error(f"{what} of shape {dims} needs {nbytes / 2**30:.1f} GiB, more than this "
                             f"machine's {total / 2**30:.1f} GiB of memory")

    # -- shapes ----------------------------------------------------------------------------
    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        """Shapes of the tops for these bottoms. Default: run `forward` on meta tensors."""
        from torch.func import functional_call

        meta_state = {k: torch.empty_like(v, device="meta")
                      for k, v in list(self.named_parameters(recurse=False)) +
                      list(self.named_buffers(recurse=False))}
        bottoms = [torch.empty(s, dtype=self.ctx.dtype, device="meta") for s in bottom_shapes]
        with torch.no_grad():
            out = functional_call(self, meta_state, tuple(bottoms))
        if isinstance(out, torch.Tensor):
            out = (out,)
        return [tuple(int(d) for d in t.shape) for t in out]

    # -- randomness ------------------------------------------------------------------------
    def _init_rng(self, device: torch.device | str | None = None) -> torch.Generator:
        """Give this layer its own generator (for layers that draw random numbers in forward).

        Seeded from the solver's `random_seed` plus the process rank, as Caffe seeds each
        solver (`random_seed + solver_rank`), mixed with the layer name so that two layers draw
        independent streams; without a seed (None or negative, Caffe's -1) from
        `torch.initial_seed()`, so `torch.manual_seed` makes unseeded runs reproducible too.
        """
        seed = self.ctx.seed
        base = (seed + self.ctx.rank) if seed is not None and seed >= 0 else torch.initial_seed()
        mixed = (base * 0x9E3779B1 + zlib.crc32(self.name.encode("utf-8"))) % (2 ** 63)
        gen = torch.Generator(device=torch.device(device) if device is not None else self.ctx.device)
        gen.manual_seed(mixed)
        self._rng: torch.Generator | None = gen
        return gen

    def rng_state(self) -> torch.Tensor | None:
        """Snapshot hook: the state of this layer's generator (a uint8 CPU tensor), or None for
        layers that draw no random numbers."""
        gen = getattr(self, "_rng", None)
        return None if gen is None else gen.get_state().clone()

    def set_rng_state(self, state: torch.Tensor) -> None:
        """Restore a state returned by `rng_state()` (for a bit-identical resume)."""
        gen = getattr(self, "_rng", None)
        if gen is None:
            raise self.error("this layer draws no random numbers and has no generator state")
        gen.set_state(state.to(device="cpu", dtype=torch.uint8))

    # -- hooks for the solver --------------------------------------------------------------
    def set_iteration(self, iteration: int) -> None:
        """Called by the training loop before each iteration's forward passes (TRAIN nets)."""

    def before_train_forward(self) -> None:
        """Called by the solver before every TRAIN forward, in layer order (the state changes
        Caffe makes inside Forward, e.g. a mask update or a quantization step)."""

    def before_backward(self) -> None:
        """Called by the solver before every backward (a masked layer's per-call gradient rule)."""

    def after_backward(self) -> None:
        """Called by the solver after every backward."""

    def epoch_end(self, epoch: int) -> None:
        """Called by the solver on every TRAIN-net layer at the end of each epoch (`epoch`: the
        1-based epoch that just ended; the solver's `epoch_iters` sets its length)."""

    def replicated_state(self) -> dict[str, torch.Tensor | None]:
        """Tensors that must be identical on every process of a distributed run (masks,
        statistics), by name; a snapshot fails loudly, naming them, when they differ."""
        return {}

    def rank0_state(self) -> torch.Tensor | None:
        """An int64 tensor every process takes from rank 0 when training starts (e.g. a data
        layer's shuffle seed), or None."""
        return None

    def set_rank0_state(self, state: torch.Tensor) -> None:
        """Adopt rank 0's `rank0_state()`."""

    def epoch_size(self) -> tuple[int, int] | None:
        """A data layer's (records in its source, records per batch of this process), from which
        the solver derives `epoch_iters`; None for other layers."""
        return None

    def sync_host_writes(self) -> None:
        """Bring writes a script made into host copies of this layer's parameters to the parameters (a Python
        layer's blobs on a GPU); called before a save and by pycaffe before it uses the net. Most layers have
        none."""

    @classmethod
    def construct(cls, param: pb.LayerParameter, ctx: "LayerContext") -> Any:
        """The work of Caffe's layer constructor, which its layer factory runs before the net's "Creating Layer"
        line (a Data layer opens its database there, and logs so): the Net calls it right after its factory
        line and hands the result to `__init__` through `ctx.take_constructed(name)`. None: nothing to do."""
        return None

    @classmethod
    def factory_children(cls, param: pb.LayerParameter) -> int:
        """How many inner layers Caffe's set-up of this layer creates through its layer factory (each logs
        "Creating layer <this layer's name>" after the layer's tops): SoftmaxWithLoss's and InfogainLoss's
        Softmax, a Scale's Bias."""
        return 0

    @classmethod
    def setup_draws(cls, param: pb.LayerParameter, phase: int) -> int:
        """How many values Caffe's set-up of this layer takes from the global random stream besides
        its fillers (data layers seed their transformer and prefetch thread)."""
        return 0

    def graph_refusal(self) -> str | None:
        """Why a CUDA graph cannot capture this layer in a TRAIN step, or None when it can (see
        `graph_safe`). A layer whose safety depends on its parameters overrides this."""
        if self.is_data and not self.bottom_shapes:
            return None  # runs outside the graph
        if not self.graph_safe:
            return f"layer '{self.name}' (type {self.type_name}) does not declare itself graph-safe"
        if getattr(self, "_rng", None) is not None and self.phase == pb.TRAIN:
            return f"layer '{self.name}' (type {self.type_name}) draws from its own generator"
        return None

    def update_mask(self, blob_index: int) -> torch.Tensor | None:
        """A 0/1 tensor that freezes the mask-0 entries of blob `blob_index` in the solver, or None."""
        return None

    def before_snapshot(self) -> None:
        """Called before the solver writes a snapshot (e.g. a cross-process consistency check)."""

    def snapshot_state(self):
        """Extra state a resumed run needs (None if the layer has none). Values: numbers,
        strings, bytes, tensors, arrays, and dicts/lists of them. Defaults to PyTorch's
        `get_extra_state` where the layer defines it; otherwise layers with their own generator
        (Dropout, STOCHASTIC pooling, DummyData) save its state as {"rng": uint8 tensor}."""
        if type(self).get_extra_state is not nn.Module.get_extra_state:
            return self.get_extra_state()
        rng = self.rng_state()
        return None if rng is None else {"rng": rng}

    def restore_state(self, state) -> None:
        """Restore what `snapshot_state` returned; `state` is None when the snapshot has none
        (e.g. a snapshot written by Caffe)."""
        if state is not None and type(self).set_extra_state is not nn.Module.set_extra_state:
            self.set_extra_state(state)
        elif isinstance(state, dict) and "rng" in state and getattr(self, "_rng", None) is not None:
            self.set_rng_state(state["rng"])

    def non_finite_cause(self) -> str | None:
        """After a non-finite loss, what this layer knows of its cause, as a sentence for the solver's error
        (None: nothing). It may read the device: training is stopping."""
        return None

    def error(self, message: str) -> NetDefinitionError:
        return NetDefinitionError(f"layer '{self.name}' (type {self.type_name}): {message}")

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """`x` as `n` rows of equal length (`x.reshape(n, -1)`, which torch refuses for an empty batch, n = 0: then
    the rows' length is that of the axes after the first)."""
    return x.reshape(n, -1) if n else x.reshape(0, math.prod(x.shape[1:]))


def canonical_axis(axis: int, ndim: int, layer: Layer, what: str = "axis") -> int:
    """Caffe's Blob::CanonicalAxisIndex: -ndim <= axis < ndim, negative counts from the end."""
    if not -ndim <= axis < ndim:
        raise layer.error(f"{what} {axis} is out of range for a {ndim}-D bottom (expected "
                          f"{-ndim} <= {what} < {ndim})")
    return axis % ndim


_REGISTRY: dict[str, type[Layer]] = {}


def register_layer(*type_names: str) -> Callable[[type[Layer]], type[Layer]]:
    """Class decorator: register a layer under one or more exact Caffe type strings."""

    def deco(cls: type[Layer]) -> type[Layer]:
        for t in type_names:
            if t in _REGISTRY:
                raise NetDefinitionError(f"layer type '{t}' is registered twice "
                                         f"({_REGISTRY[t].__qualname__} and {cls.__qualname__})")
            _REGISTRY[t] = cls
        if "type_name" not in cls.__dict__:  # not the parent's: INQConvolution is no Convolution
            cls.type_name = type_names[0]
        return cls

    return deco


def layer_types_where(predicate: Callable[[type[Layer]], bool]) -> frozenset[str]:
    """The registered type strings whose class satisfies `predicate` (e.g. its category
    attributes), so no list of type names is kept outside the registry."""
    _load_builtin_layers()
    return frozenset(t for t, cls in _REGISTRY.items() if predicate(cls))


def registered_class(type_name: str) -> type[Layer] | None:
    """The class of `type_name`, or None for a type no module registered."""
    _load_builtin_layers()
    return _REGISTRY.get(type_name)


def known_layer_types() -> list[str]:
    _load_builtin_layers()
    return sorted(_REGISTRY)


def layer_class(type_name: str) -> type[Layer]:
    _load_builtin_layers()
    try:
        return _REGISTRY[type_name]
    except KeyError:
        import difflib

        lower = {t.lower(): t for t in _REGISTRY}  # "Relu" and "convolution" are near misses too
        close = difflib.get_close_matches(type_name.lower(), list(lower), n=1, cutoff=0.6)
        hint = f"; did you mean {lower[close[0]]}?" if close else ""
        raise NetDefinitionError(f"Unknown layer type: '{type_name}'{hint} (known types: "
                                 f"{', '.join(sorted(_REGISTRY))})") from None


def check_blob_count(param: pb.LayerParameter, n: int, lo: int | None, hi: int | None, what: str) -> None:
    """Raise NetDefinitionError when a layer gets `n` bottom or top (`what`) blobs outside [lo, hi]."""
    head = f"layer '{param.name}' (type {param.type}) takes"
    if lo is not None and hi is not None and lo == hi and n != lo:
        raise NetDefinitionError(f"{head} {lo} {what} blob(s), got {n}")
    if lo is not None and n < lo:
        raise NetDefinitionError(f"{head} at least {lo} {what} blob(s), got {n}")
    if hi is not None and n > hi:
        raise NetDefinitionError(f"{head} at most {hi} {what} blob(s), got {n}")


def create_layer(param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext) -> Layer:
    cls = layer_class(param.type)
    check_blob_count(param, len(bottom_shapes), cls.min_bottoms, cls.max_bottoms, "bottom")
    layer = cls(param, bottom_shapes, ctx)
    layer.type_name = param.type  # aliases (CConvolution vs DNSConvolution) keep their own name
    nan = nan_field(param)
    if nan:  # (after the layer's own checks, whose messages say more where they have one)
        raise layer.error(f"{nan} is NaN; a parameter must be a number (a NaN spreads to every value it touches)")
    return layer


_FLOATS = (descriptor.FieldDescriptor.TYPE_FLOAT, descriptor.FieldDescriptor.TYPE_DOUBLE)


def _has_floats(desc) -> bool:
    from ..io import message_holds

    return message_holds(desc, _FLOATS, ("BlobProto",))


def nan_field(message, where: str = "") -> str | None:
    """The path of the first float field of `message` that is NaN (`relu_param.negative_slope`,
    `param[0].lr_mult`, `eltwise_param.coeff[1]`), or None. Weights (BlobProto) are not parameters."""
    if not _has_floats(message.DESCRIPTOR):
        return None
    for fd, value in message.ListFields():
        values = value if is_repeated(fd) else [value]
        if fd.type in _FLOATS:
            for k, v in enumerate(values):
                if v != v:
                    return f"{where}{fd.name}" + (f"[{k}]" if is_repeated(fd) else "")
        elif fd.type == fd.TYPE_MESSAGE and fd.message_type.name != "BlobProto" and _has_floats(fd.message_type):
            for k, v in enumerate(values):
                found = nan_field(v, f"{where}{fd.name}" + (f"[{k}]" if is_repeated(fd) else "") + ".")
                if found:
                    return found
    return None


_loaded = False


def _load_builtin_layers() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import _builtin  # noqa: F401  (imports every layer module, which registers itself)
