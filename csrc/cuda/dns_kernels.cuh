// DNS __global__ kernels over kernels/dns.h. Torch-free: CI compiles this header alone with nvcc.
#pragma once

#include "../kernels/dns.h"
#include "reduce.cuh"

namespace netcompress {
namespace cuda {

template <typename scalar_t, typename acc_t>
__global__ void dns_masked_weight_kernel(int64_t n, const scalar_t* __restrict__ w, const scalar_t* __restrict__ m,
                                         scalar_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    out[i] = static_cast<scalar_t>(kernels::dns_masked(static_cast<acc_t>(w[i]), static_cast<acc_t>(m[i])));
  }
}

// Statistics over weight ∪ bias as one index space [0, nw + nb). partials: gridDim.x entries;
// ticket: one zeroed counter; out: [mu, std, n_weight, n_bias].
template <typename scalar_t>
__global__ void dns_stats_kernel(int64_t nw, const scalar_t* __restrict__ w, const scalar_t* __restrict__ wm,
                                 int64_t nb, const scalar_t* __restrict__ b, const scalar_t* __restrict__ bm,
                                 kernels::DnsStatsAcc* partials, unsigned int* ticket, double* out) {
  __shared__ kernels::DnsStatsAcc shared[kThreads];
  kernels::DnsStatsAcc acc = kernels::dns_stats_zero();
  const int64_t total = nw + nb;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    if (i < nw) {
      kernels::dns_stats_add(acc, static_cast<double>(w[i]), static_cast<double>(wm[i]), false);
    } else {
      kernels::dns_stats_add(acc, static_cast<double>(b[i - nw]), static_cast<double>(bm[i - nw]), true);
    }
  }
  kernels::DnsStatsAcc total_acc;
  if (grid_fold(acc, kernels::dns_stats_zero(), shared, partials, ticket, &total_acc)) {
    kernels::dns_stats_finalize(total_acc, out);
  }
}

// Thresholds come either as device scalars (pointer) or as host values (pointer null).
template <typename scalar_t, typename acc_t>
__global__ void dns_update_mask_kernel(int64_t n, const scalar_t* __restrict__ w, scalar_t* __restrict__ m,
                                       scalar_t* __restrict__ out, const double* low_ptr, double low_value,
                                       const double* high_ptr, double high_value) {
  const acc_t low = static_cast<acc_t>(low_ptr ? *low_ptr : low_value);
  const acc_t high = static_cast<acc_t>(high_ptr ? *high_ptr : high_value);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const acc_t wi = static_cast<acc_t>(w[i]);
    const acc_t mi = kernels::dns_mask_rule(wi, static_cast<acc_t>(m[i]), low, high);
    m[i] = static_cast<scalar_t>(mi);
    out[i] = static_cast<scalar_t>(kernels::dns_masked(wi, mi));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void dns_splice_grad_kernel(int64_t n, scalar_t* __restrict__ diff, const scalar_t* __restrict__ m,
                                       const scalar_t* __restrict__ g) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    diff[i] = static_cast<scalar_t>(
        kernels::dns_splice(static_cast<acc_t>(diff[i]), static_cast<acc_t>(m[i]), static_cast<acc_t>(g[i])));
  }
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
#define NC_INSTANTIATE(T, A)                                                                               \
  template __global__ void dns_masked_weight_kernel<T, A>(int64_t, const T*, const T*, T*);                \
  template __global__ void dns_stats_kernel<T>(int64_t, const T*, const T*, int64_t, const T*, const T*,   \
                                               kernels::DnsStatsAcc*, unsigned int*, double*);             \
  template __global__ void dns_update_mask_kernel<T, A>(int64_t, const T*, T*, T*, const double*, double,  \
                                                        const double*, double);                    \
  template __global__ void dns_splice_grad_kernel<T, A>(int64_t, T*, const T*, const T*);
NC_INSTANTIATE(float, float)
NC_INSTANTIATE(double, double)
NC_INSTANTIATE(__half, float)
NC_INSTANTIATE(__nv_bfloat16, float)
#undef NC_INSTANTIATE
}  // namespace cuda
}  // namespace netcompress
#endif
