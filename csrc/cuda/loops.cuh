// Loop helpers shared by the CUDA kernels, without torch: grid sizes, 16-byte packs, the grid-stride loop over
// packs with a scalar tail, scalar arguments read on the device, and float bit casts. CI compiles this header
// alone with nvcc; tests/ops/cuda_emu runs it on the host.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>
#include <type_traits>

namespace netcompress {
namespace cuda {

constexpr int kThreads = 256;  // threads per block of every kernel (a power of two, a multiple of 32)

// kVec values of T in one aligned 16-byte (or, for kVec == 1, one-element) load or store.
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// The pack width of a kernel's loads: 16 bytes (float 4, double 2, float16/bfloat16 8).
template <typename T>
constexpr int kPackOf = 16 / sizeof(T) > 0 ? int(16 / sizeof(T)) : 1;

template <typename T, int kVec>
__device__ __forceinline__ Pack<T, kVec> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, kVec>*>(p);
}

template <typename T, int kVec>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, kVec>& x) {
  *reinterpret_cast<Pack<T, kVec>*>(p) = x;
}

// ---- grids (host side; launch.h and the emulated kernels' tests launch with these) ----

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Element-wise kernels: one 16-byte pack per thread (the pack loop below is grid-stride, so a grid this large is
// only a bound for the biggest tensors). Many short blocks balance the SMs without a per-device size.
inline int elementwise_blocks(int64_t n, int vec) {
  const int64_t blocks = ceil_div(ceil_div(n, vec), kThreads);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(1) << 30)));
}

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_threads() {
  return static_cast<int64_t>(blockDim.x) * gridDim.x;
}

// Grid-stride loop over [0, n): body(std::integral_constant<int, W>{}, i) handles the W entries from i, W == kVec
// for the n / kVec whole packs (their first entry kVec-aligned, so a pointer aligned to 16 bytes stays aligned),
// then W == 1 for the n % kVec entries of the tail. kVec == 1 is the plain scalar loop (unaligned pointers).
template <int kVec, typename Body>
__device__ __forceinline__ void for_each_pack(int64_t n, Body&& body) {
  const int64_t first = global_thread(), stride = grid_threads();
  const int64_t packs = n / kVec;
  for (int64_t p = first; p < packs; p += stride) body(std::integral_constant<int, kVec>{}, p * kVec);
  if (kVec > 1) {
    for (int64_t i = packs * kVec + first; i < n; i += stride) body(std::integral_constant<int, 1>{}, i);
  }
}

// A scalar argument that may live on the device (a one-element float32 or float64 tensor, read by the kernel: no
// host sync, no conversion kernel) or on the host (passed by value).
struct ScalarRef {
  const void* ptr;  // null: `value` holds it
  int is_double;    // the type *ptr has: 1 double, 0 float
  double value;

  __device__ __forceinline__ double load() const {
    if (ptr == nullptr) return value;
    return is_double ? *static_cast<const double*>(ptr) : static_cast<double>(*static_cast<const float*>(ptr));
  }
};

// The bits of a float or double as an unsigned integer of its width, and back.
__device__ __forceinline__ uint32_t bits_of(float x) {
  return __float_as_uint(x);
}
__device__ __forceinline__ uint64_t bits_of(double x) {
  return static_cast<uint64_t>(__double_as_longlong(x));
}
__device__ __forceinline__ float float_of(uint32_t b) {
  return __uint_as_float(b);
}
__device__ __forceinline__ double float_of(uint64_t b) {
  return __longlong_as_double(static_cast<long long>(b));
}

template <typename T>
using bits_t = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

}  // namespace cuda
}  // namespace netcompress
