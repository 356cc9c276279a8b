"""Masked Convolution / InnerProduct layers: the mask blobs and the gradient rules every masked
layer type shares (DNS, INQ, and plain masks written by pruning scripts or solver-level pruners).

Blob layout (reference-semantics 2.1, 3.1): `[W, b, W_mask, b_mask]`, or `[W, W_mask]` without
bias. Masks are persistent buffers, never trained (Decision 2); a 2-blob normal model loaded into a
masked layer keeps the masks from its fillers (Caffe's rule in 2.7).

Two class attributes choose the rules:

- `masked_forward`: the forward computes with W⊙M and b⊙m through the fused op
  `netcompress::dns_masked_weight`, whose gradient reaches W unmasked ("splicing", 2.4): DNS, and
  the plain masked layers. Otherwise the forward uses W as stored (INQ, whose mask marks the
  quantized entries).
- `freeze_masked`: the solver gives mask-0 entries a zero update and zero history (INQ, 3.6).

All of them apply the reference's per-call rule `diff <- mask ⊙ diff + g` at each backward
(2.4, 3.6) with the fused op `netcompress::dns_splice_grad_`: with iter_size > 1, gradients of
earlier sub-iterations survive only where the mask is 1.

A new masked type is a subclass that sets `param_field` (the message holding its mask fillers),
`mask_kind` and the two rules, plus the geometry of Convolution or InnerProduct; nothing else in
netcompress needs to know it (see docs/architecture.md).
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from .. import ops
from ..fillers import fill
from ..log import get_logger
from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, register_layer
from .vision import Convolution, InnerProduct

__all__ = ["MaskedLayer", "MaskedConvolution", "MaskedInnerProduct"]

log = get_logger("layers")


class MaskedLayer(Layer):
    """Weight/bias masks after the base layer's W (and b); reads the mask fillers from `param_field`."""

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    accepts_partial_blobs = True
    mask_kind: ClassVar[str] = "masked"
    param_field: ClassVar[str] = ""
    masked_forward: ClassVar[bool] = True
    freeze_masked: ClassVar[bool] = False
    normal_converter = "dns_to_normal"

    def _add_masks(self) -> None:
        mp = getattr(self.layer_param, self.param_field)
        where = f"layer '{self.name}': "
        # The reference fills a no-bias layer's weight mask with bias_mask_filler (2.1); netcompress
        # uses weight_mask_filler, as a user would expect (identical when both are constant 1).
        self.add_blob("weight_mask", fill(torch.empty_like(self.weight.detach()), mp.weight_mask_filler,
                                          self.ctx.generator, where), learnable=False)
        if self.bias_term:
            self.add_blob("bias_mask", fill(torch.empty_like(self.bias.detach()), mp.bias_mask_filler,
                                            self.ctx.generator, where), learnable=False)
        self.iteration = 0
        self._held: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def blobs_loaded(self, n_loaded: int) -> None:
        """After `Net.copy_from` filled the first `n_loaded` blobs: a WARNING for loaded masks
        holding values other than 0 and 1 (NaN included). The layer computes with them as they are,
        as the reference does (a DNS forward uses W⊙M, surgery leaves such entries alone; INQ
        quantizes only mask-1 entries and freezes only mask-0 ones); a converter to a normal model
        keeps an entry only where its mask is exactly 1."""
        for name in ("weight_mask", "bias_mask"):
            if name not in self.blob_names or self.blob_names.index(name) >= n_loaded:
                continue  # the filler's mask, not the model's
            m = getattr(self, name)
            bad = ~((m == 0) | (m == 1))
            if bool(bad.any()):
                example = float(m[bad].reshape(-1)[0])
                log.warning("layer '%s' (%s): the model's %s holds %d value(s) other than 0 and 1 (e.g. %g) of "
                            "%d; masks should hold only 0 and 1 (the layer uses them as they are)", self.name,
                            self.type_name, name, int(bad.sum()), example, m.numel())

    def masked_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, mask) for the weight and, with a bias, the bias."""
        pairs = [(self.weight, self.weight_mask)]
        if self.bias_term:
            pairs.append((self.bias, self.bias_mask))
        return pairs

    def set_iteration(self, iteration: int) -> None:
        self.iteration = int(iteration)

    # -- forward ---------------------------------------------------------------------------
    def effective_weight(self) -> torch.Tensor:
        return self._masked(self.weight, self.weight_mask)

    def effective_bias(self) -> torch.Tensor | None:
        return self._masked(self.bias, self.bias_mask) if self.bias_term else None

    def _masked(self, p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """What the forward computes with for one (parameter, mask) pair: p⊙m by the fused op when
        `masked_forward`, else p as stored."""
        return ops.dns_masked_weight(p, m) if self.masked_forward else p

    # -- the per-call gradient rule --------------------------------------------------------
    def before_backward(self) -> None:
        # A gradient accumulated by earlier backward calls of this iteration (iter_size > 1) is
        # held aside, so that the next backward writes its own gradient g alone; after_backward
        # then applies diff <- mask ⊙ diff + g in one fused pass.
        self._held = []
        for p, m in self.masked_pairs():
            if p.grad is not None:
                self._held.append((p, m, p.grad))
                p.grad = None

    def after_backward(self) -> None:
        for p, m, diff in self._held:
            if p.grad is None:  # the loss did not reach this parameter in this call
                diff.mul_(m)
            else:
                ops.dns_splice_grad_(diff, m, p.grad)
            p.grad = diff
        self._held = []

    def update_mask(self, blob_index: int) -> torch.Tensor | None:
        if not self.freeze_masked:
            return None
        if blob_index == 0:
            return self.weight_mask
        if blob_index == 1 and self.bias_term:
            return self.bias_mask
        return None

    def replicated_state(self) -> dict[str, torch.Tensor | None]:
        return {n: getattr(self, n) for n in ("weight_mask", "bias_mask") if n in self.blob_names}

    def kept_counts(self) -> tuple[int, int, int, int]:
        """(weights kept, weights, biases kept, biases): mask == 1 entries."""
        kw = int((self.weight_mask == 1).sum())
        kb = int((self.bias_mask == 1).sum()) if self.bias_term else 0
        return kw, self.weight.numel(), kb, (self.bias.numel() if self.bias_term else 0)


@register_layer("MaskedConvolution")
class MaskedConvolution(MaskedLayer, Convolution):
    """Convolution computing with W⊙M; masks come only from scripts or solver-level pruners (SNIP,
    global magnitude pruning). The DNS layout and gradient without surgery (recipes-spec 5.2): the
    mask fillers are read from dns_convolution_param."""

    param_field = "dns_convolution_param"

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        Convolution.__init__(self, param, bottom_shapes, ctx)
        self._add_masks()


@register_layer("MaskedInnerProduct")
class MaskedInnerProduct(MaskedLayer, InnerProduct):
    """InnerProduct computing with W⊙M (see MaskedConvolution); mask fillers from
    dns_inner_product_param."""

    param_field = "dns_inner_product_param"

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        InnerProduct.__init__(self, param, bottom_shapes, ctx)
        self._add_masks()
