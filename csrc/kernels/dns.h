// Dynamic Network Surgery, per element (reference-semantics §2.3-2.4, GPU semantics).
#pragma once

#include "common.h"

namespace netcompress {
namespace kernels {

// Forward uses W ⊙ M (the layer's weight_tmp / bias_tmp).
template <typename acc_t>
NC_HD inline acc_t dns_masked(acc_t w, acc_t m) {
  return w * m;
}

// §2.3 step 4: prune m == 1 ∧ |w| <= low, splice m == 0 ∧ |w| > high, any other mask value is kept.
// A NaN threshold (n == 0 statistics) makes both comparisons false, so masks freeze as in the reference.
template <typename acc_t>
NC_HD inline acc_t dns_mask_rule(acc_t w, acc_t m, acc_t low, acc_t high) {
  const acc_t a = abs_value(w);
  if (m == acc_t(1) && a <= low) return acc_t(0);
  if (m == acc_t(0) && a > high) return acc_t(1);
  return m;
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

// Exact zeros of m·w are not counted and add nothing to the sums.
NC_HD inline void dns_stats_add(DnsStatsAcc& a, double w, double m, bool is_bias) {
  const double v = m * w;
  if (v != 0.0) {
    a.s1 += abs_value(v);
    a.s2 += m * w * w;
    if (is_bias) {
      a.n_bias += 1.0;
    } else {
      a.n_weight += 1.0;
    }
  }
}

// out = [mu, std, n_weight, n_bias]; mu = S1/n, std = sqrt((S2 − n·mu²)/n), NaN when n == 0 (as the reference).
// A variance that rounds below zero (all |w| equal) is clamped to 0 instead of giving NaN.
NC_HD inline void dns_stats_finalize(const DnsStatsAcc& a, double* out) {
  const double n = a.n_weight + a.n_bias;
  const double mu = a.s1 / n;
  double var = (a.s2 - n * mu * mu) / n;
  if (var < 0.0) var = 0.0;  // NaN stays NaN
  out[0] = mu;
  out[1] = sqrt(var);
  out[2] = a.n_weight;
  out[3] = a.n_bias;
}

}  // namespace kernels
}  // namespace netcompress
