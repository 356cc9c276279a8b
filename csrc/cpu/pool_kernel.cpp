// MAX pooling on the CPU: aten::max_pool2d_with_indices's values and indices (dilation 1), for NCHW tensors.
//
// ATen's CPU kernel for contiguous NCHW input spends tens of cycles per output (LeNet's pool1 at batch 64,
// 184k outputs: ~4 ms on one core, more than its convolution); these loops, with the window size known at
// compile time for the common 2×2 and 3×3 kernels, take a tenth, and 2×2 windows at stride 2 (LeNet's and most
// Caffe nets' pools) have loops of their own, in AVX2 for float: pool1 0.11 ms, pool2 0.06 ms on one core.
// The gradient is ATen's max_pool2d_with_indices_backward's computation, which reads these indices, with the zeroing
// of the input gradient moved into the scatter's loop over planes; for 2×2 stride-2 windows and float, each element
// is written once instead (backward_2x2_avx2), which gives the same bits.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>

#include "../kernels/pool.h"
#include "loops.h"

namespace netcompress {
namespace {

using kernels::max_pool_takes;

struct Geometry {
  int64_t H, W, OH, OW;
  int64_t kh, kw, sh, sw, ph, pw;

  // 2×2 windows at stride 2 without padding, every one wholly inside the input: they tile (part of) the plane
  // without overlapping (rows_2x2, and the gradient's backward_2x2_avx2).
  bool tiles_2x2() const {
    return kh == 2 && kw == 2 && sh == 2 && sw == 2 && ph == 0 && pw == 0 && 2 * OH <= H && 2 * OW <= W;
  }
  // Whether every flat index of a plane, plus a row, fits the AVX2 loops' 32-bit lanes.
  bool int32_lanes() const { return H * W + W < (int64_t{1} << 31); }
};

// aten's pooling_output_shape with dilation 1.
int64_t pooled(int64_t size, int64_t k, int64_t pad, int64_t stride, bool ceil_mode) {
  const int64_t num = size + 2 * pad - k + (ceil_mode ? stride - 1 : 0);
  int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= size + pad) --out;
  return out;
}

// best <- v and at <- idx where take, with bit masks (a compare-and-branch would be mispredicted half the time).
template <typename acc_t>
inline void take_if(bool take, acc_t v, int64_t idx, acc_t& best, int64_t& at) {
  using U = cpu::bits_t<acc_t>;
  const U mask = -static_cast<U>(take);
  best = cpu::bit_cast<acc_t>((cpu::bit_cast<U>(v) & mask) | (cpu::bit_cast<U>(best) & ~mask));
  const int64_t m64 = -static_cast<int64_t>(take);
  at = (idx & m64) | (at & ~m64);
}

// One output: the maximum over input rows [h0, h1) and columns [w0, w1), and its flat index in the plane.
// K > 0: a full K×K window (h1 - h0 == w1 - w0 == K), unrolled.
template <typename scalar_t, int K>
inline void window(const scalar_t* x, int64_t W, int64_t h0, int64_t h1, int64_t w0, int64_t w1, scalar_t* y,
                   int64_t* ind) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t best = -std::numeric_limits<acc_t>::infinity();
  int64_t at = h0 * W + w0;
  if constexpr (K > 0) {
    for (int i = 0; i < K; ++i) {
      for (int j = 0; j < K; ++j) {
        const int64_t idx = (h0 + i) * W + w0 + j;
        const acc_t v = static_cast<acc_t>(x[idx]);
        take_if(max_pool_takes(v, best), v, idx, best, at);
      }
    }
  } else {
    for (int64_t h = h0; h < h1; ++h) {
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t idx = h * W + w;
        const acc_t v = static_cast<acc_t>(x[idx]);
        take_if(max_pool_takes(v, best), v, idx, best, at);
      }
    }
  }
  *y = static_cast<scalar_t>(best);
  *ind = at;
}

// The outputs of rows [oh0, oh1) and columns [ow0, ow1) whose windows lie wholly inside the input. For each row
// and window element (i, j), one pass over the row's outputs, which are independent: the loop over k vectorizes
// (with the column stride S known at compile time for 1 and 2; S = 0 reads g.sw). float and double.
template <typename scalar_t, int S>
NC_CPU_CLONES void interior(const scalar_t* __restrict x, const Geometry& g, int64_t oh0, int64_t oh1, int64_t ow0,
                            int64_t ow1, scalar_t* __restrict y, int64_t* __restrict ind) {
  constexpr int64_t kChunk = 256;
  const int64_t s = S > 0 ? S : g.sw;
  scalar_t best[kChunk];
  int64_t at[kChunk];
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    const int64_t h0 = oh * g.sh - g.ph;
    for (int64_t c0 = ow0; c0 < ow1; c0 += kChunk) {
      const int64_t count = std::min(kChunk, ow1 - c0);
      const int64_t col0 = c0 * s - g.pw;  // first input column of the chunk's first window
      for (int64_t k = 0; k < count; ++k) {
        best[k] = -std::numeric_limits<scalar_t>::infinity();
        at[k] = h0 * g.W + col0 + k * s;
      }
      for (int64_t i = 0; i < g.kh; ++i) {
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t base = (h0 + i) * g.W + col0 + j;
          const scalar_t* src = x + base;
          for (int64_t k = 0; k < count; ++k) {
            // Selects on bit masks: the vector loop's scalar remainder would otherwise branch on every compare.
            const scalar_t v = src[k * s];
            take_if(max_pool_takes(v, best[k]), v, base + k * s, best[k], at[k]);
          }
        }
      }
      for (int64_t k = 0; k < count; ++k) {
        y[oh * g.OW + c0 + k] = best[k];
        ind[oh * g.OW + c0 + k] = at[k];
      }
    }
  }
}

template <typename scalar_t>
void interior_any(const scalar_t* x, const Geometry& g, int64_t oh0, int64_t oh1, int64_t ow0, int64_t ow1,
                  scalar_t* y, int64_t* ind) {
  if (g.sw == 1) {
    interior<scalar_t, 1>(x, g, oh0, oh1, ow0, ow1, y, ind);
  } else if (g.sw == 2) {
    interior<scalar_t, 2>(x, g, oh0, oh1, ow0, ow1, y, ind);
  } else {
    interior<scalar_t, 0>(x, g, oh0, oh1, ow0, ow1, y, ind);
  }
}

// 2×2 windows at stride 2 without padding, every window wholly inside the input (LeNet's pooling, and most
// Caffe nets' 2×2 pools). The window's top pair (a, b) and bottom pair (c, d) are each reduced, then the bottom
// winner replaces the top one under the same rule. That picks what the row-major scan a, b, c, d picks: without NaN
// the first maximum (a tie keeps the earlier pair), and with NaN the last NaN (a NaN bottom winner is the last NaN
// of c, d; otherwise a NaN top winner stays). Selects on bit masks, no branches (3x2 rather than 4 dependent
// compares). One output, at column `ow` of the row pair r0/r1 whose first element has the flat index `base`.
template <typename scalar_t>
inline void one_2x2(const scalar_t* __restrict r0, const scalar_t* __restrict r1, int64_t ow, int64_t base,
                    int64_t W, scalar_t* __restrict yo, int64_t* __restrict io) {
  using U = cpu::bits_t<scalar_t>;
  const auto select = [](U mask, scalar_t yes, scalar_t no) {
    return cpu::bit_cast<scalar_t>((cpu::bit_cast<U>(yes) & mask) | (cpu::bit_cast<U>(no) & ~mask));
  };
  const scalar_t a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
  const U tb = -static_cast<U>(max_pool_takes(b, a));
  const U td = -static_cast<U>(max_pool_takes(d, c));
  const scalar_t top = select(tb, b, a), bot = select(td, d, c);
  const U tv = -static_cast<U>(max_pool_takes(bot, top));
  yo[ow] = select(tv, bot, top);
  const int64_t off_top = static_cast<int64_t>(tb & 1), off_bot = W + static_cast<int64_t>(td & 1);
  const int64_t mv = -static_cast<int64_t>(tv & 1);
  io[ow] = base + 2 * ow + ((off_bot & mv) | (off_top & ~mv));
}

// `planes` planes of 2×2 stride-2 windows, all their outputs in one loop nest.
template <typename scalar_t>
NC_CPU_CLONES void rows_2x2(const scalar_t* __restrict x, int64_t H, int64_t W, int64_t OH, int64_t OW,
                            int64_t planes, scalar_t* __restrict y, int64_t* __restrict ind) {
  for (int64_t p = 0; p < planes; ++p) {
    for (int64_t oh = 0; oh < OH; ++oh) {
      const scalar_t* r0 = x + p * H * W + 2 * oh * W;
      scalar_t* yo = y + (p * OH + oh) * OW;
      int64_t* io = ind + (p * OH + oh) * OW;
      for (int64_t ow = 0; ow < OW; ++ow) one_2x2(r0, r0 + W, ow, 2 * oh * W, W, yo, io);
    }
  }
}

#ifdef NC_HAVE_AVX2_PATH
#define NC_HAVE_POOL_AVX2 1
// rows_2x2 for float with AVX2, 8 (then 4) outputs at a time: the rows' even and odd columns are split with
// shuffles and the same three selections run on vectors (`max_pool_takes` is v > best, ordered, or v unordered
// with itself), so the values and indices are rows_2x2's. GCC does not vectorize rows_2x2's stride-2 loads: it
// spent ~27 ns on each row of LeNet's pools (12 and 4 outputs), one output at a time. The indices are formed in
// 32-bit lanes: the caller checks that a plane's flat indices fit (H * W + W < 2^31).
NC_AVX2_TARGET inline __m256 takes8(__m256 v, __m256 best) {
  return _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

NC_AVX2_TARGET inline __m128 takes4(__m128 v, __m128 best) {
  return _mm_or_ps(_mm_cmp_ps(v, best, _CMP_GT_OQ), _mm_cmp_ps(v, v, _CMP_UNORD_Q));
}

// The even (odd) columns of the 16 values u, v: shuffle_ps takes them within each 128-bit half, the permute puts
// the halves in order.
NC_AVX2_TARGET inline __m256 even(__m256 u, __m256 v) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(u, v, 0x88)), 0xD8));
}

NC_AVX2_TARGET inline __m256 odd(__m256 u, __m256 v) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(u, v, 0xDD)), 0xD8));
}

NC_AVX2_TARGET void rows_2x2_avx2(const float* __restrict x, int64_t H, int64_t W, int64_t OH, int64_t OW,
                                  int64_t planes, float* __restrict y, int64_t* __restrict ind) {
  const __m256i lanes8 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m128i lanes4 = _mm_setr_epi32(0, 2, 4, 6);
  const __m256i w8 = _mm256_set1_epi32(static_cast<int32_t>(W));
  const __m128i w4 = _mm_set1_epi32(static_cast<int32_t>(W));
  for (int64_t p = 0; p < planes; ++p) {
    for (int64_t oh = 0; oh < OH; ++oh) {
      const float* r0 = x + p * H * W + 2 * oh * W;
      const float* r1 = r0 + W;
      float* yo = y + (p * OH + oh) * OW;
      int64_t* io = ind + (p * OH + oh) * OW;
      const int64_t base = 2 * oh * W;
      int64_t ow = 0;
      for (; ow + 8 <= OW; ow += 8) {
        const __m256 x0 = _mm256_loadu_ps(r0 + 2 * ow), x1 = _mm256_loadu_ps(r0 + 2 * ow + 8);
        const __m256 z0 = _mm256_loadu_ps(r1 + 2 * ow), z1 = _mm256_loadu_ps(r1 + 2 * ow + 8);
        const __m256 a = even(x0, x1), b = odd(x0, x1), c = even(z0, z1), d = odd(z0, z1);
        const __m256 tb = takes8(b, a), td = takes8(d, c);
        const __m256 top = _mm256_blendv_ps(a, b, tb), bot = _mm256_blendv_ps(c, d, td);
        const __m256 tv = takes8(bot, top);
        _mm256_storeu_ps(yo + ow, _mm256_blendv_ps(top, bot, tv));
        const __m256i off_top = _mm256_srli_epi32(_mm256_castps_si256(tb), 31);
        const __m256i off_bot = _mm256_add_epi32(w8, _mm256_srli_epi32(_mm256_castps_si256(td), 31));
        const __m256i off = _mm256_blendv_epi8(off_top, off_bot, _mm256_castps_si256(tv));
        const __m256i at = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(base + 2 * ow)),
                                            _mm256_add_epi32(lanes8, off));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(io + ow), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(at)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(io + ow + 4),
                            _mm256_cvtepi32_epi64(_mm256_extracti128_si256(at, 1)));
      }
      for (; ow + 4 <= OW; ow += 4) {
        const __m128 x0 = _mm_loadu_ps(r0 + 2 * ow), x1 = _mm_loadu_ps(r0 + 2 * ow + 4);
        const __m128 z0 = _mm_loadu_ps(r1 + 2 * ow), z1 = _mm_loadu_ps(r1 + 2 * ow + 4);
        const __m128 a = _mm_shuffle_ps(x0, x1, 0x88), b = _mm_shuffle_ps(x0, x1, 0xDD);
        const __m128 c = _mm_shuffle_ps(z0, z1, 0x88), d = _mm_shuffle_ps(z0, z1, 0xDD);
        const __m128 tb = takes4(b, a), td = takes4(d, c);
        const __m128 top = _mm_blendv_ps(a, b, tb), bot = _mm_blendv_ps(c, d, td);
        const __m128 tv = takes4(bot, top);
        _mm_storeu_ps(yo + ow, _mm_blendv_ps(top, bot, tv));
        const __m128i off_top = _mm_srli_epi32(_mm_castps_si128(tb), 31);
        const __m128i off_bot = _mm_add_epi32(w4, _mm_srli_epi32(_mm_castps_si128(td), 31));
        const __m128i off = _mm_blendv_epi8(off_top, off_bot, _mm_castps_si128(tv));
        const __m128i at = _mm_add_epi32(_mm_set1_epi32(static_cast<int32_t>(base + 2 * ow)),
                                         _mm_add_epi32(lanes4, off));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(io + ow), _mm256_cvtepi32_epi64(at));
      }
      for (; ow < OW; ++ow) one_2x2(r0, r1, ow, base, W, yo, io);
    }
  }
}
#endif

template <typename scalar_t, int K>
void plane(const scalar_t* x, scalar_t* y, int64_t* ind, const Geometry& g) {
  // The interior: rows and columns whose windows lie wholly inside the input, hs >= 0 and hs + kh <= H. None
  // where the kernel is larger than the padded-at-the-top input (H - kh + ph < 0: a ceil-mode window over a
  // small input); C++'s division truncates towards zero, so that case must not reach it (it made row 0
  // "interior" for H 2, kh 3, and its window read the next plane).
  const int64_t last_h = g.H - g.kh + g.ph, last_w = g.W - g.kw + g.pw;
  const int64_t oh0 = std::min(g.OH, (g.ph + g.sh - 1) / g.sh);
  const int64_t oh1 = last_h < 0 ? oh0 : std::max(oh0, std::min(g.OH, last_h / g.sh + 1));
  const int64_t ow0 = std::min(g.OW, (g.pw + g.sw - 1) / g.sw);
  const int64_t ow1 = last_w < 0 ? ow0 : std::max(ow0, std::min(g.OW, last_w / g.sw + 1));
  constexpr bool kVector = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;
  if constexpr (kVector) {
    if (oh1 > oh0 && ow1 > ow0) interior_any<scalar_t>(x, g, oh0, oh1, ow0, ow1, y, ind);
  }
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const int64_t hs = oh * g.sh - g.ph;
    const int64_t h0 = std::max<int64_t>(hs, 0), h1 = std::min(hs + g.kh, g.H);
    const bool row_done = kVector && oh >= oh0 && oh < oh1;
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      if (row_done && ow >= ow0 && ow < ow1) {
        ow = ow1 - 1;
        continue;
      }
      const int64_t ws = ow * g.sw - g.pw;
      const int64_t w0 = std::max<int64_t>(ws, 0), w1 = std::min(ws + g.kw, g.W);
      scalar_t* yo = y + oh * g.OW + ow;
      int64_t* io = ind + oh * g.OW + ow;
      if (K > 0 && h1 - h0 == K && w1 - w0 == K) {
        window<scalar_t, K>(x, g.W, h0, h1, w0, w1, yo, io);
      } else {
        window<scalar_t, 0>(x, g.W, h0, h1, w0, w1, yo, io);
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& self, at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode) {
  const char* op = "max_pool2d";
  TORCH_CHECK(self.dim() == 3 || self.dim() == 4, op, ": input must be 3-D (C, H, W) or 4-D (N, C, H, W), got ",
              self.dim(), "-D");
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2, op,
              ": kernel_size, stride and padding must have 2 values each, got ", kernel_size.size(), ", ",
              stride.size(), " and ", padding.size());
  const at::ScalarType st = self.scalar_type();
  TORCH_CHECK(at::isFloatingType(st), op, ": input must be a floating tensor, got ", st);
  Geometry g;
  g.H = self.size(-2);
  g.W = self.size(-1);
  g.kh = kernel_size[0];
  g.kw = kernel_size[1];
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  TORCH_CHECK(g.kh > 0 && g.kw > 0 && g.sh > 0 && g.sw > 0, op, ": kernel_size and stride must be positive, got ",
              kernel_size, " and ", stride);
  TORCH_CHECK(g.ph >= 0 && g.pw >= 0 && 2 * g.ph <= g.kh && 2 * g.pw <= g.kw, op,
              ": padding must be at least 0 and at most half the kernel, got ", padding, " for kernel ", kernel_size);
  g.OH = pooled(g.H, g.kh, g.ph, g.sh, ceil_mode);
  g.OW = pooled(g.W, g.kw, g.pw, g.sw, ceil_mode);
  TORCH_CHECK(g.OH > 0 && g.OW > 0, op, ": the output would be empty (", g.OH, "×", g.OW, ") for a ", g.H, "×", g.W,
              " input, kernel ", kernel_size, ", stride ", stride, ", padding ", padding);
  const at::Tensor x = self.contiguous();
  std::vector<int64_t> shape(self.sizes().begin(), self.sizes().end() - 2);
  shape.push_back(g.OH);
  shape.push_back(g.OW);
  at::Tensor y = at::empty(shape, self.options());
  at::Tensor ind = at::empty(shape, self.options().dtype(at::kLong));
  const int64_t planes = x.numel() == 0 ? 0 : x.numel() / (g.H * g.W);
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, g.H * g.W));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, "max_pool2d_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    int64_t* ip = ind.mutable_data_ptr<int64_t>();
    const bool k2 = g.kh == 2 && g.kw == 2, k3 = g.kh == 3 && g.kw == 3;
    constexpr bool kVector = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;
    const bool fast2 = kVector && g.tiles_2x2();
#ifdef NC_HAVE_POOL_AVX2
    const bool avx2 = std::is_same_v<scalar_t, float> && fast2 && cpu::has_avx2() && g.int32_lanes();
#endif
    at::parallel_for(0, planes, grain, [&](int64_t first, int64_t last) {
      if (fast2) {
        if constexpr (kVector) {
#ifdef NC_HAVE_POOL_AVX2
          if (avx2) {
            rows_2x2_avx2(reinterpret_cast<const float*>(xp + first * g.H * g.W), g.H, g.W, g.OH, g.OW,
                          last - first, reinterpret_cast<float*>(yp + first * g.OH * g.OW), ip + first * g.OH * g.OW);
            return;
          }
#endif
          rows_2x2<scalar_t>(xp + first * g.H * g.W, g.H, g.W, g.OH, g.OW, last - first,
                             yp + first * g.OH * g.OW, ip + first * g.OH * g.OW);
        }
        return;
      }
      for (int64_t p = first; p < last; ++p) {
        const scalar_t* xi = xp + p * g.H * g.W;
        scalar_t* yi = yp + p * g.OH * g.OW;
        int64_t* ii = ip + p * g.OH * g.OW;
        if (k2) {
          plane<scalar_t, 2>(xi, yi, ii, g);
        } else if (k3) {
          plane<scalar_t, 3>(xi, yi, ii, g);
        } else {
          plane<scalar_t, 0>(xi, yi, ii, g);
        }
      }
    });
  });
  return {y, ind};
}

// The gradient, as ATen's CPU kernel computes it for a contiguous float or double input (per plane, in output
// order: grad_x[ind] += grad_y, -1 skipped, on a zeroed grad_x), with the zeroing done block by block inside the
// scatter's parallel loop: ATen zeroes the whole tensor first in a parallel region of its own (LeNet's pools at
// batch 64: 3.7 MB every step), then reads it back to scatter; on 2 threads under passive waiting that region
// cost as much as the scatter. Returns false, before writing through it, if an index lies outside its plane (not -1,
// not in [0, H*W)): ATen's kernel would write out of bounds.
template <typename scalar_t>
NC_CPU_CLONES bool scatter_backward(const scalar_t* __restrict gy, const int64_t* __restrict ind, int64_t planes,
                                    int64_t in_plane, int64_t out_plane, scalar_t* __restrict gx) {
  // By blocks of planes that stay in the L1/L2 cache between the zeroing and the scatter.
  const int64_t block = std::max<int64_t>(1, (int64_t{1} << 15) / (in_plane * int64_t{sizeof(scalar_t)}));
  for (int64_t p0 = 0; p0 < planes; p0 += block) {
    const int64_t p1 = std::min(planes, p0 + block);
    // Every index in [-1, in_plane), checked in a loop of its own (branch-free, it vectorizes).
    uint64_t outside = 0;
    for (int64_t o = p0 * out_plane; o < p1 * out_plane; ++o) {
      outside |= static_cast<uint64_t>(ind[o] + 1) > static_cast<uint64_t>(in_plane);
    }
    if (outside) return false;
    std::memset(gx + p0 * in_plane, 0, sizeof(scalar_t) * (p1 - p0) * in_plane);
    for (int64_t p = p0; p < p1; ++p) {
      scalar_t* xp = gx + p * in_plane;
      const scalar_t* gp = gy + p * out_plane;
      const int64_t* ip = ind + p * out_plane;
      for (int64_t o = 0; o < out_plane; ++o) {
        const int64_t at = ip[o];
        if (at != -1) xp[at] += gp[o];
      }
    }
  }
  return true;
}

#ifdef NC_HAVE_POOL_AVX2
// The gradient of 2×2 stride-2 windows without padding (rows_2x2's geometry) for float, when every index lies in
// its own window: each input element is then in at most one window and receives at most one term, so ATen's
// zero-then-scatter gives 0 + gy at the window's chosen element and +0 elsewhere, which this writes directly, each
// element once, 8 windows at a time (no zeroing pass, no read-modify-write). Returns false, having written part of
// gx, at the first index outside its window (-1 included); the caller then runs scatter_backward on the planes.
// Lanes of d (64 bits) in {0, 1, W, W + 1}: an offset inside a 2×2 window of a row W long.
NC_AVX2_TARGET inline __m256i in_window(__m256i d, __m256i w64, __m256i w1_64) {
  const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi64x(1);
  return _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi64(d, zero), _mm256_cmpeq_epi64(d, one)),
                         _mm256_or_si256(_mm256_cmpeq_epi64(d, w64), _mm256_cmpeq_epi64(d, w1_64)));
}

NC_AVX2_TARGET bool backward_2x2_avx2(const float* __restrict gy, const int64_t* __restrict ind, int64_t planes,
                                      int64_t H, int64_t W, int64_t OH, int64_t OW, float* __restrict gx) {
  const __m256i w64 = _mm256_set1_epi64x(W), w1_64 = _mm256_set1_epi64x(W + 1);
  const __m256i w32 = _mm256_set1_epi32(static_cast<int32_t>(W));
  const __m256i w1_32 = _mm256_set1_epi32(static_cast<int32_t>(W + 1));
  const __m256i one32 = _mm256_set1_epi32(1), zero_i = _mm256_setzero_si256();
  const __m256i pack = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);  // the low 32 bits of 4 int64 to the low half
  const __m256i steps = _mm256_setr_epi64x(0, 2, 4, 6);
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t p = 0; p < planes; ++p) {
    float* plane = gx + p * H * W;
    for (int64_t oh = 0; oh < OH; ++oh) {
      float* g0 = plane + 2 * oh * W;
      float* g1 = g0 + W;
      const float* go = gy + (p * OH + oh) * OW;
      const int64_t* io = ind + (p * OH + oh) * OW;
      const int64_t base = 2 * oh * W;
      int64_t ow = 0;
      for (; ow + 8 <= OW; ow += 8) {
        // d: each index minus its window's first flat index.
        const __m256i first = _mm256_add_epi64(_mm256_set1_epi64x(base + 2 * ow), steps);
        const __m256i d0 = _mm256_sub_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(io + ow)), first);
        const __m256i d1 = _mm256_sub_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(io + ow + 4)),
                                            _mm256_add_epi64(first, _mm256_set1_epi64x(8)));
        const __m256i ok = _mm256_and_si256(in_window(d0, w64, w1_64), in_window(d1, w64, w1_64));
        if (_mm256_movemask_epi8(ok) != -1) return false;
        const __m256i d = _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(d0, pack),
                                                    _mm256_permutevar8x32_epi32(d1, pack), 0x20);
        const __m256 v = _mm256_add_ps(zero, _mm256_loadu_ps(go + ow));  // 0 + gy, as the scatter adds
        const __m256 a = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(d, zero_i)), v);
        const __m256 b = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(d, one32)), v);
        const __m256 c = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(d, w32)), v);
        const __m256 e = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(d, w1_32)), v);
        // Interleave the windows' left and right columns back into rows: a0 b0 a1 b1 ... a7 b7.
        const __m256 t_lo = _mm256_unpacklo_ps(a, b), t_hi = _mm256_unpackhi_ps(a, b);
        const __m256 u_lo = _mm256_unpacklo_ps(c, e), u_hi = _mm256_unpackhi_ps(c, e);
        _mm256_storeu_ps(g0 + 2 * ow, _mm256_permute2f128_ps(t_lo, t_hi, 0x20));
        _mm256_storeu_ps(g0 + 2 * ow + 8, _mm256_permute2f128_ps(t_lo, t_hi, 0x31));
        _mm256_storeu_ps(g1 + 2 * ow, _mm256_permute2f128_ps(u_lo, u_hi, 0x20));
        _mm256_storeu_ps(g1 + 2 * ow + 8, _mm256_permute2f128_ps(u_lo, u_hi, 0x31));
      }
      for (; ow + 4 <= OW; ow += 4) {
        const __m256i d4 = _mm256_sub_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(io + ow)),
                                            _mm256_add_epi64(_mm256_set1_epi64x(base + 2 * ow), steps));
        if (_mm256_movemask_epi8(in_window(d4, w64, w1_64)) != -1) return false;
        const __m128i d = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(d4, pack));
        const __m128 v = _mm_add_ps(_mm_setzero_ps(), _mm_loadu_ps(go + ow));
        const __m128 a = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(d, _mm256_castsi256_si128(zero_i))), v);
        const __m128 b = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(d, _mm256_castsi256_si128(one32))), v);
        const __m128 c = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(d, _mm256_castsi256_si128(w32))), v);
        const __m128 e = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(d, _mm256_castsi256_si128(w1_32))), v);
        _mm_storeu_ps(g0 + 2 * ow, _mm_unpacklo_ps(a, b));
        _mm_storeu_ps(g0 + 2 * ow + 4, _mm_unpackhi_ps(a, b));
        _mm_storeu_ps(g1 + 2 * ow, _mm_unpacklo_ps(c, e));
        _mm_storeu_ps(g1 + 2 * ow + 4, _mm_unpackhi_ps(c, e));
      }
      for (; ow < OW; ++ow) {  // selects on bit masks: a branch on d would be mispredicted
        const int64_t d = io[ow] - (base + 2 * ow);
        if (!((d == 0) | (d == 1) | (d == W) | (d == W + 1))) return false;
        const uint32_t v = cpu::bit_cast<uint32_t>(0.0f + go[ow]);
        g0[2 * ow] = cpu::bit_cast<float>(v & -static_cast<uint32_t>(d == 0));
        g0[2 * ow + 1] = cpu::bit_cast<float>(v & -static_cast<uint32_t>(d == 1));
        g1[2 * ow] = cpu::bit_cast<float>(v & -static_cast<uint32_t>(d == W));
        g1[2 * ow + 1] = cpu::bit_cast<float>(v & -static_cast<uint32_t>(d == W + 1));
      }
      if (2 * OW < W) {  // floor mode: the columns no window covers
        std::memset(g0 + 2 * OW, 0, sizeof(float) * (W - 2 * OW));
        std::memset(g1 + 2 * OW, 0, sizeof(float) * (W - 2 * OW));
      }
    }
    if (2 * OH < H) std::memset(plane + 2 * OH * W, 0, sizeof(float) * (H - 2 * OH) * W);  // and the rows
  }
  return true;
}
#endif

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad, const at::Tensor& self, const at::Tensor& indices,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                   bool ceil_mode) {
  const auto aten = [&] {
    return at::max_pool2d_with_indices_backward(grad, self, kernel_size, stride, padding, {1, 1}, ceil_mode,
                                                indices);
  };
  const at::ScalarType st = self.scalar_type();
  if ((st != at::kFloat && st != at::kDouble) || grad.scalar_type() != st || indices.scalar_type() != at::kLong ||
      (self.dim() != 3 && self.dim() != 4) || !self.is_contiguous() || self.numel() == 0 ||
      grad.dim() != self.dim() || grad.sizes() != indices.sizes() ||
      grad.sizes().slice(0, self.dim() - 2) != self.sizes().slice(0, self.dim() - 2)) {
    return aten();  // other types and layouts, and the shapes ATen rejects with its own message
  }
  const int64_t in_plane = self.size(-2) * self.size(-1), out_plane = grad.size(-2) * grad.size(-1);
  const at::Tensor gy = grad.contiguous(), ind = indices.contiguous();
  at::Tensor gx = at::empty_like(self, at::MemoryFormat::Contiguous);
  const int64_t planes = self.numel() / in_plane;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / in_plane);
  std::atomic<bool> inside{true};
#ifdef NC_HAVE_POOL_AVX2
  bool direct_2x2 = false;
  if (st == at::kFloat && cpu::has_avx2() && kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2) {
    const Geometry g{self.size(-2), self.size(-1), grad.size(-2), grad.size(-1), kernel_size[0],
                     kernel_size[1], stride[0], stride[1], padding[0], padding[1]};
    direct_2x2 = g.tiles_2x2() && g.int32_lanes();
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(st, "max_pool2d_backward_cpu", [&] {
    const scalar_t* gp = gy.const_data_ptr<scalar_t>();
    const int64_t* ip = ind.const_data_ptr<int64_t>();
    scalar_t* xp = gx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, grain, [&](int64_t first, int64_t last) {
#ifdef NC_HAVE_POOL_AVX2
      if (direct_2x2 &&
          backward_2x2_avx2(reinterpret_cast<const float*>(gp + first * out_plane), ip + first * out_plane,
                            last - first, self.size(-2), self.size(-1), grad.size(-2), grad.size(-1),
                            reinterpret_cast<float*>(xp + first * in_plane))) {
        return;
      }
#endif
      if (!scatter_backward<scalar_t>(gp + first * out_plane, ip + first * out_plane, last - first, in_plane,
                                      out_plane, xp + first * in_plane)) {
        inside.store(false, std::memory_order_relaxed);
      }
    });
  });
  TORCH_CHECK(inside.load(), "max_pool2d backward: an index lies outside its ", self.size(-2), "×", self.size(-1),
              " plane (the indices must come from max_pool2d of this input)");
  return gx;
}

}  // namespace
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CPU, m) {
  m.impl("max_pool2d", &netcompress::max_pool2d_cpu);
  m.impl("_max_pool2d_backward", &netcompress::max_pool2d_backward_cpu);
}
