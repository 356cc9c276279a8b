// NCHW <-> NHWC copies of 4-D tensors on the CPU: `x.contiguous(memory_format=torch.channels_last)` and
// `x.contiguous()`, the same values in the other memory order.
//
// The convolution layers run oneDNN on channels-last input where its blocked NCHW layout would pad the channels
// (layers/vision.py, cpu_channels_last) and convert at the layer's edges: LeNet's conv2 converts its input, its
// output and their gradients every step. ATen's copy walks the permuted tensor element by element (about 1.6 ns
// an element on one core: 110 us for LeNet's 64×20×12×12 input); each sample is a C×HW <-> HW×C matrix
// transpose, which this does for float32 in 8×8 tiles in AVX2 registers (3x ATen's speed); other types, CPUs
// without AVX2 and other layouts get ATen's copy. A copy moves values without arithmetic, so the result is
// exactly ATen's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../composite.h"
#include "loops.h"

namespace netcompress {
namespace {

#ifdef NC_HAVE_AVX2_PATH
#define NC_HAVE_LAYOUT_AVX2 1
// One 8×8 tile: rows s[0..7] (stride ss) become columns of d (stride ds).
NC_AVX2_TARGET inline void tile8(const float* s, int64_t ss, float* d, int64_t ds) {
  const __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ss), r2 = _mm256_loadu_ps(s + 2 * ss),
               r3 = _mm256_loadu_ps(s + 3 * ss), r4 = _mm256_loadu_ps(s + 4 * ss), r5 = _mm256_loadu_ps(s + 5 * ss),
               r6 = _mm256_loadu_ps(s + 6 * ss), r7 = _mm256_loadu_ps(s + 7 * ss);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
               t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
               t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
               u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
               u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
               u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(d + ds, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(d + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(d + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(d + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(d + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(d + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(d + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
}

// dst[c * rows + r] = src[r * cols + c] for rows [r_begin, r_end) of a rows × cols float matrix: whole 8×8 tiles
// in registers, the ragged right and bottom edges element by element.
NC_AVX2_TARGET void transpose_avx2(const float* __restrict src, int64_t rows, int64_t cols, int64_t r_begin,
                                   int64_t r_end, float* __restrict dst) {
  const int64_t cols8 = cols / 8 * 8;
  int64_t r = r_begin;
  for (; r + 8 <= r_end; r += 8) {
    for (int64_t c = 0; c < cols8; c += 8) tile8(src + r * cols + c, cols, dst + c * rows + r, rows);
    for (int64_t c = cols8; c < cols; ++c) {
      for (int64_t i = r; i < r + 8; ++i) dst[c * rows + i] = src[i * cols + c];
    }
  }
  for (; r < r_end; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  }
}

// Each of n samples is a rows × cols float matrix in src, and becomes its transpose in dst. The work is split by
// blocks of kRowBlock rows of a sample, so that one large sample (a batch of one) is spread over the threads too.
at::Tensor transpose_samples(const at::Tensor& x, int64_t n, int64_t rows, int64_t cols, at::Tensor out) {
  constexpr int64_t kRowBlock = 64;  // a multiple of the 8-row tiles
  const int64_t per = rows * cols, blocks = (rows + kRowBlock - 1) / kRowBlock;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, kRowBlock * cols));
  const float* s = x.const_data_ptr<float>();
  float* d = out.mutable_data_ptr<float>();
  at::parallel_for(0, n * blocks, grain, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const int64_t i = t / blocks, r0 = t % blocks * kRowBlock, r1 = std::min(rows, r0 + kRowBlock);
      transpose_avx2(s + i * per, rows, cols, r0, r1, d + i * per);
    }
  });
  return out;
}

// Whether the transpose takes x: a 4-D float32 tensor with something to move, on a CPU with AVX2. Everything
// else is ATen's copy (composite.h), which the transpose does not beat for 16-bit types and which also covers
// the tensors already in both orders (C == 1 or H * W == 1), which ATen's `contiguous` would return as they are:
// the ops always return a new tensor (their schema declares no alias).
bool movable(const at::Tensor& x) {
  return x.dim() == 4 && x.numel() > 0 && x.scalar_type() == at::kFloat && x.size(1) > 1 &&
         x.size(2) * x.size(3) > 1 && cpu::has_avx2();
}
#endif

// x (N, C, H, W) in channels-last (NHWC) memory order.
at::Tensor to_channels_last_cpu(const at::Tensor& x) {
#ifdef NC_HAVE_LAYOUT_AVX2
  if (movable(x) && x.is_contiguous()) {
    return transpose_samples(x, x.size(0), x.size(1), x.size(2) * x.size(3),
                             at::empty_like(x, at::MemoryFormat::ChannelsLast));
  }
#endif
  return to_channels_last_composite(x);
}

// x (N, C, H, W) in contiguous (NCHW) memory order.
at::Tensor to_contiguous_cpu(const at::Tensor& x) {
#ifdef NC_HAVE_LAYOUT_AVX2
  if (movable(x) && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return transpose_samples(x, x.size(0), x.size(2) * x.size(3), x.size(1),
                             at::empty_like(x, at::MemoryFormat::Contiguous));
  }
#endif
  return to_contiguous_composite(x);
}

}  // namespace
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CPU, m) {
  m.impl("to_channels_last", &netcompress::to_channels_last_cpu);
  m.impl("to_contiguous", &netcompress::to_contiguous_cpu);
}

// CUDA (the layers do not call these there; registered so that the ops work on any tensor): ATen's copy, which
// is fast on the GPU. Device-agnostic code, so it is registered from this always-built file.
TORCH_LIBRARY_IMPL(netcompress, CUDA, m) {
  m.impl("to_channels_last", &netcompress::to_channels_last_composite);
  m.impl("to_contiguous", &netcompress::to_contiguous_composite);
}
