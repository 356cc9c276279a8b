// Solver __global__ kernels over kernels/solver.h. Torch-free: CI compiles this header alone with nvcc.
#pragma once

#include "../kernels/solver.h"
#include "loops.cuh"

namespace netcompress {
namespace cuda {

// h <- [mask ⊙] (momentum·h + local_rate·g); g <- h. kMasked: whether `mask` is read (else it is null).
template <typename scalar_t, typename acc_t, int kVec, bool kMasked>
__global__ void __launch_bounds__(kThreads) sgd_momentum_update_kernel(int64_t n, scalar_t* __restrict__ g,
                                                                       scalar_t* __restrict__ h,
                                                                       const scalar_t* __restrict__ mask,
                                                                       acc_t momentum, acc_t local_rate) {
  for_each_pack<kVec>(n, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const Pack<scalar_t, W> gp = load_pack<scalar_t, W>(g + i);
    Pack<scalar_t, W> hp = load_pack<scalar_t, W>(h + i);
    if constexpr (kMasked) {
      const Pack<scalar_t, W> mp = load_pack<scalar_t, W>(mask + i);
#pragma unroll
      for (int j = 0; j < W; ++j) {
        hp.v[j] = static_cast<scalar_t>(kernels::sgd_momentum_masked(
            static_cast<acc_t>(gp.v[j]), static_cast<acc_t>(hp.v[j]), static_cast<acc_t>(mp.v[j]), momentum,
            local_rate));
      }
    } else {
#pragma unroll
      for (int j = 0; j < W; ++j) {
        hp.v[j] = static_cast<scalar_t>(
            kernels::sgd_momentum(static_cast<acc_t>(gp.v[j]), static_cast<acc_t>(hp.v[j]), momentum, local_rate));
      }
    }
    store_pack<scalar_t, W>(h + i, hp);
    store_pack<scalar_t, W>(g + i, hp);
  });
}

}  // namespace cuda
}  // namespace netcompress

// Explicit instantiations for the torch-free nvcc check in .ci/run.
#ifdef NETCOMPRESS_KERNEL_CHECK
#include <cuda_bf16.h>
#include <cuda_fp16.h>
namespace netcompress {
namespace cuda {
#define NC_INSTANTIATE_V(T, A, V)                                                                                 \
  template __global__ void sgd_momentum_update_kernel<T, A, V, false>(int64_t, T*, T*, const T*, A, A);          \
  template __global__ void sgd_momentum_update_kernel<T, A, V, true>(int64_t, T*, T*, const T*, A, A);
#define NC_INSTANTIATE(T, A) \
  NC_INSTANTIATE_V(T, A, 1)  \
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
