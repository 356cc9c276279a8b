// INQ __global__ kernels over kernels/inq.h. Torch-free: CI compiles this header alone with nvcc.
#pragma once

#include "../kernels/inq.h"
#include "reduce.cuh"

namespace netcompress {
namespace cuda {

// out: [max|v| mask==1, max|v| mask==0, #mask==1, #mask==0, #other].
template <typename scalar_t>
__global__ void inq_mask_stats_kernel(int64_t n, const scalar_t* __restrict__ w, const scalar_t* __restrict__ m,
                                      kernels::InqRangeAcc* partials, unsigned int* ticket, double* out) {
  __shared__ kernels::InqRangeAcc shared[kThreads];
  kernels::InqRangeAcc acc = kernels::inq_range_zero();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    kernels::inq_range_add(acc, static_cast<double>(w[i]), static_cast<double>(m[i]));
  }
  kernels::InqRangeAcc total;
  if (grid_fold(acc, kernels::inq_range_zero(), shared, partials, ticket, &total)) {
    kernels::inq_range_finalize(total, out);
  }
}

template <typename scalar_t>
__global__ void inq_quantize_kernel(int64_t n, scalar_t* __restrict__ w, scalar_t* __restrict__ m,
                                    const double* thr_ptr, double thr_value, int n2) {
  const double thr = thr_ptr ? *thr_ptr : thr_value;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const double v = static_cast<double>(w[i]);
    if (m[i] == scalar_t(1) && kernels::abs_value(v) >= thr) {
      w[i] = static_cast<scalar_t>(kernels::inq_round_pow2(v, n2));
      m[i] = scalar_t(0);
    }
  }
}

}  // namespace cuda
}  // namespace netcompress

// Explicit instantiations for the torch-free nvcc check in .ci/run.
#ifdef NETCOMPRESS_KERNEL_CHECK
namespace netcompress {
namespace cuda {
#define NC_INSTANTIATE(T)                                                                                   \
  template __global__ void inq_mask_stats_kernel<T>(int64_t, const T*, const T*, kernels::InqRangeAcc*,     \
                                                    unsigned int*, double*);                                \
  template __global__ void inq_quantize_kernel<T>(int64_t, T*, T*, const double*, double, int);
NC_INSTANTIATE(float)
NC_INSTANTIATE(double)
#undef NC_INSTANTIATE
}  // namespace cuda
}  // namespace netcompress
#endif
