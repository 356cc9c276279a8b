// Dynamic Network Surgery, per element (reference-semantics §2.3-2.4, GPU semantics).
#pragma once

#include "common.h"

namespace netcompress {
namespace kernels {

// Forward uses W ⊙ M (the layer's weight_tmp / bias_tmp).
template <typename acc_t>
NC_HD inline acc_t dns_masked(acc_t w, acc_t m) {
  return mul_rn(w, m);
}

// §2.3 step 4: prune m == 1 ∧ |w| <= low, splice m == 0 ∧ |w| > high, any other mask value is kept.
// A NaN threshold (n == 0 statistics) makes both comparisons false, so masks freeze as in the reference.
template <typename acc_t>
NC_HD inline acc_t dns_mask_rule(acc_t w, acc_t m, acc_t low, acc_t high) {
  // Selects, not branches (the two cases exclude each other), so that CPU loops vectorize.
  const acc_t zero = acc_t{}, one = acc_t{} + 1;
  const acc_t a = abs_value(w);
  const acc_t kept = ((m == one) & (a <= low)) ? zero : m;
  return ((m == zero) & (a > high)) ? one : kept;
}

// Running sums of §2.3 step 1, over weights and biases together; float64 whatever the weight dtype
// (the reference summed in float32; double makes the result independent of the summation order in practice).
struct DnsStatsAcc {
  double s1;        // Σ |m·w|
  double s2;        // Σ m·w²
  double n_weight;  // #{m·w != 0} over the weight
  double n_bias;    // #{m·w != 0} over the bias

  NC_HD void merge(const DnsStatsAcc& o) {
    s1 += o.s1;
    s2 += o.s2;
    n_weight += o.n_weight;
    n_bias += o.n_bias;
  }
};

NC_HD inline DnsStatsAcc dns_stats_zero() {
  DnsStatsAcc a;
  a.s1 = a.s2 = a.n_weight = a.n_bias = 0.0;
  return a;
}

// One entry's terms of step 1: |m·w|, m·w² (as (m·w)·w) and whether m·w != 0. Branch-free, so CPU loops
// vectorize: an exact zero of m·w (finite m and w) adds ±0 to both sums, which leaves them unchanged.
struct DnsStatsTerm {
  double abs_v;
  double v_w;
  bool nonzero;
};

NC_HD inline DnsStatsTerm dns_stats_term(double w, double m) {
  const double v = mul_rn(m, w);
  DnsStatsTerm t;
  t.abs_v = abs_value(v);
  t.v_w = mul_rn(v, w);
  t.nonzero = v != 0.0;
  return t;
}

// Exact zeros of m·w are not counted and add nothing to the sums.
NC_HD inline void dns_stats_add(DnsStatsAcc& a, double w, double m, bool is_bias) {
  const DnsStatsTerm t = dns_stats_term(w, m);
  a.s1 = add_rn(a.s1, t.abs_v);
  a.s2 = add_rn(a.s2, t.v_w);  // not fma(v, w, s2): the CPU lanes round the product first
  const double one = t.nonzero ? 1.0 : 0.0;
  if (is_bias) {
    a.n_bias += one;
  } else {
    a.n_weight += one;
  }
}

// out = [mu, std, n_weight, n_bias]; mu = S1/n, std = sqrt((S2 − n·mu²)/n), NaN when n == 0 (as the reference).
// A variance that rounds below zero (all |w| equal) is clamped to 0 instead of giving NaN.
NC_HD inline void dns_stats_finalize(const DnsStatsAcc& a, double* out) {
  const double n = a.n_weight + a.n_bias;
  const double mu = a.s1 / n;
  double var = sub_rn(a.s2, mul_rn(mul_rn(n, mu), mu)) / n;
  if (var < 0.0) var = 0.0;  // NaN stays NaN
  out[0] = mu;
  out[1] = sqrt(var);
  out[2] = a.n_weight;
  out[3] = a.n_bias;
}

// reference-semantics §2.4, per backward call: diff <- m·diff + g (the new gradient g is not masked).
template <typename acc_t>
NC_HD inline acc_t dns_splice(acc_t diff, acc_t m, acc_t g) {
  return add_rn(mul_rn(m, diff), g);
}

}  // namespace kernels
}  // namespace netcompress
