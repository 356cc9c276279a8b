// Incremental Network Quantization, per element (reference-semantics §3.3, §3.5).
#pragma once

#include "common.h"

namespace netcompress {
namespace kernels {

// log(2.0) as glibc returns it (correctly rounded), and fdlibm's split of ln 2: kLn2Hi has 21 trailing zero
// bits, so k·kLn2Hi is exact for |k| < 2^21 and k·kLn2Hi + k·kLn2Lo is the correctly rounded k·ln 2.
constexpr double kLn2 = 6.93147180559945286227e-01;
constexpr double kLn2Hi = 6.93147180369123816490e-01;
constexpr double kLn2Lo = 1.90821492927058770002e-10;

// floor(log(x) / log(2)) for finite x > 0, in the reference's log-ratio form (§3.5), not log2 or frexp:
// at exact powers of two the ratio is sometimes 1 ulp low (x = 2^-29, 2^-31, 2^-39, ... give k − 1).
// glibc's log(2^k) is the correctly rounded k·ln 2 for every k (checked over the whole double range), so
// exact powers use that value explicitly; CUDA's log() need not round them the same way, and with this
// the CPU loop and the kernel agree bit for bit. Other x use log() itself: a float32 weight cannot bring
// 4|v|/3 close enough to a power of two for a 1-ulp difference between libms to change the floor.
NC_HD inline int inq_log2_floor(double x) {
  int k = 0;
  const double m = frexp(x, &k);  // x = m·2^k, m in [0.5, 1)
  double lx;
  if (m == 0.5) {
    const double p = static_cast<double>(k - 1);
    lx = p * kLn2Hi + p * kLn2Lo;
  } else {
    lx = log(x);
  }
  return static_cast<int>(floor(lx / kLn2));
}

// §3.5: v -> sign(v)·2^e with e = floor(log(4|v|/3)/log 2) in float64 if e >= n2, else 0; no upper clamp.
// v == 0 (log gives −inf) and non-finite values end at 0, as the reference's (int) conversion does on x86.
NC_HD inline double inq_round_pow2(double v, int n2) {
  const double a = abs_value(v);
  const double x = 4.0 * a / 3.0;
  if (!(x > 0.0 && x <= DBL_MAX)) return 0.0;
  const int e = inq_log2_floor(x);
  if (e < n2) return 0.0;
  const double p = ldexp(1.0, e);
  return v < 0.0 ? -p : p;
}

// §3.3 ComputeQuantumRange scan. Maxima are −1 when no entry has that mask value (|v| >= 0 otherwise);
// NaN values never win a comparison, as in the reference loop.
struct InqRangeAcc {
  double max_t;    // max |v| over mask == 1 (not yet quantized)
  double max_q;    // max |v| over mask == 0 (quantized or pruned)
  double n_t;      // #{mask == 1}
  double n_q;      // #{mask == 0}
  double n_other;  // #{mask not 0 or 1} (the reference logs an error for each)

  NC_HD void merge(const InqRangeAcc& o) {
    if (o.max_t > max_t) max_t = o.max_t;
    if (o.max_q > max_q) max_q = o.max_q;
    n_t += o.n_t;
    n_q += o.n_q;
    n_other += o.n_other;
  }
};

NC_HD inline InqRangeAcc inq_range_zero() {
  InqRangeAcc a;
  a.max_t = a.max_q = -1.0;
  a.n_t = a.n_q = a.n_other = 0.0;
  return a;
}

NC_HD inline void inq_range_add(InqRangeAcc& acc, double v, double m) {
  const double a = abs_value(v);
  if (m == 1.0) {
    if (a > acc.max_t) acc.max_t = a;
    acc.n_t += 1.0;
  } else if (m == 0.0) {
    if (a > acc.max_q) acc.max_q = a;
    acc.n_q += 1.0;
  } else {
    acc.n_other += 1.0;
  }
}

NC_HD inline void inq_range_finalize(const InqRangeAcc& a, double* out) {
  out[0] = a.max_t;
  out[1] = a.max_q;
  out[2] = a.n_t;
  out[3] = a.n_q;
  out[4] = a.n_other;
}

}  // namespace kernels
}  // namespace netcompress
