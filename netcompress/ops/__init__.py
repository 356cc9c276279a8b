"""netcompress ops: DNS surgery, INQ quantization and the freezing SGD update, as `torch.ops.netcompress.*`.

The kernels live in the compiled extension `netcompress._C` (csrc/); this module loads it, registers the
fake (meta) kernels and autograd formulas next to each other, and exposes typed wrappers. Pure-PyTorch
versions of every op live in `netcompress.ops.reference` as the test oracle; nothing falls back to them.

Thresholds that come from another op (DNS `low`/`high`, the INQ selection threshold) are one-element
tensors, on the weight's device or the CPU, so a whole DNS step (`dns_stats` -> `dns_thresholds` ->
`dns_update_mask_`) runs on the device without a host sync. Python floats are accepted as well.
"""
from __future__ import annotations

import dataclasses
import math
import struct

import torch

from ..errors import NetcompressError

try:
    from .. import _C
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "netcompress._C is not built: run `pip install --no-build-isolation -e .` in the netcompress "
        f"checkout (it compiles the extension against the installed torch {torch.__version__}); "
        f"the import failed with: {e}"
    ) from e

__all__ = [
    "WITH_CUDA",
    "INQRangeError",
    "INQStep",
    "dns_masked_weight",
    "dns_stats",
    "dns_thresholds",
    "dns_update_mask_",
    "dns_splice_grad_",
    "inq_partition_counts",
    "inq_mask_stats",
    "inq_exponent_range",
    "inq_threshold",
    "inq_quantize_",
    "inq_quantize_portion_",
    "sgd_momentum_update_",
    "max_pool2d",
    "round_half_away",
]

#: Whether the extension was compiled with its CUDA kernels.
WITH_CUDA: bool = bool(_C.with_cuda)

_ops = torch.ops.netcompress


def _scalar_tensor(x: float | torch.Tensor) -> torch.Tensor:
    # A CPU float64 scalar is read on the host by both backends, with no device sync.
    return x if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------
# Fake kernels and autograd, next to each other (shape inference on meta tensors, torch.compile).
# ---------------------------------------------------------------------------------------------------

@torch.library.register_fake("netcompress::dns_masked_weight")
def _dns_masked_weight_fake(weight, mask):
    return weight.new_empty(weight.shape)


def _dns_masked_weight_backward(ctx, grad):
    # Splicing (§2.4): the weight receives ∂L/∂(W⊙M) unmasked, so pruned weights keep learning and can be
    # spliced back; the mask is a buffer and receives nothing. Not the true derivative, on purpose.
    return grad, None


torch.library.register_autograd("netcompress::dns_masked_weight", _dns_masked_weight_backward)


@torch.library.register_fake("netcompress::dns_stats")
def _dns_stats_fake(weight, weight_mask, bias=None, bias_mask=None):
    return weight.new_empty((4,), dtype=torch.float64)


@torch.library.register_fake("netcompress::dns_update_mask_")
def _dns_update_mask_fake(weight, mask, threshold_low, threshold_high, masked_out):
    return None


@torch.library.register_fake("netcompress::dns_splice_grad_")
def _dns_splice_grad_fake(diff, mask, grad):
    return None


@torch.library.register_fake("netcompress::inq_mask_stats")
def _inq_mask_stats_fake(weight, mask):
    return weight.new_empty((5,), dtype=torch.float64)


@torch.library.register_fake("netcompress::inq_threshold")
def _inq_threshold_fake(weight, mask, n_keep):
    return weight.new_empty(())


@torch.library.register_fake("netcompress::inq_quantize_")
def _inq_quantize_fake(weight, mask, threshold, n2):
    return None


@torch.library.register_fake("netcompress::sgd_momentum_update_")
def _sgd_momentum_update_fake(grad, history, mask, momentum, local_rate):
    return None


def _pooled(size: int, k: int, pad: int, stride: int, ceil_mode: bool) -> int:
    # aten's pooling_output_shape, dilation 1
    out = (size + 2 * pad - k + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@torch.library.register_fake("netcompress::max_pool2d")
def _max_pool2d_fake(x, kernel_size, stride, padding, ceil_mode):
    shape = (*x.shape[:-2], _pooled(x.shape[-2], kernel_size[0], padding[0], stride[0], ceil_mode),
             _pooled(x.shape[-1], kernel_size[1], padding[1], stride[1], ceil_mode))
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.long)


def _max_pool2d_setup(ctx, inputs, output):
    x, kernel_size, stride, padding, ceil_mode = inputs
    ctx.geometry = (list(kernel_size), list(stride), list(padding), bool(ceil_mode))
    ctx.save_for_backward(x, output[1])


def _max_pool2d_backward(ctx, grad, grad_indices):
    # ATen's gradient of max_pool2d_with_indices: the same indices, so the same scatter.
    x, indices = ctx.saved_tensors
    kernel_size, stride, padding, ceil_mode = ctx.geometry
    gx = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, kernel_size, stride, padding, [1, 1], ceil_mode,
                                                         indices)
    return gx, None, None, None, None


torch.library.register_autograd("netcompress::max_pool2d", _max_pool2d_backward, setup_context=_max_pool2d_setup)


# ---------------------------------------------------------------------------------------------------
# DNS (reference-semantics §2)
# ---------------------------------------------------------------------------------------------------

def dns_masked_weight(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """W ⊙ M, the weight a DNS layer computes with (§2.3.5).

    weight, mask: same shape (any), dtype (float16/bfloat16/float32/float64) and device. Returns a new
    contiguous tensor of that shape. Its gradient flows to `weight` unmasked (§2.4); `mask` gets none.
    """
    return _ops.dns_masked_weight(weight, mask)


def dns_stats(weight: torch.Tensor, weight_mask: torch.Tensor, bias: torch.Tensor | None = None,
              bias_mask: torch.Tensor | None = None) -> torch.Tensor:
    """DNS statistics over the masked weight and bias together (§2.3.1, GPU semantics).

    Returns a float64 tensor `[mu, std, n_weight, n_bias]` of shape (4,) on the weight's device, where
    n_* = #{m·w != 0}, mu = Σ|m·w| / n and std = sqrt((Σ m·w² − n·mu²) / n), n = n_weight + n_bias: the
    population std of |w| over surviving nonzero entries. n == 0 gives NaN (as the reference, which then
    never changes masks). Sums are float64 over fixed blocks, so the result does not depend on the thread
    count; the reference summed in float32, so thresholds can differ in the last float32 bits.
    """
    with torch.no_grad():
        return _ops.dns_stats(weight, weight_mask, bias, bias_mask)


def dns_thresholds(stats: torch.Tensor, c_rate: float, alpha_low: float = 0.95,
                   alpha_high: float = 1.05) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_low·T, alpha_high·T) with T = max(mu + c_rate·std, 0) (§2.3.4), as 0-dim float64 tensors.

    `stats` comes from `dns_stats`; everything stays on its device. A NaN T stays NaN (`clamp` propagates
    it), so masks freeze as in the reference.
    """
    t = (stats[0] + c_rate * stats[1]).clamp_min(0.0)
    return alpha_low * t, alpha_high * t


def dns_update_mask_(weight: torch.Tensor, mask: torch.Tensor, threshold_low: float | torch.Tensor,
                     threshold_high: float | torch.Tensor, masked_out: torch.Tensor) -> None:
    """One fused pass of DNS surgery (§2.3.4), then the masked weight (§2.3.5).

    For each entry: if m == 1 and |w| <= low: m = 0; elif m == 0 and |w| > high: m = 1; other mask
    values are kept. Then masked_out = w ⊙ m. weight, mask, masked_out: same shape, dtype and device;
    masked_out must not alias weight. Thresholds: Python floats or one-element tensors on the weight's
    device or the CPU; they are compared in the weight's arithmetic type (float32 for float16/bfloat16).
    """
    with torch.no_grad():
        _ops.dns_update_mask_(weight, mask, _scalar_tensor(threshold_low), _scalar_tensor(threshold_high),
                              masked_out)


def dns_splice_grad_(diff: torch.Tensor, mask: torch.Tensor, grad: torch.Tensor) -> None:
    """One backward call's parameter-gradient rule of a DNS layer (§2.4), in one pass, in place.

    diff <- mask ⊙ diff + grad: the gradient accumulated so far survives only where the mask is 1, and the
    new gradient `grad` (∂L/∂(W⊙M), "splicing") is added unmasked. diff, mask, grad: same shape, dtype
    (float16/bfloat16/float32/float64) and device; arithmetic in the dtype (float32 for 16-bit types).
    """
    with torch.no_grad():
        _ops.dns_splice_grad_(diff, mask, grad)


# ---------------------------------------------------------------------------------------------------
# INQ (reference-semantics §3)
# ---------------------------------------------------------------------------------------------------

class INQRangeError(NetcompressError):
    """The reference's fatal CHECKs of ComputeQuantumRange (§3.3): the model cannot be quantized further."""


@dataclasses.dataclass(frozen=True)
class INQStep:
    """What one `inq_quantize_portion_` call did, with the numbers the reference logs (§3.4.7)."""

    n1: int                 # Max_power (−100: everything was already pruned)
    n2: int                 # Min_power = n1 − N + 1
    count: int              # entries in the blob
    n_yet: int              # mask == 1 entries before the step
    n_init: int = 0
    n_keep: int = 0
    n_update: int = 0       # nYet − nKeep, as logged; ties at the threshold may quantize more
    skipped: str = ""       # why nothing was done ("portion", "pruned", "done"), or ""


_F32 = struct.Struct("<f")


def _f32(x: float) -> float:
    """x rounded to float32 and widened back to float64, like the reference's (double)(float) casts."""
    return _F32.unpack(_F32.pack(x))[0]


def round_half_away(x: float) -> int:
    """C `round`: halves go away from zero (Python's `round` goes to even)."""
    a = abs(x)
    r = math.floor(a)
    if a - r >= 0.5:  # exact for doubles: a − floor(a) is representable
        r += 1
    return int(math.copysign(r, x))


def inq_partition_counts(n_yet: int, p0: float, p1: float) -> tuple[int, int, int]:
    """(n_init, n_keep, n_update) of ShapeIntoTwoPower (§3.4 steps 4-6), bit for bit.

    p0, p1: previous and target accumulated portions, rounded to float32 first (the prototxt stores them as
    float). n_init = round((double)(float)n_yet / (1 − p0)), n_keep = round(n_init·(1 − p1)), with C's
    round-half-away; n_update = n_yet − n_keep. The cases the reference leaves undefined raise ValueError.
    """
    p0f, p1f = _f32(p0), _f32(p1)
    if p0f >= 1.0:
        raise ValueError(f"inq_partition_counts: portion[0] must be < 1, got {p0}")
    n_init = round_half_away(_f32(float(n_yet)) / (1.0 - p0f))
    n_keep = round_half_away(n_init * (1.0 - p1f))
    if n_keep < 0:
        raise ValueError(f"inq_partition_counts: portion[1] must be <= 1, got {p1} (n_keep = {n_keep})")
    return n_init, n_keep, n_yet - n_keep


def inq_mask_stats(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One pass over an INQ blob (§3.3): float64 (5,) `[max_t, max_q, n_t, n_q, n_other]`.

    max_t / n_t: largest |v| and count over mask == 1 (not yet quantized); max_q / n_q: the same over
    mask == 0 (quantized or pruned); n_other: entries with any other mask value. A maximum is −1 when its
    set is empty. weight, mask: same shape, float32/float64, same device.
    """
    with torch.no_grad():
        return _ops.inq_mask_stats(weight, mask)


_FLT_EPSILON = 2.0 ** -23


def _log2_floor(x: float) -> int:
    return math.floor(math.log(4.0 * x / 3.0) / math.log(2.0))


def _exponent_range(stats: list[float], num_quantum_values: int) -> tuple[int, int]:
    # Mirrors ComputeQuantumRange: a maximum of −1 is the reference's "still INT_MIN" (no entry seen).
    max_t, max_q, n_q = stats[0], stats[1], stats[3]
    if max_q >= 0.0 and abs(max_q) <= _FLT_EPSILON:
        # (a) pruned entries, all ~0, nothing quantized yet: a DNS-pruned model at its first INQ stage.
        if max_t < 0.0:
            n1 = -100  # the reference's "all pruned" sentinel
        elif max_t > _FLT_EPSILON:
            n1 = _log2_floor(max_t)
        else:
            raise INQRangeError(f"inq_exponent_range: case (a), pruned model: the largest unquantized |w| is "
                                f"{max_t:g}, expected > FLT_EPSILON ({_FLT_EPSILON:g})")
    elif max_q < 0.0:
        # (b) no mask-0 entries: a fresh model.
        if n_q != 0:
            raise INQRangeError(f"inq_exponent_range: case (b), fresh model: {int(n_q)} mask-0 entries are all "
                                "NaN, expected none")
        if not max_t > _FLT_EPSILON:
            raise INQRangeError("inq_exponent_range: case (b), fresh model: expected a mask-1 entry with "
                                f"|w| > FLT_EPSILON ({_FLT_EPSILON:g}), got "
                                + (f"max |w| = {max_t:g}" if max_t >= 0.0 else "none"))
        n1 = _log2_floor(max_t)
    else:
        # (c) some entries are already quantized: n1 is the largest power present.
        if not max_t > _FLT_EPSILON:
            raise INQRangeError("inq_exponent_range: case (c), partly quantized model: expected an "
                                f"unquantized entry with |w| > FLT_EPSILON ({_FLT_EPSILON:g}), got "
                                + (f"max |w| = {max_t:g}" if max_t >= 0.0 else "none left"))
        t_exp = _log2_floor(max_t)
        n1 = round_half_away(math.log(max_q) / math.log(2.0))
        if n1 < t_exp:
            raise INQRangeError(f"inq_exponent_range: case (c), hard situation: an unquantized weight "
                                f"({max_t:g}, exponent {t_exp}) has grown past the largest quantized power "
                                f"2^{n1}; expected exponent <= {n1}")
    return n1, n1 - num_quantum_values + 1


def inq_exponent_range(weight: torch.Tensor, mask: torch.Tensor, num_quantum_values: int) -> tuple[int, int]:
    """(n1, n2) of ComputeQuantumRange (§3.3): powers 2^n2 … 2^n1, n2 = n1 − num_quantum_values + 1.

    Case (a), DNS-pruned model (mask-0 entries all |w| <= FLT_EPSILON): n1 = floor(log(4·max_t/3)/log 2)
    over mask == 1, or the sentinel −100 when every entry is pruned. Case (b), fresh model (no mask-0
    entries): the same formula. Case (c), partly quantized: n1 = round(log2(max_q)), which must be at
    least the unquantized maximum's exponent. The reference's fatal CHECKs raise INQRangeError naming the
    case. Reads a 5-number summary back to the host (one sync).
    """
    stats = inq_mask_stats(weight, mask).tolist()
    return _exponent_range(stats, num_quantum_values)


def inq_threshold(weight: torch.Tensor, mask: torch.Tensor, n_keep: int) -> torch.Tensor:
    """0-dim tensor (weight's dtype and device): the `n_keep`-th smallest |v| (0-based) among mask == 1
    entries, i.e. `sorted(|v| over mask == 1)[n_keep]` (§3.4.8); +inf when n_keep >= #{mask == 1}."""
    with torch.no_grad():
        return _ops.inq_threshold(weight, mask, int(n_keep))


def inq_quantize_(weight: torch.Tensor, mask: torch.Tensor, threshold: float | torch.Tensor, n2: int) -> None:
    """Quantize every mask == 1 entry with |v| >= threshold (ties included), in place (§3.4.8, §3.5).

    v <- sign(v)·2^e with e = floor(log(4|v|/3)/log 2) in float64, if e >= n2, else 0 (no upper clamp);
    mask <- 0. weight, mask: same shape, float32/float64, same device. threshold: a float or a one-element
    tensor (e.g. from `inq_threshold`) on the weight's device or the CPU.
    """
    with torch.no_grad():
        _ops.inq_quantize_(weight, mask, _scalar_tensor(threshold), int(n2))


def inq_quantize_portion_(weight: torch.Tensor, mask: torch.Tensor, portion: tuple[float, float],
                          num_quantum_values: int) -> INQStep:
    """One blob's quantization stage, in place: ComputeQuantumRange then ShapeIntoTwoPower (§3.2-§3.5).

    portion: (previous, target) accumulated portions of the layer's `inq_convolution_param.portion`.
    Skips when portion[1] == 0 or when everything is pruned (n1 == −100). Otherwise quantizes the
    largest-|v| mask-1 entries so that about portion[1] of the initially unquantized entries are done.
    """
    stats = inq_mask_stats(weight, mask).tolist()
    count, n_yet = weight.numel(), int(stats[2])
    p0, p1 = portion
    if n_yet == 0 and stats[1] > _FLT_EPSILON:
        # Every entry is quantized (or pruned) already: nothing to do. The reference's
        # ComputeQuantumRange aborts here (case (c) CHECK); netcompress skips (README: deviations).
        n1 = round_half_away(math.log(stats[1]) / math.log(2.0))
        return INQStep(n1, n1 - num_quantum_values + 1, count, 0, skipped="done")
    n1, n2 = _exponent_range(stats, num_quantum_values)  # runs (and checks) even when the step is skipped
    if _f32(p1) == 0.0:
        return INQStep(n1, n2, count, n_yet, skipped="portion")
    if n1 == -100:
        return INQStep(n1, n2, count, n_yet, skipped="pruned")
    n_init, n_keep, n_update = inq_partition_counts(n_yet, p0, p1)
    if n_update > 0:
        inq_quantize_(weight, mask, inq_threshold(weight, mask, n_keep), n2)
    return INQStep(n1, n2, count, n_yet, n_init, n_keep, n_update)


# ---------------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------------

def max_pool2d(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int] = (0, 0), ceil_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`F.max_pool2d(x, ..., return_indices=True)` with dilation 1: the same values and int64 indices.

    x: (N, C, H, W) or (C, H, W), floating. The first maximum of a window in row-major order wins; NaN
    propagates. The CPU kernel is several times faster than ATen's for NCHW tensors; on CUDA this is ATen's.
    Differentiable in x (ATen's max_pool2d_with_indices_backward).
    """
    return _ops.max_pool2d(x, list(kernel_size), list(stride), list(padding), bool(ceil_mode))


# ---------------------------------------------------------------------------------------------------
# Solver (reference-semantics §4.4, §3.6, Decision 5)
# ---------------------------------------------------------------------------------------------------

def sgd_momentum_update_(grad: torch.Tensor, history: torch.Tensor, mask: torch.Tensor | None,
                         momentum: float, local_rate: float) -> None:
    """Caffe's SGD update value with INQ freezing, in one pass, in place.

    history <- momentum·history + local_rate·grad; history <- history ⊙ mask (if given); grad <- history.
    Frozen (mask 0) entries thus get a zero update and zero history. grad, history, mask: same shape,
    dtype (float16/bfloat16/float32/float64) and device; arithmetic in the dtype (float32 for 16-bit).
    """
    with torch.no_grad():
        _ops.sgd_momentum_update_(grad, history, mask, float(momentum), float(local_rate))

from .quant import *  # noqa: E402,F401,F403  (MicroNet quantizers: act_quant, int_quant, quant_weight, ...)
