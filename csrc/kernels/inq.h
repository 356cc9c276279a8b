// Incremental Network Quantization, per element (reference-semantics §3.3, §3.5).
#pragma once

#include <stdint.h>

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
    lx = add_rn(mul_rn(p, kLn2Hi), mul_rn(p, kLn2Lo));
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

// inq_round_pow2 without log(), on the bits of a float32 or float64 value. With |v| = M·2^E, M in [1, 2),
// 4|v|/3 = (4M/3)·2^E and 4M/3 is in [4/3, 2) for M < 1.5 and in [2, 8/3) for M >= 1.5, so
// floor(log2(4|v|/3)) = E + (M >= 1.5): adding half the mantissa range to the bits carries into the exponent
// field exactly then. The log-ratio form computes the same floor unless log2(4M/3) is within its rounding error
// (~2^-41 at |E| <= 1023) of an integer, which needs M within 2^-40 of 1.5, or M == 1.5 (4|v|/3 an exact power
// of two, where the reference's ratio is sometimes 1 ulp low). Those values, zeros, subnormals, ±inf, NaN and
// float64 values with E >= 1022 (4·|v| overflows to +inf, which ends at 0) return false: use inq_round_pow2.
// For float32 only M == 1.5 exactly is excluded (its neighbours are 2^-23 away). Checked against
// inq_round_pow2 on every float32 (offline) and on every exponent in the CPU test suite.
template <typename bits_t, int kMantBits, int kExpBias, unsigned kExpSpecial, uint64_t kNearHalf>
NC_HD inline bool inq_round_pow2_bits(bits_t v, int n2, bits_t* out) {
  constexpr bits_t kSign = bits_t(1) << (sizeof(bits_t) * 8 - 1);
  constexpr bits_t kMant = (bits_t(1) << kMantBits) - 1;
  constexpr bits_t kHalf = bits_t(1) << (kMantBits - 1);  // mantissa bits of M = 1.5
  const bits_t a = v & ~kSign;
  const bits_t ex = a >> kMantBits;
  const bits_t mant = a & kMant;
  const bits_t dist = mant > kHalf ? mant - kHalf : kHalf - mant;
  const bool exact = (ex != 0) & (ex < bits_t(kExpSpecial)) & (dist > bits_t(kNearHalf));
  const bits_t eb = (a + kHalf) >> kMantBits;  // biased floor(log2(4|v|/3))
  const bool keep = static_cast<long long>(eb) - kExpBias >= n2;
  *out = keep ? ((v & kSign) | (eb << kMantBits)) : bits_t(0);
  return exact;
}

// float32: exponent field 255 is inf/NaN. float64: fields 2045 and 2046 (E = 1022, 1023: 4·|v| overflows) are
// excluded too, and M within 2^13 units in the last place (2^-39) of 1.5.
NC_HD inline bool inq_round_pow2_bits(uint32_t v, int n2, uint32_t* out) {
  return inq_round_pow2_bits<uint32_t, 23, 127, 255u, 0>(v, n2, out);
}
NC_HD inline bool inq_round_pow2_bits(uint64_t v, int n2, uint64_t* out) {
  return inq_round_pow2_bits<uint64_t, 52, 1023, 2045u, uint64_t(1) << 13>(v, n2, out);
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
