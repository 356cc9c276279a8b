// INQ __global__ kernels over kernels/inq.h. Torch-free: CI compiles this header alone with nvcc.
//
// INQ ops take float32 and float64 weights only. kVec is the pack width of the loads (loops.cuh).
#pragma once

#include <math.h>

#include "../kernels/inq.h"
#include "loops.cuh"
#include "reduce.cuh"

namespace netcompress {
namespace cuda {

// ---- inq_mask_stats ----

// out: [max|v| mask==1, max|v| mask==0, #mask==1, #mask==0, #other]. Per thread the maxima are kept in the
// weight's type (widening to double is exact and monotonic, so the maxima are the same) and the counts as
// integers; NaN never wins a comparison, as in inq_range_add.
template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kThreads) inq_mask_stats_kernel(int64_t n, const scalar_t* __restrict__ w,
                                                                  const scalar_t* __restrict__ m,
                                                                  kernels::InqRangeAcc* partials,
                                                                  unsigned int* ticket, double* out) {
  __shared__ kernels::InqRangeAcc shared[kThreads];
  scalar_t max_t = scalar_t(-1), max_q = scalar_t(-1);
  unsigned int n_t = 0, n_q = 0, seen = 0;
  for_each_pack<kVec>(n, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const Pack<scalar_t, W> wp = load_pack<scalar_t, W>(w + i), mp = load_pack<scalar_t, W>(m + i);
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const scalar_t a = kernels::abs_value(wp.v[j]);
      const bool t = mp.v[j] == scalar_t(1), q = mp.v[j] == scalar_t(0);
      max_t = (t && a > max_t) ? a : max_t;
      max_q = (q && a > max_q) ? a : max_q;
      n_t += t;
      n_q += q;
    }
    seen += W;
  });
  kernels::InqRangeAcc acc;
  acc.max_t = static_cast<double>(max_t);
  acc.max_q = static_cast<double>(max_q);
  acc.n_t = static_cast<double>(n_t);
  acc.n_q = static_cast<double>(n_q);
  acc.n_other = static_cast<double>(seen - n_t - n_q);
  kernels::InqRangeAcc total;
  if (grid_fold(acc, kernels::inq_range_zero(), shared, partials, ticket, &total)) {
    kernels::inq_range_finalize(total, out);
  }
}

// ---- inq_quantize_ ----

// The smallest scalar_t >= thr, so that `|v| >= thr` is decided in the weight's type: for a float v,
// double(v) >= thr exactly when v >= ceil_to(thr). NaN stays NaN (nothing is selected). As the CPU loop.
__device__ __forceinline__ float ceil_to(double thr, float) {
  float t = static_cast<float>(thr);
  if (static_cast<double>(t) < thr) t = nextafterf(t, INFINITY);
  return t;
}
__device__ __forceinline__ double ceil_to(double thr, double) {
  return thr;
}

// §3.5 on one selected value: the bit form where it settles the rounding exactly, else the log-ratio form (zeros,
// subnormals, non-finite values, M == 1.5 boundaries), as the CPU loop splits them; both agree with the reference.
template <typename scalar_t>
__device__ __forceinline__ scalar_t inq_quantize_one(scalar_t v, int n2) {
  bits_t<scalar_t> r;
  if (kernels::inq_round_pow2_bits(bits_of(v), n2, &r)) return float_of(r);
  return static_cast<scalar_t>(kernels::inq_round_pow2(static_cast<double>(v), n2));
}

// mask == 1 ∧ |v| >= threshold: v <- power-of-two rounding, mask <- 0. A pack is written back only if one of
// its entries was selected.
template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kThreads) inq_quantize_kernel(int64_t n, scalar_t* __restrict__ w,
                                                                scalar_t* __restrict__ m, ScalarRef thr_ref,
                                                                int n2) {
  const scalar_t thr = ceil_to(thr_ref.load(), scalar_t());
  for_each_pack<kVec>(n, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    Pack<scalar_t, W> wp = load_pack<scalar_t, W>(w + i), mp = load_pack<scalar_t, W>(m + i);
    bool any = false;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      if (mp.v[j] == scalar_t(1) && kernels::abs_value(wp.v[j]) >= thr) {
        wp.v[j] = inq_quantize_one(wp.v[j], n2);
        mp.v[j] = scalar_t(0);
        any = true;
      }
    }
    if (any) {
      store_pack<scalar_t, W>(w + i, wp);
      store_pack<scalar_t, W>(m + i, mp);
    }
  });
}

// ---- inq_threshold: radix select ----
//
// The n_keep-th smallest (0-based) of the keys key(i) = bits(|v_i|) for mask == 1 and bits(+inf) otherwise,
// compared as unsigned integers: the order of non-negative floats, NaN above +inf (as the CPU op and ATen's
// kthvalue order them). Each pass reads the whole tensor once and counts, among the keys that agree with the
// bits chosen so far, the next kRadixBits bits in a shared-memory histogram per block, added to a global one;
// the last block to finish picks the bin that holds the sought rank, appends it to the chosen bits and zeroes
// the global histogram for the next pass. float32 keys have 31 significant bits (3 passes), float64 63 (6).
// The counts are integers, so the result is exact and does not depend on the order of the blocks.

constexpr int kRadixBits = 11;
constexpr int kRadixBins = 1 << kRadixBits;

// The bits chosen so far and the rank sought among the keys that have them; in the call's scratch memory.
struct SelectState {
  unsigned long long prefix;  // the chosen bits
  unsigned long long known;   // which bits are chosen
  long long k;                // the rank among the keys whose bits under `known` equal `prefix`
};

template <typename scalar_t>
__device__ __forceinline__ bits_t<scalar_t> inf_key() {
  return bits_of(static_cast<scalar_t>(INFINITY));
}

// shift: the lowest bit of this pass's digit; first: no bits chosen yet (the state is not read; k0 is the rank);
// last: write the selected key, as a value, to *out. hist: kRadixBins zeroed counters; ticket: see reduce.cuh.
template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kThreads) inq_select_pass_kernel(int64_t n, const scalar_t* __restrict__ w,
                                                                   const scalar_t* __restrict__ m, long long k0,
                                                                   int shift, int first, int last,
                                                                   SelectState* state, unsigned long long* hist,
                                                                   unsigned int* ticket, scalar_t* out) {
  using U = bits_t<scalar_t>;
  constexpr U kAbs = ~(U(1) << (sizeof(U) * 8 - 1));
  constexpr U kDigit = U(kRadixBins - 1);
  static_assert(kRadixBins % kThreads == 0 && kThreads / 32 <= 32, "the scan below assumes these sizes");
  constexpr int kPerThread = kRadixBins / kThreads;
  constexpr int kPerLane = kThreads / 32;

  __shared__ unsigned int counts[kRadixBins];
  __shared__ unsigned long long sums[kThreads];
  for (int b = threadIdx.x; b < kRadixBins; b += kThreads) counts[b] = 0u;
  const U prefix = first ? U(0) : static_cast<U>(state->prefix);
  const U known = first ? U(0) : static_cast<U>(state->known);
  const long long k = first ? k0 : state->k;
  __syncthreads();

  // Entries with mask != 1 all have the key +inf: counted in a register, added to its bin once per warp.
  unsigned int others = 0;
  for_each_pack<kVec>(n, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const Pack<scalar_t, W> wp = load_pack<scalar_t, W>(w + i), mp = load_pack<scalar_t, W>(m + i);
#pragma unroll
    for (int j = 0; j < W; ++j) {
      if (mp.v[j] == scalar_t(1)) {
        const U key = bits_of(wp.v[j]) & kAbs;
        if ((key & known) == prefix) atomicAdd(&counts[(key >> shift) & kDigit], 1u);
      } else {
        ++others;
      }
    }
  });
  const U inf = inf_key<scalar_t>();
  for (int o = 16; o > 0; o >>= 1) others += __shfl_down_sync(0xffffffffu, others, o);
  if ((threadIdx.x & 31) == 0 && others != 0 && (inf & known) == prefix) {
    atomicAdd(&counts[(inf >> shift) & kDigit], others);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kRadixBins; b += kThreads) {
    if (counts[b] != 0u) atomicAdd(&hist[b], static_cast<unsigned long long>(counts[b]));
  }
  if (!last_block(ticket)) return;

  // The last block: bin totals, their exclusive prefix sums, and the bin holding rank k.
  unsigned long long c[kPerThread], mine = 0;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    c[j] = __ldcg(hist + threadIdx.x * kPerThread + j);
    mine += c[j];
  }
  sums[threadIdx.x] = mine;
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    unsigned long long part[kPerLane], s = 0;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      part[j] = sums[lane * kPerLane + j];
      s += part[j];
    }
    unsigned long long incl = s;
    for (int o = 1; o < 32; o <<= 1) {
      const unsigned long long up = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += up;
    }
    unsigned long long before = incl - s;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      sums[lane * kPerLane + j] = before;
      before += part[j];
    }
  }
  __syncthreads();
  const unsigned long long rank = static_cast<unsigned long long>(k);
  unsigned long long before = sums[threadIdx.x];
  if (before <= rank && rank < before + mine) {
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      if (rank < before + c[j]) {
        const U bin = static_cast<U>(threadIdx.x * kPerThread + j);
        const U chosen = prefix | (bin << shift);
        state->prefix = chosen;
        state->known = known | (kDigit << shift);
        state->k = static_cast<long long>(rank - before);
        if (last) *out = float_of(chosen);
        break;
      }
      before += c[j];
    }
  }
  // Every thread read its bins before the barrier above: clear them for the next pass (or the next call).
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) hist[threadIdx.x * kPerThread + j] = 0ull;
}

// The passes of one selection (host side): launch(shift, first, last) once per kRadixBits of the key, from the
// top. float32 keys have 31 bits (the sign is clear), float64 63; the last pass's digit may overlap bits already
// chosen (the low kRadixBits bits), which agree, so that is harmless.
template <typename scalar_t, typename Launch>
inline void for_each_select_pass(Launch&& launch) {
  constexpr int kKeyBits = int(sizeof(scalar_t)) * 8 - 1;
  for (int shift = kKeyBits - kRadixBits, first = 1;; shift -= kRadixBits, first = 0) {
    const int s = shift > 0 ? shift : 0;
    launch(s, first, s == 0);
    if (s == 0) break;
  }
}

}  // namespace cuda
}  // namespace netcompress

// Explicit instantiations for the torch-free nvcc check in .ci/run.
#ifdef NETCOMPRESS_KERNEL_CHECK
namespace netcompress {
namespace cuda {
#define NC_INSTANTIATE_V(T, V)                                                                                \
  template __global__ void inq_mask_stats_kernel<T, V>(int64_t, const T*, const T*, kernels::InqRangeAcc*,    \
                                                       unsigned int*, double*);                               \
  template __global__ void inq_quantize_kernel<T, V>(int64_t, T*, T*, ScalarRef, int);                        \
  template __global__ void inq_select_pass_kernel<T, V>(int64_t, const T*, const T*, long long, int, int, int, \
                                                        SelectState*, unsigned long long*, unsigned int*, T*);
#define NC_INSTANTIATE(T) \
  NC_INSTANTIATE_V(T, 1)  \
  NC_INSTANTIATE_V(T, kPackOf<T>)
NC_INSTANTIATE(float)
NC_INSTANTIATE(double)
#undef NC_INSTANTIATE
#undef NC_INSTANTIATE_V
}  // namespace cuda
}  // namespace netcompress
#endif
