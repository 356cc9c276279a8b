"""Layer base class and the type registry.

A layer is an `nn.Module` built from its Caffe `LayerParameter` and the shapes of its bottoms.
It reads its own `*_param` message once in `__init__`, holds learnable blobs as `nn.Parameter`
and other blobs (masks, BatchNorm statistics) as persistent buffers, and lists them in Caffe's
blob order in `blob_names`. `forward(*bottoms)` is pure; state changes that Caffe makes inside
Forward (DNS mask updates, INQ quantization) are explicit methods the training loop calls.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Sequence

import torch
from torch import nn

from ..errors import NetDefinitionError
from ..proto import caffe_pb2 as pb

__all__ = ["Layer", "LayerContext", "register_layer", "layer_class", "known_layer_types",
           "create_layer", "Shape"]

Shape = tuple[int, ...]


@dataclasses.dataclass
class LayerContext:
    """What a layer may need from the net that builds it."""

    phase: int = pb.TEST                    # caffe_pb2.TRAIN or caffe_pb2.TEST
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    # Fillers draw from this CPU generator, so a net built with a seed is reproducible.
    generator: torch.Generator = dataclasses.field(default_factory=torch.Generator)
    seed: int | None = None                 # the solver's random_seed, when there is one
    rank: int = 0                           # data sharding for distributed runs
    world_size: int = 1
    net_name: str = ""

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
    # DNS/INQ/C* layers may receive fewer blobs than they hold (reference-semantics 2.7).
    accepts_partial_blobs: ClassVar[bool] = False
    # Data layers produce tops from a source rather than from bottoms.
    is_data: ClassVar[bool] = False

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

    def new_empty(self, *shape: int) -> torch.Tensor:
        return torch.empty(shape, dtype=self.ctx.dtype)

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

    # -- hooks for the solver --------------------------------------------------------------
    def set_iteration(self, iteration: int) -> None:
        """Called by the training loop before each iteration's forward passes (TRAIN nets)."""

    def error(self, message: str) -> NetDefinitionError:
        return NetDefinitionError(f"layer '{self.name}' (type {self.type_name}): {message}")

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


_REGISTRY: dict[str, type[Layer]] = {}


def register_layer(*type_names: str) -> Callable[[type[Layer]], type[Layer]]:
    """Class decorator: register a layer under one or more exact Caffe type strings."""

    def deco(cls: type[Layer]) -> type[Layer]:
        for t in type_names:
            if t in _REGISTRY:
                raise NetDefinitionError(f"layer type '{t}' is registered twice "
                                         f"({_REGISTRY[t].__qualname__} and {cls.__qualname__})")
            _REGISTRY[t] = cls
        if not cls.type_name:
            cls.type_name = type_names[0]
        return cls

    return deco


def known_layer_types() -> list[str]:
    _load_builtin_layers()
    return sorted(_REGISTRY)


def layer_class(type_name: str) -> type[Layer]:
    _load_builtin_layers()
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise NetDefinitionError(f"Unknown layer type: '{type_name}' (known types: "
                                 f"{', '.join(sorted(_REGISTRY))})") from None


def create_layer(param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext) -> Layer:
    cls = layer_class(param.type)
    layer = cls(param, bottom_shapes, ctx)
    layer.type_name = param.type  # aliases (CConvolution vs DNSConvolution) keep their own name
    return layer


_loaded = False


def _load_builtin_layers() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import _builtin  # noqa: F401  (imports every layer module, which registers itself)
