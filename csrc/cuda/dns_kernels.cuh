// DNS __global__ kernels over kernels/dns.h. Torch-free: CI compiles this header alone with nvcc.
//
// kVec is the pack width of the loads (loops.cuh): 16 / sizeof(scalar_t) when every pointer is 16-byte aligned,
// else 1. Each op is one pass over its arrays.
#pragma once

#include "../kernels/dns.h"
#include "loops.cuh"
#include "reduce.cuh"

namespace netcompress {
namespace cuda {

template <typename scalar_t, typename acc_t, int kVec>
__global__ void __launch_bounds__(kThreads) dns_masked_weight_kernel(int64_t n, const scalar_t* __restrict__ w,
                                                                     const scalar_t* __restrict__ m,
                                                                     scalar_t* __restrict__ out) {
  for_each_pack<kVec>(n, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const Pack<scalar_t, W> wp = load_pack<scalar_t, W>(w + i), mp = load_pack<scalar_t, W>(m + i);
    Pack<scalar_t, W> o;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      o.v[j] = static_cast<scalar_t>(kernels::dns_masked(static_cast<acc_t>(wp.v[j]), static_cast<acc_t>(mp.v[j])));
    }
    store_pack<scalar_t, W>(out + i, o);
  });
}

// Per-thread sums of dns_stats: float64 sums, integer counts (a thread sees far fewer than 2^32 entries).
struct DnsStatsThread {
  double s1 = 0.0, s2 = 0.0;
  unsigned int n_weight = 0, n_bias = 0;
};

__device__ __forceinline__ void dns_stats_visit(DnsStatsThread& t, double w, double m, bool is_bias) {
  const kernels::DnsStatsTerm term = kernels::dns_stats_term(w, m);
  t.s1 = kernels::add_rn(t.s1, term.abs_v);
  t.s2 = kernels::add_rn(t.s2, term.v_w);
  if (is_bias) {
    t.n_bias += term.nonzero;
  } else {
    t.n_weight += term.nonzero;
  }
}

// Statistics over the weight (packs) and the bias (a short scalar loop). partials: gridDim.x entries;
// ticket: the stream's self-resetting counter; out: [mu, std, n_weight, n_bias].
template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kThreads) dns_stats_kernel(int64_t nw, const scalar_t* __restrict__ w,
                                                             const scalar_t* __restrict__ wm, int64_t nb,
                                                             const scalar_t* __restrict__ b,
                                                             const scalar_t* __restrict__ bm,
                                                             kernels::DnsStatsAcc* partials, unsigned int* ticket,
                                                             double* out) {
  __shared__ kernels::DnsStatsAcc shared[kThreads];
  DnsStatsThread t;
  for_each_pack<kVec>(nw, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const Pack<scalar_t, W> wp = load_pack<scalar_t, W>(w + i), mp = load_pack<scalar_t, W>(wm + i);
#pragma unroll
    for (int j = 0; j < W; ++j) {
      dns_stats_visit(t, static_cast<double>(wp.v[j]), static_cast<double>(mp.v[j]), false);
    }
  });
  for (int64_t i = global_thread(); i < nb; i += grid_threads()) {
    dns_stats_visit(t, static_cast<double>(b[i]), static_cast<double>(bm[i]), true);
  }
  kernels::DnsStatsAcc acc;
  acc.s1 = t.s1;
  acc.s2 = t.s2;
  acc.n_weight = static_cast<double>(t.n_weight);
  acc.n_bias = static_cast<double>(t.n_bias);
  kernels::DnsStatsAcc total;
  if (grid_fold(acc, kernels::dns_stats_zero(), shared, partials, ticket, &total)) {
    kernels::dns_stats_finalize(total, out);
  }
}

// One pass of the mask rule, then masked_out = w ⊙ m_new.
template <typename scalar_t, typename acc_t, int kVec>
__global__ void __launch_bounds__(kThreads) dns_update_mask_kernel(int64_t n, const scalar_t* __restrict__ w,
                                                                   scalar_t* __restrict__ m,
                                                                   scalar_t* __restrict__ out, ScalarRef low_ref,
                                                                   ScalarRef high_ref) {
  const acc_t low = static_cast<acc_t>(low_ref.load());
  const acc_t high = static_cast<acc_t>(high_ref.load());
  for_each_pack<kVec>(n, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const Pack<scalar_t, W> wp = load_pack<scalar_t, W>(w + i);
    Pack<scalar_t, W> mp = load_pack<scalar_t, W>(m + i), o;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const acc_t wj = static_cast<acc_t>(wp.v[j]);
      const acc_t mj = kernels::dns_mask_rule(wj, static_cast<acc_t>(mp.v[j]), low, high);
      mp.v[j] = static_cast<scalar_t>(mj);
      o.v[j] = static_cast<scalar_t>(kernels::dns_masked(wj, mj));
    }
    store_pack<scalar_t, W>(m + i, mp);
    store_pack<scalar_t, W>(out + i, o);
  });
}

template <typename scalar_t, typename acc_t, int kVec>
__global__ void __launch_bounds__(kThreads) dns_splice_grad_kernel(int64_t n, scalar_t* __restrict__ diff,
                                                                   const scalar_t* __restrict__ m,
                                                                   const scalar_t* __restrict__ g) {
  for_each_pack<kVec>(n, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    Pack<scalar_t, W> dp = load_pack<scalar_t, W>(diff + i);
    const Pack<scalar_t, W> mp = load_pack<scalar_t, W>(m + i), gp = load_pack<scalar_t, W>(g + i);
#pragma unroll
    for (int j = 0; j < W; ++j) {
      dp.v[j] = static_cast<scalar_t>(kernels::dns_splice(static_cast<acc_t>(dp.v[j]), static_cast<acc_t>(mp.v[j]),
                                                          static_cast<acc_t>(gp.v[j])));
    }
    store_pack<scalar_t, W>(diff + i, dp);
  });
}

}  // namespace cuda
}  // namespace netcompress

// Explicit instantiations for the torch-free nvcc check in .ci/run (the real build instantiates through
// AT_DISPATCH with c10::Half / c10::BFloat16, which need torch headers).
#ifdef NETCOMPRESS_KERNEL_CHECK
#include <cuda_bf16.h>
#include <cuda_fp16.h>
namespace netcompress {
namespace cuda {
#define NC_INSTANTIATE_V(T, A, V)                                                                            \
  template __global__ void dns_masked_weight_kernel<T, A, V>(int64_t, const T*, const T*, T*);               \
  template __global__ void dns_stats_kernel<T, V>(int64_t, const T*, const T*, int64_t, const T*, const T*,  \
                                                  kernels::DnsStatsAcc*, unsigned int*, double*);            \
  template __global__ void dns_update_mask_kernel<T, A, V>(int64_t, const T*, T*, T*, ScalarRef, ScalarRef); \
  template __global__ void dns_splice_grad_kernel<T, A, V>(int64_t, T*, const T*, const T*);
#define NC_INSTANTIATE(T, A)   \
  NC_INSTANTIATE_V(T, A, 1)    \
  NC_INSTANTIATE_V(T, A, kPackOf<T>)
NC_INSTANTIATE(float, float)
NC_INSTANTIATE(double, double)
NC_INSTANTIATE(__half, float)
NC_INSTANTIATE(__nv_bfloat16, float)
#undef NC_INSTANTIATE
#undef NC_INSTANTIATE_V
}  // namespace cuda
}  // namespace netcompress
#endif
