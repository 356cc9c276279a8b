// float16 loops with the F16C conversions in registers (x86-64 with GCC or Clang; chosen at run time).
//
// Eight values at a time: F16C widens them to a GCC vector of 8 floats, the rules of kernels/*.h run on that
// vector (they are written to instantiate for it), and F16C rounds the results back to nearest even. The same
// float arithmetic as the scalar loops (no FMA: -ffp-contract=off), so the same bits, at about the cost of the
// float32 loops per element instead of 2-3 times it through c10's bit-manipulation conversions. Each function
// handles the first n / 8 * 8 entries and returns how many; the caller finishes the tail.
#pragma once

#if defined(__GNUC__) && defined(__x86_64__)
#define NC_HAVE_F16C 1

#include <c10/util/Half.h>
#include <immintrin.h>

#include <cstdint>

#include "../kernels/dns.h"
#include "../kernels/solver.h"

namespace netcompress {
namespace cpu {
namespace f16c {

#define NC_F16C_TARGET __attribute__((target("avx2,f16c")))

typedef float v8f __attribute__((vector_size(32)));
typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));  // what a comparison of v4d gives

inline bool available() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return yes;
}

NC_F16C_TARGET inline v8f load8(const c10::Half* p) {
  return reinterpret_cast<v8f>(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

NC_F16C_TARGET inline void store8(c10::Half* p, v8f v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(reinterpret_cast<__m256>(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

NC_F16C_TARGET inline v8f splat(float x) {
  return v8f{} + x;
}

NC_F16C_TARGET inline int64_t masked_weight(int64_t n, const c10::Half* w, const c10::Half* m, c10::Half* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8(out + i, kernels::dns_masked(load8(w + i), load8(m + i)));
  return i;
}

NC_F16C_TARGET inline int64_t update_mask(int64_t n, const c10::Half* w, c10::Half* m, c10::Half* out, float low,
                                          float high) {
  const v8f lo = splat(low), hi = splat(high);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8f wi = load8(w + i);
    const v8f mi = kernels::dns_mask_rule(wi, load8(m + i), lo, hi);
    store8(m + i, mi);
    store8(out + i, kernels::dns_masked(wi, mi));
  }
  return i;
}

NC_F16C_TARGET inline int64_t splice_grad(int64_t n, c10::Half* diff, const c10::Half* m, const c10::Half* g) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8(diff + i, kernels::dns_splice(load8(diff + i), load8(m + i), load8(g + i)));
  return i;
}

// m may be null (no freezing).
NC_F16C_TARGET inline int64_t sgd(int64_t n, c10::Half* g, c10::Half* h, const c10::Half* m, float momentum,
                                  float local_rate) {
  const v8f mom = splat(momentum), rate = splat(local_rate);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8f gi = load8(g + i), hi = load8(h + i);
    const v8f v = m ? kernels::sgd_momentum_masked(gi, hi, load8(m + i), mom, rate)
                    : kernels::sgd_momentum(gi, hi, mom, rate);
    store8(h + i, v);
    store8(g + i, v);
  }
  return i;
}

// dns_stats lanes (dns_kernel.cpp): lane j sums the entries j, j + 8, ... of [0, n), n a multiple of 8, as
// dns_stats_term does per entry (|m·w|, (m·w)·w, m·w != 0) in float64. Lanes 0-3 and 4-7 are two 4-double
// vectors, so each lane adds in the same order as the scalar loop's.
NC_F16C_TARGET inline void stats_lanes(int64_t n, const c10::Half* w, const c10::Half* m, double* s1, double* s2,
                                       int64_t* nz) {
  const v4l kNoSign = v4l{} + 0x7fffffffffffffffLL;
  v4d s1_lo, s1_hi, s2_lo, s2_hi;
  v4l nz_lo, nz_hi;
  for (int j = 0; j < 4; ++j) {
    s1_lo[j] = s1[j];
    s1_hi[j] = s1[4 + j];
    s2_lo[j] = s2[j];
    s2_hi[j] = s2[4 + j];
    nz_lo[j] = nz[j];
    nz_hi[j] = nz[4 + j];
  }
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 wf = reinterpret_cast<__m256>(load8(w + i)), mf = reinterpret_cast<__m256>(load8(m + i));
    const v4d w_lo = reinterpret_cast<v4d>(_mm256_cvtps_pd(_mm256_castps256_ps128(wf)));
    const v4d w_hi = reinterpret_cast<v4d>(_mm256_cvtps_pd(_mm256_extractf128_ps(wf, 1)));
    const v4d m_lo = reinterpret_cast<v4d>(_mm256_cvtps_pd(_mm256_castps256_ps128(mf)));
    const v4d m_hi = reinterpret_cast<v4d>(_mm256_cvtps_pd(_mm256_extractf128_ps(mf, 1)));
    const v4d v_lo = m_lo * w_lo, v_hi = m_hi * w_hi;
    // |v| by clearing the sign bit (one instruction; abs_value's compare-and-select takes three). It differs
    // from abs_value only for v = -0, where both add nothing.
    s1_lo += reinterpret_cast<v4d>(reinterpret_cast<v4l>(v_lo) & kNoSign);
    s1_hi += reinterpret_cast<v4d>(reinterpret_cast<v4l>(v_hi) & kNoSign);
    s2_lo += v_lo * w_lo;
    s2_hi += v_hi * w_hi;
    nz_lo -= (v_lo != v4d{});  // a true lane compares to -1
    nz_hi -= (v_hi != v4d{});
  }
  for (int j = 0; j < 4; ++j) {
    s1[j] = s1_lo[j];
    s1[4 + j] = s1_hi[j];
    s2[j] = s2_lo[j];
    s2[4 + j] = s2_hi[j];
    nz[j] = nz_lo[j];
    nz[4 + j] = nz_hi[j];
  }
}

}  // namespace f16c
}  // namespace cpu
}  // namespace netcompress

#endif
