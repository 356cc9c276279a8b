"""DNS pruning and INQ quantization layers (the reference fork's additions) and Guo's C* aliases.

Blob layout (reference-semantics 2.1, 3.1): `[W, b, W_mask, b_mask]`, or `[W, W_mask]` without
bias. Masks are persistent buffers, never trained (Decision 2); a 2-blob normal model loaded into
these layers keeps the masks from the filler (Caffe's rule in 2.7).

DNS (section 2): before each TRAIN forward the layer (1) computes the statistics once, at the
first forward of iteration 0, (2) draws one uniform number from the net's surgery generator,
(3) if `(1 + gamma*iter)^-power > r` and `iter < iter_stop`, prunes/splices its masks against
T = max(mu + c_rate*std, 0) in one fused pass that also writes W*M. The forward computes with
W*M and b*m; the gradient reaches W and b unmasked ("splicing", 2.4).

INQ (section 3): at the first TRAIN forward of iteration 0 the layer quantizes the largest
portion of its unquantized (mask 1) weights and biases to powers of two and sets their masks to
0; the solver then freezes those entries (zero update and history, every solver: Decision 5).
The forward uses W and b as stored.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import ops
from ..fillers import fill
from ..log import get_logger
from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, register_layer
from .vision import Convolution, InnerProduct

log = get_logger("layers")

__all__ = ["DNSConvolution", "DNSInnerProduct", "CConvolution", "CInnerProduct",
           "INQConvolution", "INQInnerProduct", "MaskedLayer", "DNSLayer", "INQLayer"]

# Guo's / the reference's default when no surgery seed is given: glibc's unseeded rand() (seed 1).
DEFAULT_SURGERY_SEED = 1


class MaskedLayer(Layer):
    """Adds weight/bias masks after the base layer's W (and b); reads `self.param_field`."""

    accepts_partial_blobs = True
    param_field = ""

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

    def set_iteration(self, iteration: int) -> None:
        self.iteration = int(iteration)

    def before_backward(self) -> None:
        # reference 2.4 / 3.6: each backward call does diff <- mask*diff + g, so with iter_size > 1
        # earlier sub-iterations' gradients survive only where the mask is 1.
        with torch.no_grad():
            if self.weight.grad is not None:
                self.weight.grad.mul_(self.weight_mask)
            if self.bias_term and self.bias.grad is not None:
                self.bias.grad.mul_(self.bias_mask)

    def kept_counts(self) -> tuple[int, int, int, int]:
        """(weights kept, weights, biases kept, biases): mask == 1 entries."""
        kw = int((self.weight_mask == 1).sum())
        kb = int((self.bias_mask == 1).sum()) if self.bias_term else 0
        return kw, self.weight.numel(), kb, (self.bias.numel() if self.bias_term else 0)


class _SplicedWeight(torch.autograd.Function):
    """Returns a precomputed W*M; the gradient goes to W unmasked (as ops.dns_masked_weight)."""

    @staticmethod
    def forward(ctx, weight, masked):
        return masked.view_as(masked)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class DNSLayer(MaskedLayer):
    """Dynamic Network Surgery on top of Convolution or InnerProduct (see the module docstring)."""

    def _init_dns(self) -> None:
        dp = getattr(self.layer_param, self.param_field)
        self.gamma = float(dp.gamma)
        self.power = float(dp.power)
        self.c_rate = float(dp.c_rate)
        self.iter_stop = int(dp.iter_stop)  # a float in the proto, truncated as the reference does
        self.alpha_low = float(dp.alpha_low)
        self.alpha_high = float(dp.alpha_high)
        self._add_masks()
        self.stats: torch.Tensor | None = None  # float64 [mu, std, n_weight, n_bias]
        self._fresh: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.surgeries = 0  # how many mask updates this layer has done (for reports and tests)

    # -- the per-forward surgery step ------------------------------------------------------
    def before_train_forward(self) -> None:
        it = self.iteration
        if self.stats is None:
            if it != 0:
                log.warning("[%s] no DNS statistics at iteration %d (a snapshot without netcompress "
                            "state?): computing them from the current masked weights", self.name, it)
            self.compute_stats()
        r = float(torch.rand((), generator=self.ctx.surgery_generator(), dtype=torch.float64))
        if math.pow(1.0 + self.gamma * it, -self.power) > r and it < self.iter_stop:
            self.surgery()

    def compute_stats(self) -> torch.Tensor:
        """Caffe's statistics over the masked weights and biases (logged like the GPU reference)."""
        b, bm = (self.bias, self.bias_mask) if self.bias_term else (None, None)
        if self.ctx.dns_stats == "caffe-cpu":
            self.stats = _caffe_cpu_stats(self.weight.detach(), self.weight_mask,
                                          None if b is None else b.detach(), bm)
        else:
            self.stats = ops.dns_stats(self.weight.detach(), self.weight_mask,
                                       None if b is None else b.detach(), bm)
        mu, std, nw, nb = self.stats.tolist()
        Nw = self.weight.numel()
        Nb = self.bias.numel() if self.bias_term else 0

        def pct(k, n):
            return "%g" % (100.0 * k / n) if n else "nan"

        log.info("[%s] mu_:%g std_:%g, kept: weight: %d/%d(%s%%), bias: %d/%d(%s%%), total: %d/%d(%s%%)",
                 self.name, mu, std, nw, Nw, pct(nw, Nw), nb, Nb, pct(nb, Nb), nw + nb, Nw + Nb,
                 pct(nw + nb, Nw + Nb))
        return self.stats

    def surgery(self) -> None:
        """Prune and splice both masks with T = max(mu + c_rate*std, 0); cache W*M for the forward."""
        low, high = self.thresholds()
        w = self.weight.detach()
        wbuf = self._masked_buffer("_wbuf", w)
        ops.dns_update_mask_(w, self.weight_mask, low, high, wbuf)
        bbuf = None
        if self.bias_term:
            b = self.bias.detach()
            bbuf = self._masked_buffer("_bbuf", b)
            ops.dns_update_mask_(b, self.bias_mask, low, high, bbuf)
        self._fresh = (wbuf, bbuf)
        self.surgeries += 1

    def _masked_buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The layer's W*M (or b*m) storage, reused at every forward.

        A fresh tensor per forward costs little on CUDA (the caching allocator) but on the CPU a large one
        comes from the kernel as zeroed pages every time: AlexNet's fc6 (151 MB) took ~60 ms of page faults
        per surgery, more than the surgery itself. The buffer is overwritten only before the next forward,
        when the previous graph (which saved it for the conv/IP backward) has been used; a forward run again
        before the first one's backward is caught by autograd's in-place check, not silently wrong.
        """
        buf = self.__dict__.get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = torch.empty_like(like, memory_format=torch.contiguous_format)
            self.__dict__[name] = buf  # a plain attribute: not state, not moved by .to()
        return buf

    def thresholds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_low*T, alpha_high*T), T = max(mu + c_rate*std, 0), in float32 arithmetic as both
        reference paths compute them; on the statistics' device, so no host sync."""
        mu, std = self.stats[0].float(), self.stats[1].float()
        # Python floats, not new tensors: a float32 tensor times a Python number rounds the number to float32
        # first, so the values are the same, and on CUDA no host-to-device copy (each one a stream sync) is made
        # per layer and surgery.
        t = (mu + std * self.c_rate).clamp_min(0.0)  # NaN (no survivors) stays NaN
        return t * self.alpha_low, t * self.alpha_high

    # -- forward ---------------------------------------------------------------------------
    def effective_weight(self) -> torch.Tensor:
        if self._fresh is not None:
            return _SplicedWeight.apply(self.weight, self._fresh[0])
        return self._masked(self.weight, self.weight_mask, "_wbuf")

    def effective_bias(self) -> torch.Tensor | None:
        if not self.bias_term:
            return None
        if self._fresh is not None:
            fresh, self._fresh = self._fresh[1], None  # the cache serves exactly one forward
            return _SplicedWeight.apply(self.bias, fresh)
        return self._masked(self.bias, self.bias_mask, "_bbuf")

    def _masked(self, v: torch.Tensor, m: torch.Tensor, name: str) -> torch.Tensor:
        # ops.dns_masked_weight's value and gradient, written into the layer's buffer (see _masked_buffer).
        buf = self._masked_buffer(name, v)
        with torch.no_grad():
            torch.mul(v, m, out=buf)
        return _SplicedWeight.apply(v, buf)

    # -- snapshots (Decision 3: statistics persist across resume) ---------------------------
    def snapshot_state(self):
        return {"stats": None if self.stats is None else self.stats.detach().cpu(),
                "surgeries": self.surgeries}

    def restore_state(self, state) -> None:
        if state is None:
            self.stats = None
            return
        s = state.get("stats")
        self.stats = None if s is None else s.to(self.weight.device)
        self.surgeries = int(state.get("surgeries", 0))


class INQLayer(MaskedLayer):
    """Incremental Network Quantization on top of Convolution or InnerProduct."""

    def _init_inq(self) -> None:
        ip = getattr(self.layer_param, self.param_field)
        if len(ip.portion) < 2:
            raise self.error(f"{self.param_field}.portion needs two values, the previous and the target "
                             f"accumulated portion (e.g. portion: 0.3 portion: 0.6), got {len(ip.portion)}")
        self.portion = (float(ip.portion[0]), float(ip.portion[1]))
        if self.portion[0] > self.portion[1]:
            raise self.error(f"portion[0] ({self.portion[0]:g}) must not exceed portion[1] "
                             f"({self.portion[1]:g})")
        if not 0.0 <= self.portion[0] < 1.0 or self.portion[1] > 1.0:
            raise self.error(f"portions must satisfy 0 <= portion[0] < 1 and portion[1] <= 1, got "
                             f"{self.portion[0]:g}, {self.portion[1]:g}")
        self.num_quantum_values = int(ip.num_quantum_values)
        if self.num_quantum_values < 1:
            raise self.error(f"num_quantum_values must be positive, got {self.num_quantum_values}")
        self._add_masks()
        self.quantized = False
        if self.phase == pb.TRAIN:
            log.info("Found INQ layer:%s, type: %s", self.name, self.type_name)

    def before_train_forward(self) -> None:
        if self.iteration == 0 and not self.quantized:
            self.quantize()

    def quantize(self) -> None:
        """One INQ stage on the weights, then (independently) the biases, with the reference's logs."""
        blobs = [("weight", self.weight, self.weight_mask)]
        if self.bias_term:
            blobs.append(("bias", self.bias, self.bias_mask))
        for what, v, m in blobs:
            try:
                step = ops.inq_quantize_portion_(v.data, m, self.portion, self.num_quantum_values)
            except ops.INQRangeError as e:
                raise self.error(f"cannot quantize the {what} ({e})") from None
            tag = f"[{self.name} {what}]"
            log.info("%s Max_power = %d", tag, step.n1)
            log.info("%s Min_power = %d", tag, step.n2)
            if step.skipped == "portion":
                log.info("%s Current portion equals 0.0%%, skipping ...", tag)
                continue
            if step.skipped == "pruned":
                log.info("%s All parameters already pruned away, skipping ...", tag)
                continue
            if step.skipped == "done":
                log.info("%s Nothing left to quantize (every entry is quantized or pruned), skipping ...", tag)
                continue
            c = step.count
            log.info("%s portions: %g%% -> %g%% (total: %g%% -> %g%%)", tag, 100 * _f32(self.portion[0]),
                     100 * _f32(self.portion[1]), 100.0 * (c - step.n_yet) / c, 100.0 * (c - step.n_keep) / c)
            log.info("%s init_not_quantized/total: %d/%d", tag, step.n_init, c)
            log.info("%s to_update/not_tobe_quantized/not_yet_quantized: %d/%d/%d", tag, step.n_update,
                     step.n_keep, step.n_yet)
        self.quantized = True

    def update_mask(self, blob_index: int) -> torch.Tensor | None:
        if blob_index == 0:
            return self.weight_mask
        if blob_index == 1 and self.bias_term:
            return self.bias_mask
        return None

    def snapshot_state(self):
        return {"quantized": self.quantized}

    def restore_state(self, state) -> None:
        # A resumed stage never quantizes again (it only happens at iteration 0).
        self.quantized = True if state is None else bool(state.get("quantized", True))


def _caffe_cpu_stats(w: torch.Tensor, wm: torch.Tensor, b: torch.Tensor | None,
                     bm: torch.Tensor | None) -> torch.Tensor:
    """The reference CPU build's statistics, bit for bit: sequential float32 sums over the masked
    weights, then the biases; mu = S1/n, std = sqrt((S2 - n*mu*mu)/n), all in float32.

    numpy's add.accumulate is sequential, unlike torch's reductions. Runs once per training run.
    """
    import numpy as np

    parts = [(w, wm)] + ([(b, bm)] if b is not None else [])
    s1 = s2 = np.float32(0.0)
    counts = []
    for v, m in parts:
        mv = (m.float() * v.float()).reshape(-1).cpu().numpy().astype(np.float32)
        vv = v.float().reshape(-1).cpu().numpy().astype(np.float32)
        if mv.size:
            s1 = np.add.accumulate(np.concatenate([[s1], np.abs(mv)]).astype(np.float32), dtype=np.float32)[-1]
            s2 = np.add.accumulate(np.concatenate([[s2], mv * vv]).astype(np.float32), dtype=np.float32)[-1]
        counts.append(int(np.count_nonzero(mv)))
    n = np.float32(sum(counts))
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.float32(s1 / n)
        std = np.sqrt(np.float32((s2 - n * mu * mu) / n))
    out = [float(mu), float(std), float(counts[0]), float(counts[1] if len(counts) > 1 else 0)]
    return torch.tensor(out, dtype=torch.float64, device=w.device)


def _f32(x: float) -> float:
    import struct
    return struct.unpack("<f", struct.pack("<f", x))[0]


@register_layer("DNSConvolution")
class DNSConvolution(DNSLayer, Convolution):
    """Convolution with DNS masks; geometry from convolution_param, DNS from dns_convolution_param."""

    param_field = "dns_convolution_param"

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        Convolution.__init__(self, param, bottom_shapes, ctx)
        self._init_dns()


@register_layer("CConvolution")
class CConvolution(DNSConvolution):
    """Guo's name for DNSConvolution, reading cconvolution_param (its own field numbering)."""

    param_field = "cconvolution_param"


@register_layer("DNSInnerProduct")
class DNSInnerProduct(DNSLayer, InnerProduct):
    """InnerProduct with DNS masks (dns_inner_product_param)."""

    param_field = "dns_inner_product_param"

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        InnerProduct.__init__(self, param, bottom_shapes, ctx)
        self._init_dns()


@register_layer("CInnerProduct")
class CInnerProduct(DNSInnerProduct):
    """Guo's name for DNSInnerProduct, reading cinner_product_param."""

    param_field = "cinner_product_param"


@register_layer("INQConvolution")
class INQConvolution(INQLayer, Convolution):
    """Convolution with INQ masks (inq_convolution_param)."""

    param_field = "inq_convolution_param"

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        Convolution.__init__(self, param, bottom_shapes, ctx)
        self._init_inq()


@register_layer("INQInnerProduct")
class INQInnerProduct(INQLayer, InnerProduct):
    """InnerProduct with INQ masks (inq_inner_product_param)."""

    param_field = "inq_inner_product_param"

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        InnerProduct.__init__(self, param, bottom_shapes, ctx)
        self._init_inq()
