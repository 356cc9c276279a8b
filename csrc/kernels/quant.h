// MicroNet quantizers, per element (recipes-spec §4.5 ActQuant, §4.6 weight quantizer, §5.2 IntQuant).
#pragma once

#include "common.h"

namespace netcompress {
namespace kernels {

// torch.round: halves to even (rint under the default rounding mode; the same as nearbyint, which torch calls).
NC_HD inline float round_half_even(float x) {
  return rintf(x);
}
NC_HD inline double round_half_even(double x) {
  return rint(x);
}

// torch.clamp(v, lo, hi): NaN stays NaN (both comparisons are false).
template <typename acc_t>
NC_HD inline acc_t clamp_nan(acc_t v, acc_t lo, acc_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// The integer code before clamping, r = round(x / α). A scale of 0 gives r = 0 (recipes-spec Q13: an all-zero
// weight row has α = 0 and q = 0, not the source's 0/0 = NaN).
template <typename acc_t>
NC_HD inline acc_t quant_round(acc_t x, acc_t alpha) {
  return alpha == acc_t{} ? acc_t{} : round_half_even(div_rn(x, alpha));
}

// q = clamp(round(x / α), lo, hi): an integer in [lo, hi] (NaN for NaN x).
template <typename acc_t>
NC_HD inline acc_t quant_code(acc_t x, acc_t alpha, acc_t lo, acc_t hi) {
  return clamp_nan(quant_round(x, alpha), lo, hi);
}

// §4.5 / §4.6 forward: y = α·clamp(round(x / α), lo, hi).
template <typename acc_t>
NC_HD inline acc_t quant_dequant(acc_t x, acc_t alpha, acc_t lo, acc_t hi) {
  return mul_rn(alpha, quant_code(x, alpha, lo, hi));
}

// §5.2 IntQuant forward: clamp(round_half_even(x), lo, hi) (α = 1 without the division and product).
template <typename acc_t>
NC_HD inline acc_t int_quant(acc_t x, acc_t lo, acc_t hi) {
  return clamp_nan(round_half_even(x), lo, hi);
}

// The straight-through estimator of §4.5: the gradient passes round unchanged and is zeroed where clamp cut,
// i.e. dy/dx = [lo <= r <= hi] with r the unclamped code (0 for NaN r).
template <typename acc_t>
NC_HD inline acc_t quant_ste(acc_t grad, acc_t r, acc_t lo, acc_t hi) {
  return (r >= lo) & (r <= hi) ? grad : acc_t{};
}

}  // namespace kernels
}  // namespace netcompress
