"""Dynamic Network Surgery layers (reference-semantics §2): DNSConvolution, DNSInnerProduct and
Guo's aliases CConvolution, CInnerProduct.

Before each TRAIN forward a DNS layer (1) computes the statistics once, at the first forward of
iteration 0, (2) draws one uniform number from the net's surgery generator (Decision 4), (3) if
`(1 + gamma*iter)^-power > r` and `iter < iter_stop`, prunes/splices its masks against
T = max(mu + c_rate*std, 0) with the fused op `dns_update_mask_`. The forward computes with W⊙M and
b⊙m (`dns_masked_weight`), the gradient reaching W and b unmasked ("splicing", 2.4); the per-call
gradient rule and the blob layout are those of every masked layer (layers/masked.py).

The recipe's state lives with it: the statistics in each layer's snapshot state (Decision 3), the
surgery generator as the net's named generator "dns_surgery", and the statistics' summation mode as
the option "dns_stats" (`netcompress train --dns-stats`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import ops
from ..log import get_logger
from ..options import register_option
from ..proto import caffe_pb2 as pb
from .base import LayerContext, Shape, register_layer
from .masked import MaskedLayer
from .vision import Convolution, InnerProduct

log = get_logger("layers")

__all__ = ["DNSLayer", "DNSConvolution", "DNSInnerProduct", "CConvolution", "CInnerProduct",
           "SURGERY_GENERATOR", "DEFAULT_SURGERY_SEED"]

#: The net's named generator the DNS layers draw their surgery gate from (one per net, Decision 4).
SURGERY_GENERATOR = "dns_surgery"
# Guo's / the reference's default when no surgery seed is given: glibc's unseeded rand() (seed 1).
DEFAULT_SURGERY_SEED = 1

register_option(
    "dns_stats", "--dns-stats", default="float64", choices=("float64", "caffe-cpu"),
    help="how DNS layers sum their statistics: float64 (default; agrees with the reference's GPU runs "
         "to ~1e-7) or caffe-cpu (the reference CPU build's sequential float32 sums, bit for bit)")


class _SurgeryMasked(torch.autograd.Function):
    """W⊙M as the surgery wrote it; the gradient reaches W unmasked, as dns_masked_weight's ("splicing")."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        return masked.view_as(masked)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class DNSLayer(MaskedLayer):
    """Dynamic Network Surgery on top of Convolution or InnerProduct (see the module docstring)."""

    mask_kind = "dns"
    masked_forward = True
    freeze_masked = False

    def _init_dns(self) -> None:
        self._surgery_out: dict[int, tuple[torch.Tensor, int, int]] = {}  # see _masked
        dp = getattr(self.layer_param, self.param_field)
        self._check_dns_params(dp)
        self.gamma = float(dp.gamma)
        self.power = float(dp.power)
        self.c_rate = float(dp.c_rate)
        self.iter_stop = int(dp.iter_stop)  # a float in the proto, truncated as the reference does
        self.alpha_low = float(dp.alpha_low)
        self.alpha_high = float(dp.alpha_high)
        self.stats_mode = str(self.ctx.option("dns_stats", "float64"))
        if self.stats_mode not in ("float64", "caffe-cpu"):
            raise self.error(f"the option dns_stats must be 'float64' or 'caffe-cpu', got '{self.stats_mode}'")
        self._add_masks()
        if self.phase == pb.TRAIN:  # created now, so every process and every snapshot has it
            self.ctx.named_generator(SURGERY_GENERATOR, DEFAULT_SURGERY_SEED)
        self.stats: torch.Tensor | None = None  # float64 [mu, std, n_weight, n_bias]
        # The thresholds of `stats`, computed once per statistics (they persist for the whole run), so a
        # surgery costs only its mask-update launches; keyed by the tensor and its version counter.
        self._thresholds: tuple[torch.Tensor, torch.Tensor] | None = None
        self._thresholds_of: tuple[torch.Tensor | None, int] = (None, -1)
        self.surgeries = 0  # how many mask updates this layer has done (for reports and tests)

    def _check_dns_params(self, dp) -> None:
        """The surgery parameters a computation can use (reference-semantics 2.3): gamma >= 0 and
        power > 0 (the gate (1 + gamma*iter)^-power is otherwise undefined or never decays), any
        finite c_rate (the reference's AlexNet nets use negative ones), a finite iter_stop (negative:
        never prune), 0 <= alpha_low <= alpha_high (prune below, splice above)."""
        f = self.param_field
        for name in ("gamma", "power", "c_rate", "iter_stop", "alpha_low", "alpha_high"):
            v = float(getattr(dp, name))
            if not math.isfinite(v):
                raise self.error(f"{f}.{name} must be a finite number, got {v}")
        if dp.gamma < 0:
            raise self.error(f"{f}.gamma must be >= 0 (the surgery probability is (1 + gamma*iter)^-power), "
                             f"got {dp.gamma:g}")
        if dp.power <= 0:
            raise self.error(f"{f}.power must be > 0 (the surgery probability is (1 + gamma*iter)^-power), "
                             f"got {dp.power:g}")
        if dp.alpha_low < 0 or dp.alpha_low > dp.alpha_high:
            raise self.error(f"{f}: expected 0 <= alpha_low <= alpha_high (prune at |w| <= alpha_low*T, splice "
                             f"at |w| > alpha_high*T), got alpha_low {dp.alpha_low:g}, alpha_high "
                             f"{dp.alpha_high:g}")

    # -- the per-forward surgery step ------------------------------------------------------
    def before_train_forward(self) -> None:
        it = self.iteration
        if self.stats is None:
            if it != 0:
                log.warning("[%s] no DNS statistics at iteration %d (a snapshot without netcompress "
                            "state?): computing them from the current masked weights", self.name, it)
            self.compute_stats()
        gen = self.ctx.named_generator(SURGERY_GENERATOR, DEFAULT_SURGERY_SEED)
        r = float(torch.rand((), generator=gen, dtype=torch.float64))
        if math.pow(1.0 + self.gamma * it, -self.power) > r and it < self.iter_stop:
            self.surgery()

    def compute_stats(self) -> torch.Tensor:
        """Caffe's statistics over the masked weights and biases (logged like the GPU reference)."""
        b, bm = (self.bias.detach(), self.bias_mask) if self.bias_term else (None, None)
        stats_fn = _caffe_cpu_stats if self.stats_mode == "caffe-cpu" else ops.dns_stats
        self.stats = stats_fn(self.weight.detach(), self.weight_mask, b, bm)
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
        """Prune and splice both masks with T = max(mu + c_rate*std, 0), one fused pass per blob."""
        low, high = self.thresholds()
        self._surgery_out = {}
        for p, m in self.masked_pairs():
            out = self._scratch(p)
            ops.dns_update_mask_(p, m, low, high, out)  # (the op runs under no_grad)
            if p.device.type == "cpu":
                self._surgery_out[id(p)] = (out, p._version, m._version)
        self.surgeries += 1

    # -- forward ---------------------------------------------------------------------------
    def _masked(self, p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """W⊙M with dns_masked_weight's gradient rule (MaskedLayer._masked). The first forward after a surgery
        takes the W⊙M that the surgery's fused pass has just written (the same op on the same values, so the
        same bits) instead of computing it again, where W and M are unchanged since (their version counters):
        0.3-0.5 ms of a DNS LeNet step at batch 64 when a surgery runs (early in a DNS stage, almost every
        step). CPU only: a CUDA graph would freeze the choice."""
        held = self._surgery_out.pop(id(p), None)
        if held is not None and held[1] == p._version and held[2] == m._version:
            return _SurgeryMasked.apply(p, held[0])
        return super()._masked(p, m)

    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        """Where the fused surgery pass writes W⊙M (for the forward that follows, see `_masked`). Kept per
        layer and reused: a fresh large CPU tensor per surgery would come from the kernel as zeroed pages
        every time (AlexNet's fc6: ~60 ms of page faults)."""
        key = "_scratch_" + ("w" if like is self.weight else "b")
        buf = self.__dict__.get(key)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = torch.empty_like(like, memory_format=torch.contiguous_format)
            self.__dict__[key] = buf  # a plain attribute: not state, not moved by .to()
        return buf

    def thresholds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_low*T, alpha_high*T) of `ops.dns_thresholds`, on the statistics' device; computed again
        only when the statistics change (a new tensor, or one modified in place)."""
        stats = self.stats
        held, version = self._thresholds_of
        if self._thresholds is None or held is not stats or version != stats._version:
            self._thresholds = ops.dns_thresholds(stats, self.c_rate, self.alpha_low, self.alpha_high)
            self._thresholds_of = (stats, stats._version)
        return self._thresholds

    def replicated_state(self) -> dict[str, torch.Tensor | None]:
        return {**super().replicated_state(), "DNS statistics (mu, std)": self.stats}

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
