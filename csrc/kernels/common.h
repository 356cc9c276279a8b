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

// The rules below are templates over the arithmetic type; they are written so that a GCC vector type
// (8 floats, the CPU's float16 loops) instantiates them as well: constants as T{} + c, not T(c).

// |x| for any arithmetic-like type (c10::Half, __half, float, double, vectors) without overload ambiguity.
template <typename T>
NC_HD inline T abs_value(T x) {
  return x < T{} ? -x : x;
}

// float and double clear the sign bit (|-0| = +0, as torch.abs): one instruction, which CPU loops vectorize,
// where the comparison above would become a branch.
NC_HD inline float abs_value(float x) {
  return fabsf(x);
}
NC_HD inline double abs_value(double x) {
  return fabs(x);
}

}  // namespace kernels
}  // namespace netcompress
