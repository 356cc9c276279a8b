"""Pure-PyTorch versions of every netcompress op: the test oracle, never a fallback.

They follow reference-semantics §2-§4 literally (Python's `math.log` is the C library's `log`, which the
reference called), favouring obviousness over speed. Mutating functions mutate their arguments like the
ops; functions return what the ops return. The kernels accumulate in float64 and compare in the
weight's arithmetic type (float32 for float16/bfloat16), and so do these.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "dns_masked_weight",
    "dns_stats",
    "dns_update_mask_",
    "dns_splice_grad_",
    "inq_mask_stats",
    "inq_threshold",
    "inq_round_pow2",
    "inq_quantize_",
    "sgd_momentum_update_",
    "max_pool2d",
    "to_channels_last",
    "to_contiguous",
    "act_quant",
    "act_quant_backward",
    "int_quant",
    "int_quant_backward",
    "quant_weight",
    "quant_weight_codes",
    "quant_weight_fit",
]


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def dns_masked_weight(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """W ⊙ M (§2.3.5)."""
    return weight * mask


def dns_stats(weight: torch.Tensor, weight_mask: torch.Tensor, bias: torch.Tensor | None = None,
              bias_mask: torch.Tensor | None = None) -> torch.Tensor:
    """float64 [mu, std, n_weight, n_bias] over nonzero m·w of weight and bias together (§2.3.1)."""
    sums = torch.zeros(2, dtype=torch.float64)
    counts = [0.0, 0.0]
    pairs = [(weight, weight_mask)] + ([(bias, bias_mask)] if bias is not None else [])
    for j, (w, m) in enumerate(pairs):
        w64 = w.detach().to("cpu", torch.float64).reshape(-1)
        m64 = m.detach().to("cpu", torch.float64).reshape(-1)
        v = m64 * w64
        keep = v != 0
        sums[0] += v[keep].abs().sum()
        sums[1] += (m64 * w64 * w64)[keep].sum()
        counts[j] = float(keep.sum())
    n = counts[0] + counts[1]
    s1, s2 = float(sums[0]), float(sums[1])
    mu = s1 / n if n else math.nan
    var = (s2 - n * mu * mu) / n if n else math.nan
    std = math.sqrt(max(var, 0.0)) if n else math.nan
    return torch.tensor([mu, std, counts[0], counts[1]], dtype=torch.float64, device=weight.device)


def dns_update_mask_(weight: torch.Tensor, mask: torch.Tensor, threshold_low: float, threshold_high: float,
                     masked_out: torch.Tensor) -> None:
    """Prune m == 1 ∧ |w| <= low, splice m == 0 ∧ |w| > high (§2.3.4); masked_out = w ⊙ m_new."""
    acc = _opmath(weight.dtype)
    low = torch.tensor(float(threshold_low), dtype=acc)
    high = torch.tensor(float(threshold_high), dtype=acc)
    a = weight.to(acc).abs().cpu()
    m = mask.to(acc).cpu()
    new = m.clone()
    new[(m == 1) & (a <= low)] = 0
    new[(m == 0) & (a > high)] = 1
    mask.copy_(new)
    masked_out.copy_((weight.to(acc) * new.to(weight.device)).to(weight.dtype))


def dns_splice_grad_(diff: torch.Tensor, mask: torch.Tensor, grad: torch.Tensor) -> None:
    """diff <- mask ⊙ diff + grad (§2.4, one backward call), in the dtype's arithmetic type."""
    acc = _opmath(diff.dtype)
    diff.copy_(mask.to(acc) * diff.to(acc) + grad.to(acc))


def inq_mask_stats(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float64 [max|v| mask==1, max|v| mask==0, #mask==1, #mask==0, #other]; maxima −1 if none (§3.3)."""
    a = weight.detach().to("cpu", torch.float64).abs().reshape(-1)
    m = mask.detach().to("cpu", torch.float64).reshape(-1)
    t, q = m == 1, m == 0

    def _max(sel: torch.Tensor) -> float:
        vals = a[sel]
        vals = vals[~torch.isnan(vals)]
        return float(vals.max()) if vals.numel() else -1.0

    out = [_max(t), _max(q), float(t.sum()), float(q.sum()), float((~(t | q)).sum())]
    return torch.tensor(out, dtype=torch.float64, device=weight.device)


def inq_threshold(weight: torch.Tensor, mask: torch.Tensor, n_keep: int) -> torch.Tensor:
    """sorted(|v| over mask == 1, ascending)[n_keep] (§3.4.8), +inf when n_keep >= #{mask == 1}."""
    vals = sorted(abs(float(v)) for v, m in zip(weight.reshape(-1).tolist(), mask.reshape(-1).tolist()) if m == 1)
    thr = vals[n_keep] if n_keep < len(vals) else math.inf
    return torch.tensor(thr, dtype=weight.dtype, device=weight.device)


def inq_round_pow2(v: float, n2: int) -> float:
    """§3.5 on one value: sign(v)·2^e, e = floor(log(4|v|/3)/log(2)) in float64, if e >= n2, else 0."""
    x = 4.0 * abs(v) / 3.0
    if not (0.0 < x < math.inf):  # log(0) = −inf and non-finite values end at 0 in the reference
        return 0.0
    e = math.floor(math.log(x) / math.log(2.0))
    if e < n2:
        return 0.0
    return math.copysign(math.ldexp(1.0, e), v)


def inq_quantize_(weight: torch.Tensor, mask: torch.Tensor, threshold: float, n2: int) -> None:
    """mask == 1 ∧ |v| >= threshold: v <- inq_round_pow2(v, n2), mask <- 0 (§3.4.8, §3.5)."""
    thr = float(threshold)
    w = weight.detach().cpu().reshape(-1).tolist()
    m = mask.detach().cpu().reshape(-1).tolist()
    for i, (v, mi) in enumerate(zip(w, m)):
        if mi == 1 and abs(v) >= thr:
            w[i], m[i] = inq_round_pow2(v, n2), 0.0
    weight.copy_(torch.tensor(w, dtype=torch.float64).reshape(weight.shape))
    mask.copy_(torch.tensor(m, dtype=torch.float64).reshape(mask.shape))


def sgd_momentum_update_(grad: torch.Tensor, history: torch.Tensor, mask: torch.Tensor | None, momentum: float,
                         local_rate: float) -> None:
    """h <- momentum·h + local_rate·g; h <- h ⊙ mask (INQ freezing); g <- h (§4.4, §3.6)."""
    acc = _opmath(grad.dtype)
    mom = torch.tensor(momentum, dtype=acc)
    rate = torch.tensor(local_rate, dtype=acc)
    h = mom * history.to(acc) + rate * grad.to(acc)
    if mask is not None:
        h = h * mask.to(acc)
    history.copy_(h)
    grad.copy_(h)


def max_pool2d(x: torch.Tensor, kernel_size, stride, padding=(0, 0), ceil_mode: bool = False):
    """PyTorch's own MAX pooling with indices (dilation 1): the op must match it exactly."""
    return torch.nn.functional.max_pool2d(x, tuple(kernel_size), tuple(stride), tuple(padding), ceil_mode=ceil_mode,
                                          return_indices=True)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """x's values in channels-last memory order (a copy even where `contiguous` would return x)."""
    return x.clone(memory_format=torch.channels_last)


def to_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x's values in contiguous (NCHW) memory order, in a new tensor."""
    return x.clone(memory_format=torch.contiguous_format)


def nnpack_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  padding) -> torch.Tensor:
    """The convolution nnpack_conv2d computes: F.conv2d with stride 1 (its values up to rounding)."""
    return torch.nn.functional.conv2d(x, weight, bias, padding=tuple(padding))


def sparse_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  padding) -> torch.Tensor:
    """The convolution sparse_conv2d computes: F.conv2d with stride 1 (its values up to rounding)."""
    return torch.nn.functional.conv2d(x, weight, bias, padding=tuple(padding))


def direct_conv2d_weight(x: torch.Tensor, grad_out: torch.Tensor, kernel_size, padding):
    """The gradients direct_conv2d_weight computes: F.conv2d's weight and bias gradients (stride 1), by autograd."""
    gw = torch.nn.grad.conv2d_weight(x, (grad_out.shape[1], x.shape[1], *kernel_size), grad_out,
                                     padding=tuple(padding))
    return gw, grad_out.sum((0, 2, 3))


def sparse_conv2d_input(grad_out: torch.Tensor, weight: torch.Tensor, input_size, padding) -> torch.Tensor:
    """The data gradient sparse_conv2d_input computes: F.conv2d's (stride 1), by autograd."""
    return torch.nn.grad.conv2d_input((grad_out.shape[0], weight.shape[1], *input_size), weight, grad_out,
                                      padding=tuple(padding))


# ---- MicroNet quantizers (recipes-spec §4.5, §4.6, §5.2) ----

def _code(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """round(x/α), halves to even, in x's dtype; 0 where α == 0 (Q13)."""
    return torch.where(alpha == 0, torch.zeros_like(x), torch.round(x / alpha))


def act_quant(x: torch.Tensor, alpha: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """α·clamp(round(x/α), low, high) (§4.5), in the dtype's arithmetic type."""
    acc = _opmath(x.dtype)
    a = alpha.reshape(()).to(x.device, acc)
    return (a * torch.clamp(_code(x.to(acc), a), low, high)).to(x.dtype)


def act_quant_backward(grad: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, low: float,
                       high: float) -> torch.Tensor:
    """The STE of §4.5: grad where low <= round(x/α) <= high, else 0."""
    acc = _opmath(x.dtype)
    r = _code(x.to(acc), alpha.reshape(()).to(x.device, acc))
    return torch.where((r >= low) & (r <= high), grad, torch.zeros_like(grad))


def int_quant(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """clamp(round_half_even(x), low, high) (§5.2)."""
    return torch.clamp(torch.round(x.to(_opmath(x.dtype))), low, high).to(x.dtype)


def int_quant_backward(grad: torch.Tensor, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    r = torch.round(x.to(_opmath(x.dtype)))
    return torch.where((r >= low) & (r <= high), grad, torch.zeros_like(grad))


def _rows(weight: torch.Tensor, mask: torch.Tensor | None, alpha: torch.Tensor):
    acc = _opmath(weight.dtype)
    v = weight.to(acc) if mask is None else weight.to(acc) * mask.to(acc)
    a = alpha.to(acc).reshape(-1, *([1] * (weight.dim() - 1)))
    return v, a


def quant_weight_codes(weight: torch.Tensor, mask: torch.Tensor | None, alpha: torch.Tensor, low: float,
                       high: float) -> torch.Tensor:
    """q = clamp(round(v/α_r), low, high) per row r, v = weight ⊙ mask (§4.6, §4.9)."""
    v, a = _rows(weight, mask, alpha)
    return torch.clamp(_code(v, a), low, high).to(weight.dtype)


def quant_weight(weight: torch.Tensor, mask: torch.Tensor | None, alpha: torch.Tensor, low: float,
                 high: float) -> torch.Tensor:
    """Wq = α_r·q per row (§4.6)."""
    v, a = _rows(weight, mask, alpha)
    return (a * torch.clamp(_code(v, a), low, high)).to(weight.dtype)


def quant_weight_fit(weight: torch.Tensor, mask: torch.Tensor | None, bitwidth: int, iters: int = 100,
                     per_channel: bool = True) -> torch.Tensor:
    """§4.6's alternating least squares, one row at a time: α ← max|v|/clip, then `iters` times
    α ← ⟨v,q⟩/⟨q,q⟩ (float64 sums, α rounded to the weight's dtype), q = clamp(round(v/α)); ⟨q,q⟩ = 0 gives 0."""
    clip = 2 ** (bitwidth - 1)
    rows = weight.shape[0]
    if weight.numel() == 0:
        return weight.new_zeros(rows)
    w = weight.detach().reshape(rows if per_channel else 1, -1)
    m = None if mask is None else mask.detach().reshape(w.shape)
    out = []
    for r in range(w.shape[0]):
        wr, mr = w[r], None if m is None else m[r]
        v = wr.double() if mr is None else wr.double() * mr.double()
        alpha = torch.tensor(float(v.abs().max()) / clip if v.numel() else 0.0, dtype=weight.dtype)
        for _ in range(iters):
            q = quant_weight_codes(wr[None], None if mr is None else mr[None], alpha[None], -clip, clip - 1)[0]
            q = q.double()
            den = float((q * q).sum())
            alpha = torch.tensor(float((v * q).sum()) / den if den > 0 else 0.0, dtype=weight.dtype)
        out.append(alpha)
    alpha = torch.stack(out).to(weight.device)
    return alpha if per_channel else alpha.expand(rows).clone()
