// Quantization __global__ kernels over kernels/quant.h. Torch-free: CI compiles this header alone with nvcc.
#pragma once

#include "../kernels/dns.h"
#include "../kernels/quant.h"
#include "loops.cuh"

namespace netcompress {
namespace cuda {

// α comes either as a device scalar or as a host value (ScalarRef, loops.cuh), as the DNS thresholds do.
// kScaled: ActQuant's α·clamp(round(x/α)); otherwise IntQuant's clamp(round(x)) (α unused).
template <typename scalar_t, typename acc_t, bool kScaled>
__global__ void act_quant_kernel(int64_t n, const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                                 ScalarRef alpha_ref, acc_t lo, acc_t hi) {
  const acc_t alpha = static_cast<acc_t>(alpha_ref.load());
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const acc_t xi = static_cast<acc_t>(x[i]);
    out[i] = static_cast<scalar_t>(kScaled ? kernels::quant_dequant(xi, alpha, lo, hi)
                                           : kernels::int_quant(xi, lo, hi));
  }
}

// The straight-through gradient: grad where lo <= round(x/α) <= hi, else 0.
template <typename scalar_t, typename acc_t, bool kScaled>
__global__ void act_quant_backward_kernel(int64_t n, const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                          scalar_t* __restrict__ out, ScalarRef alpha_ref, acc_t lo, acc_t hi) {
  const acc_t alpha = static_cast<acc_t>(alpha_ref.load());
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const acc_t xi = static_cast<acc_t>(x[i]);
    const acc_t r = kScaled ? kernels::quant_round(xi, alpha) : kernels::round_half_even(xi);
    out[i] = static_cast<scalar_t>(kernels::quant_ste(static_cast<acc_t>(g[i]), r, lo, hi));
  }
}

// Per-row weight quantizer: row i / row_len has scale alpha[row]; v = w ⊙ m (m may be null), then α·q
// (kDequant) or the code q.
template <typename scalar_t, typename acc_t, bool kDequant>
__global__ void quant_weight_kernel(int64_t n, int64_t row_len, const scalar_t* __restrict__ w,
                                    const scalar_t* __restrict__ m, const scalar_t* __restrict__ alpha,
                                    scalar_t* __restrict__ out, acc_t lo, acc_t hi) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const acc_t a = static_cast<acc_t>(alpha[i / row_len]);
    const acc_t wi = static_cast<acc_t>(w[i]);
    const acc_t v = m ? kernels::dns_masked(wi, static_cast<acc_t>(m[i])) : wi;
    out[i] = static_cast<scalar_t>(kDequant ? kernels::quant_dequant(v, a, lo, hi)
                                            : kernels::quant_code(v, a, lo, hi));
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
#define NC_INSTANTIATE_B(T, A, B)                                                                            \
  template __global__ void act_quant_kernel<T, A, B>(int64_t, const T*, T*, ScalarRef, A, A);                \
  template __global__ void act_quant_backward_kernel<T, A, B>(int64_t, const T*, const T*, T*, ScalarRef, A, A); \
  template __global__ void quant_weight_kernel<T, A, B>(int64_t, int64_t, const T*, const T*, const T*, T*, A, A);
#define NC_INSTANTIATE(T, A) NC_INSTANTIATE_B(T, A, true) NC_INSTANTIATE_B(T, A, false)
NC_INSTANTIATE(float, float)
NC_INSTANTIATE(double, double)
NC_INSTANTIATE(__half, float)
NC_INSTANTIATE(__nv_bfloat16, float)
#undef NC_INSTANTIATE
#undef NC_INSTANTIATE_B
}  // namespace cuda
}  // namespace netcompress
#endif
