// Solver __global__ kernels over kernels/solver.h. Torch-free: CI compiles this header alone with nvcc.
#pragma once

#include "../kernels/solver.h"
#include "reduce.cuh"

namespace netcompress {
namespace cuda {

// mask may be null (plain SGD momentum).
template <typename scalar_t, typename acc_t>
__global__ void sgd_momentum_update_kernel(int64_t n, scalar_t* __restrict__ g, scalar_t* __restrict__ h,
                                           const scalar_t* __restrict__ mask, acc_t momentum, acc_t local_rate) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const acc_t gi = static_cast<acc_t>(g[i]);
    const acc_t hi = static_cast<acc_t>(h[i]);
    const scalar_t v = static_cast<scalar_t>(
        mask ? kernels::sgd_momentum_masked(gi, hi, static_cast<acc_t>(mask[i]), momentum, local_rate)
             : kernels::sgd_momentum(gi, hi, momentum, local_rate));
    h[i] = v;
    g[i] = v;
  }
}

}  // namespace cuda
}  // namespace netcompress

// Explicit instantiations for the torch-free nvcc check in .ci/run.
#ifdef NETCOMPRESS_KERNEL_CHECK
#include <cuda_bf16.h>
#include <cuda_fp16.h>
namespace netcompress {
namespace cuda {
#define NC_INSTANTIATE(T, A) \
  template __global__ void sgd_momentum_update_kernel<T, A>(int64_t, T*, T*, const T*, A, A);
NC_INSTANTIATE(float, float)
NC_INSTANTIATE(double, double)
NC_INSTANTIATE(__half, float)
NC_INSTANTIATE(__nv_bfloat16, float)
#undef NC_INSTANTIATE
}  // namespace cuda
}  // namespace netcompress
#endif
