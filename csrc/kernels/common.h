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

// Products and sums with one rounding each, never fused into an FMA: the CPU build forbids contraction
// (-ffp-contract=off), and nvcc contracts a*b + c by default (-fmad=true), which would make the CUDA kernels
// round differently from the CPU loops. On the device these are the _rn intrinsics, which neither nvcc nor
// ptxas fuses; on the host (and for the CPU's GCC vector types) plain operators. Every rule below that adds a
// product goes through them, so its formula reads the same and rounds the same on both.
template <typename T>
NC_HD inline T mul_rn(T a, T b) {
  return a * b;
}
template <typename T>
NC_HD inline T add_rn(T a, T b) {
  return a + b;
}
template <typename T>
NC_HD inline T sub_rn(T a, T b) {
  return a - b;
}
template <typename T>
NC_HD inline T div_rn(T a, T b) {
  return a / b;
}

NC_HD inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
NC_HD inline float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
NC_HD inline float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
// The division too: __fdiv_rn/__ddiv_rn stay IEEE-exact under --use_fast_math or -prec-div=false.
NC_HD inline float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
NC_HD inline double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
NC_HD inline double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
NC_HD inline double sub_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
NC_HD inline double div_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

}  // namespace kernels
}  // namespace netcompress
