// Shared by every kernels/*.h: the host-device macro and the C math they use.
// No torch and no CUDA runtime here, so the same formula compiles under g++ (CPU loops) and nvcc (kernels).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define NC_HD __host__ __device__
#else
#define NC_HD
#endif

#include <cfloat>
#include <math.h>

namespace netcompress {
namespace kernels {

// |x| for any arithmetic-like type (c10::Half, __half, float, double) without overload ambiguity.
template <typename T>
NC_HD inline T abs_value(T x) {
  return x < T(0) ? -x : x;
}

}  // namespace kernels
}  // namespace netcompress
