// Shared by the CPU op files: instruction-set clones of the inner loops, bit casts, and the chunking rules.
//
// The extension is compiled for the baseline x86-64 instruction set (SSE2), so a plain loop would use
// 16-byte vectors on every machine. NC_CPU_CLONES asks GCC for two more copies of a loop function, for
// x86-64-v3 (AVX2, FMA, F16C) and x86-64-v4 (AVX-512), and picks one at load time from the CPU it runs on
// (an ifunc, as glibc does for memcpy). The loops are written branch-free so that each copy vectorizes.
// `-ffp-contract=off` (setup.py) keeps the FMA-capable copies from fusing a*b + c: every copy rounds the
// same way, so results do not depend on the machine.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 11
#define NC_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// For a loop that only streams (a load or two, one operation, a store): 32-byte vectors at most, as ATen's
// own element-wise kernels use. Measured on an AVX-512 Xeon, W⊙M over 1e4-1e5 floats (L2-resident) took
// ~10 % longer with 64-byte vectors than with 32-byte ones, and ~5 % less in L1; the same bits either way.
#define NC_CPU_CLONES_STREAM __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define NC_CPU_CLONES
#define NC_CPU_CLONES_STREAM
#endif

namespace netcompress {
namespace cpu {

// Element-wise loops are memory bound once vectorized: a thread gets at least this many elements, so a
// 1e6-element tensor is split over the cores but a small one is not paid a thread wake-up.
constexpr int64_t kGrain = 1 << 15;

// Reductions sum fixed-size blocks (in lanes of kLanes) and add the block sums in index order, so their
// results depend neither on the number of threads nor on the vector width of the machine.
constexpr int64_t kReduceBlock = 1 << 14;
constexpr int kLanes = 8;

template <typename To, typename From>
inline To bit_cast(const From& x) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To y;
  std::memcpy(&y, &x, sizeof(To));
  return y;
}

// Unsigned integer with the size of T (the bits of a float or double).
template <typename T>
using bits_t = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

// ---- 16-bit floats: the loops run on float tiles ----
//
// c10's float16 conversions are bit manipulations (the F16C instructions are used only when the whole file
// is compiled for them), about twenty vector instructions per 16 values each way. The loops for float16 and
// bfloat16 therefore widen a tile of each input to float, run the float loop, and narrow the outputs: the
// same values (widening is exact, narrowing rounds to nearest even as c10 does), with F16C doing the float16
// conversions where the CPU has it.
constexpr int64_t kTile = 1024;

template <typename scalar_t>
NC_CPU_CLONES void widen_generic(int64_t n, const scalar_t* __restrict in, float* __restrict out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
}

template <typename scalar_t>
NC_CPU_CLONES void narrow_generic(int64_t n, const float* __restrict in, scalar_t* __restrict out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(in[i]);
}

#if defined(__GNUC__) && defined(__x86_64__)
#define NC_HAVE_F16C_PATH 1
__attribute__((target("avx,f16c"))) inline void widen_f16c(int64_t n, const c10::Half* in, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
  }
  for (; i < n; ++i) out[i] = static_cast<float>(in[i]);
}

__attribute__((target("avx,f16c"))) inline void narrow_f16c(int64_t n, const float* in, c10::Half* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) out[i] = static_cast<c10::Half>(in[i]);
}

inline bool has_f16c() {
  static const bool yes = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  return yes;
}

// Hand-written AVX2 loops (pool_kernel.cpp, layout_kernel.cpp): functions with NC_AVX2_TARGET, called only where
// has_avx2() holds; the rest of the file stays baseline x86-64.
#define NC_HAVE_AVX2_PATH 1
#define NC_AVX2_TARGET __attribute__((target("avx2")))

inline bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#endif

// out[i] = float(in[i]), exactly.
template <typename scalar_t>
inline void widen(int64_t n, const scalar_t* in, float* out) {
#ifdef NC_HAVE_F16C_PATH
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    if (has_f16c()) return widen_f16c(n, in, out);
  }
#endif
  widen_generic<scalar_t>(n, in, out);
}

// out[i] = scalar_t(in[i]), rounded to nearest even.
template <typename scalar_t>
inline void narrow(int64_t n, const float* in, scalar_t* out) {
#ifdef NC_HAVE_F16C_PATH
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    if (has_f16c()) return narrow_f16c(n, in, out);
  }
#endif
  narrow_generic<scalar_t>(n, in, out);
}

// Calls fn(block_begin, block_end, block_index) for every kReduceBlock-sized block of [0, n), in parallel.
template <typename F>
inline void for_each_block(int64_t n, const F& fn) {
  const int64_t blocks = (n + kReduceBlock - 1) / kReduceBlock;
  // Blocks are short: hand each thread several, so that ~1e5 elements do not wake a second core.
  at::parallel_for(0, blocks, std::max<int64_t>(1, kGrain / kReduceBlock), [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) fn(b * kReduceBlock, std::min(n, (b + 1) * kReduceBlock), b);
  });
}

}  // namespace cpu
}  // namespace netcompress
