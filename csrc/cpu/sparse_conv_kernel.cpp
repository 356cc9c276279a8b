// Stride-1 2-D convolution (F.conv2d's cross-correlation) as a direct sum over the kernel's nonzero weights only.
//
// Why: a pruned kernel (DNS keeps 10-20 % of LeNet's conv2) has most of its products zero. oneDNN and NNPACK
// compute them all; this op visits only the nonzero weights. And a direct sum is exact where it must be: windows
// that agree wherever the kernel is nonzero give the same bits (the same products, added in the same order),
// which decides max pooling's ties as Caffe does (layers/vision.py, _FftConv, says why FFT tiles cannot).
//
// Layout: for each sample, the padded input is copied once into `xs`, one plane per (input channel, kernel
// column) holding the padded rows shifted by that column and cut to the output's width. A weight at (c, kh, kw)
// then reads one contiguous run of xs for every output position of its channel, in the output's own order, so
// its products are a plain multiply-add over a block of output positions kept in registers.
//
// The sum for an output is its weights' products in (input channel, kernel row, kernel column) order, then the
// bias: the same on any machine (no fused multiply-add, setup.py) and any number of threads (the batch is split
// over them, and a sample's result does not depend on the split).
//
// Also here, on the same layout: sparse_conv2d_input, the data gradient over the nonzero weights (the pruned
// kernels' rule, layers/vision.py _FftConv), and direct_conv2d_weight, every weight's gradient (and the bias's)
// as a direct dot product, the batch summed in fixed groups of samples and the groups added in order, so that
// it too is the same on any number of threads (the single-channel rule, layers/vision.py cpu_direct_conv).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

namespace netcompress {
namespace {

constexpr int64_t kBlock = 64;  // output positions per block of accumulators (4 AVX-512 or 8 AVX2 registers)
constexpr int64_t kSampleGroup = 8;  // samples whose weight gradients share one set of lane sums

// Where the run of kernel position (channel c, row i, column j) starts in a sample's shifted planes (below): plane
// (c, j), row i.
inline int32_t run_start(int64_t c, int64_t i, int64_t j, int64_t kw, int64_t padded_h, int64_t out_w) {
  return static_cast<int32_t>(((c * kw + j) * padded_h + i) * out_w);
}

// The nonzero weights of a kernel (O, C, kH, kW): for output channel o, entries first[o] .. first[o + 1] - 1 of
// `offset` (where its input run starts in xs) and `value`.
struct Taps {
  std::vector<int64_t> first;
  std::vector<int32_t> offset;
  std::vector<float> value;
};

Taps nonzero_taps(const at::Tensor& w, int64_t padded_h, int64_t out_w) {
  const int64_t outs = w.size(0), chans = w.size(1), kh = w.size(2), kw = w.size(3);
  const float* p = w.const_data_ptr<float>();
  Taps t;
  t.first.reserve(outs + 1);
  t.first.push_back(0);
  for (int64_t o = 0; o < outs; ++o) {
    for (int64_t c = 0; c < chans; ++c) {
      for (int64_t i = 0; i < kh; ++i) {
        for (int64_t j = 0; j < kw; ++j) {
          const float v = p[((o * chans + c) * kh + i) * kw + j];
          if (v != 0.0f) {  // a NaN weight is kept (and spreads as in a dense convolution)
            t.offset.push_back(run_start(c, i, j, kw, padded_h, out_w));
            t.value.push_back(v);
          }
        }
      }
    }
    t.first.push_back(static_cast<int64_t>(t.value.size()));
  }
  return t;
}

// xs for one sample x (C, H, W): plane (c, j) row r, column q = the padded input at (c, r, q + j), 0 outside.
void shifted_planes(const float* x, int64_t chans, int64_t h, int64_t w, int64_t kw, int64_t pad_h, int64_t pad_w,
                    int64_t padded_h, int64_t out_w, float* xs) {
  for (int64_t c = 0; c < chans; ++c) {
    for (int64_t j = 0; j < kw; ++j) {
      for (int64_t r = 0; r < padded_h; ++r) {
        float* row = xs + ((c * kw + j) * padded_h + r) * out_w;
        const int64_t ih = r - pad_h;
        if (ih < 0 || ih >= h) {
          std::fill(row, row + out_w, 0.0f);
          continue;
        }
        // columns q with q + j - pad_w inside [0, w) copy, the others are the padding's zeros
        const int64_t lo = std::clamp<int64_t>(pad_w - j, 0, out_w), hi = std::clamp<int64_t>(w + pad_w - j, lo, out_w);
        const float* src = x + (c * h + ih) * w;
        std::fill(row, row + lo, 0.0f);
        for (int64_t q = lo; q < hi; ++q) row[q] = src[q + j - pad_w];
        std::fill(row + hi, row + out_w, 0.0f);
      }
    }
  }
}

#if defined(__GNUC__)
#define NC_INLINE inline __attribute__((always_inline))
#else
#define NC_INLINE inline
#endif

// The loops below are templates over a GCC vector type V of the machine's width: 16 floats with AVX-512, 8 with
// AVX2, 4 otherwise (GCC lowers a type wider than the instruction set through memory: the weight gradient's loop
// with 16-float vectors took 3.7x as long compiled for AVX2 as for AVX-512, RESULTS.md's ninth session). Each is
// instantiated once per instruction set by functions compiled for it, and vector_isa() picks one per op call
// (NETCOMPRESS_SIMD caps it, for tests and benchmarks). A sum's order never depends on V: 16 lanes are kept as
// 16 / width(V) vectors, so each path gives the same bits.
#if defined(__GNUC__)
// A vector wider than the file's baseline passed by value would change the ABI; these are only ever inlined.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vec4 __attribute__((vector_size(16)));
typedef float vec8 __attribute__((vector_size(32)));
typedef float vec16 __attribute__((vector_size(64)));

template <typename V>
constexpr int kWidth = static_cast<int>(sizeof(V) / sizeof(float));

template <typename V>
NC_INLINE V loadv(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);  // an unaligned load
  return v;
}
#else
struct vec4 {};  // the scalar loops ignore the vector type; distinct types still name the paths' tiles (Tile)
struct vec8 {};
struct vec16 {};
#endif

// The weight gradient's tile for a vector type: OB output channels x TB taps, their sums in registers (16 floats a
// sum: 24 of AVX-512's 32 registers for 4 x 6). Measured on LeNet's conv1: 4 x 6 0.51 ms, 4 x 4 0.54, 5 x 5 0.50,
// the previous 1 x 8 0.70 with AVX-512; AVX2's shapes from 1 x 4 to 3 x 2 within 10 % of each other.
template <typename V>
struct Tile;
template <>
struct Tile<vec16> {
  static constexpr int OB = 4, TB = 6;
};
template <>
struct Tile<vec8> {
  static constexpr int OB = 2, TB = 3;
};
template <>
struct Tile<vec4> {
  static constexpr int OB = 1, TB = 3;
};

// acc[q] = the sum over t in [first, last), in order, of value[t] * src[offset[t] + q], for q < kBlock.
template <typename V>
NC_INLINE void weighted_runs(const float* src, int64_t first, int64_t last, const int32_t* offset,
                             const float* value, float* acc) {
#if defined(__GNUC__)
  // Explicit vectors keep the block's sums in registers (left to itself GCC interchanges the loops and runs the
  // products one float at a time).
  constexpr int kRegs = static_cast<int>(kBlock) / kWidth<V>;
  V a[kRegs] = {};
  for (int64_t t = first; t < last; ++t) {
    const float* s = src + offset[t];
    const V v = V{} + value[t];
#pragma GCC unroll 16
    for (int r = 0; r < kRegs; ++r) a[r] += v * loadv<V>(s + r * kWidth<V>);
  }
  std::memcpy(acc, a, sizeof a);
#else
  for (int64_t q = 0; q < kBlock; ++q) acc[q] = 0.0f;
  for (int64_t t = first; t < last; ++t) {
    for (int64_t q = 0; q < kBlock; ++q) acc[q] += value[t] * src[offset[t] + q];
  }
#endif
}

// One sample's output planes (outs, plane): out[o][p] = sum over o's taps t of value[t] * xs[offset[t] + p], plus
// bias[o]. xs has kBlock readable floats past its last plane, so the last block of a plane runs whole.
template <typename V>
NC_INLINE void tap_sums(const float* xs, const int64_t* first, const int32_t* offset, const float* value,
                        const float* bias, int64_t outs, int64_t plane, float* out) {
  for (int64_t o = 0; o < outs; ++o) {
    const float b = bias ? bias[o] : 0.0f;
    for (int64_t p0 = 0; p0 < plane; p0 += kBlock) {
      alignas(64) float acc[kBlock];
      weighted_runs<V>(xs + p0, first[o], first[o + 1], offset, value, acc);
      const int64_t len = std::min(kBlock, plane - p0);
      float* dst = out + o * plane + p0;
      for (int64_t q = 0; q < len; ++q) dst[q] = acc[q] + b;
    }
  }
}

// The nonzero weights grouped the other way, for the data gradient: for each kernel position k = (c, kh, kw) in
// (channel, kernel column, kernel row) order, entries first[k] .. first[k + 1] - 1 hold the output channels o (as
// `offset`, o * padded_plane into the padded output gradient) and the weights; `at[k]` is where k's run starts in
// the shifted layout (as in nonzero_taps).
struct InputTaps {
  std::vector<int64_t> first;
  std::vector<int32_t> offset;
  std::vector<float> value;
  std::vector<int32_t> at;
};

InputTaps nonzero_input_taps(const at::Tensor& w, int64_t padded_h, int64_t out_w, int64_t padded_plane) {
  const int64_t outs = w.size(0), chans = w.size(1), kh = w.size(2), kw = w.size(3);
  const float* p = w.const_data_ptr<float>();
  InputTaps t;
  t.first.push_back(0);
  for (int64_t c = 0; c < chans; ++c) {
    for (int64_t j = 0; j < kw; ++j) {
      for (int64_t i = 0; i < kh; ++i) {
        for (int64_t o = 0; o < outs; ++o) {
          const float v = p[((o * chans + c) * kh + i) * kw + j];
          if (v != 0.0f) {
            t.offset.push_back(static_cast<int32_t>(o * padded_plane));
            t.value.push_back(v);
          }
        }
        t.first.push_back(static_cast<int64_t>(t.value.size()));
        t.at.push_back(run_start(c, i, j, kw, padded_h, out_w));
      }
    }
  }
  return t;
}

// One sample's data gradient in the shifted layout: for each kernel position k, the sum over its output channels
// of weight * that channel's output gradient (a block of positions in registers), added into gxs at k's run.
// g holds the sample's output gradient with each plane padded with zeros to a multiple of kBlock (padded_plane).
template <typename V>
NC_INLINE void tap_scatter(const float* g, const int64_t* first, const int32_t* offset, const float* value,
                           const int32_t* at, int64_t positions, int64_t plane, int64_t padded_plane, float* gxs) {
  for (int64_t k = 0; k < positions; ++k) {
    if (first[k] == first[k + 1]) continue;
    for (int64_t p0 = 0; p0 < padded_plane; p0 += kBlock) {
      alignas(64) float acc[kBlock];
      weighted_runs<V>(g + p0, first[k], first[k + 1], offset, value, acc);
      const int64_t len = std::min(kBlock, plane - p0);
      float* dst = gxs + at[k] + p0;
      for (int64_t q = 0; q < len; ++q) dst[q] += acc[q];
    }
  }
}

// gx (C, H, W) of one sample from its shifted-layout gradient: the sum over kernel columns j, in order, of
// gxs[c][j][r][q] at the input position (r - pad_h, q + j - pad_w).
void fold_shifted(const float* gxs, int64_t chans, int64_t h, int64_t w, int64_t kw, int64_t pad_h, int64_t pad_w,
                  int64_t padded_h, int64_t out_w, float* gx) {
  std::fill(gx, gx + chans * h * w, 0.0f);
  for (int64_t c = 0; c < chans; ++c) {
    for (int64_t j = 0; j < kw; ++j) {
      for (int64_t ih = 0; ih < h; ++ih) {
        const float* row = gxs + ((c * kw + j) * padded_h + ih + pad_h) * out_w;
        const int64_t lo = std::clamp<int64_t>(pad_w - j, 0, out_w), hi = std::clamp<int64_t>(w + pad_w - j, lo, out_w);
        float* dst = gx + (c * h + ih) * w;
        for (int64_t q = lo; q < hi; ++q) dst[q + j - pad_w] += row[q];
      }
    }
  }
}

// The weight gradients over a group of samples, a tile of OB output channels x TB taps at a time: lanes[i][j][l] =
// the sum over the group's samples s (in order) and the positions p < body with p % 16 == l (in order) of
// g[s][i * plane + p] * xs[s][offset[j] + p]. xs[s] is sample s's shifted input, g[s] its output gradient at the
// tile's first channel. Each load of g serves TB taps and each load of xs OB channels; the tile's sums stay in
// registers (OB x TB x 16 floats, Tile). Every sum runs in the same order
// whatever the tile and the vector width, so they are a matter of speed only.
template <typename V, int OB, int TB>
NC_INLINE void dot_tile(const float* const* xs, const float* const* g, int64_t group, int64_t body, int64_t plane,
                        const int32_t* offset, float (*lanes)[16]) {
#if defined(__GNUC__)
  constexpr int kW = kWidth<V>, kH = 16 / kW;
  V a[OB][TB][kH] = {};
  for (int64_t s = 0; s < group; ++s) {
    const float* gs = g[s];
    const float* x[TB];
    for (int j = 0; j < TB; ++j) x[j] = xs[s] + offset[j];
    for (int64_t p = 0; p < body; p += 16) {
#pragma GCC unroll 4
      for (int h = 0; h < kH; ++h) {
        V gv[OB];
#pragma GCC unroll 8
        for (int i = 0; i < OB; ++i) gv[i] = loadv<V>(gs + i * plane + p + h * kW);
#pragma GCC unroll 8
        for (int j = 0; j < TB; ++j) {
          const V xv = loadv<V>(x[j] + p + h * kW);
#pragma GCC unroll 8
          for (int i = 0; i < OB; ++i) a[i][j][h] += gv[i] * xv;
        }
      }
    }
  }
  for (int i = 0; i < OB; ++i) {
    for (int j = 0; j < TB; ++j) std::memcpy(lanes[i * TB + j], a[i][j], sizeof(a[i][j]));
  }
#else
  for (int i = 0; i < OB * TB; ++i) std::fill(lanes[i], lanes[i] + 16, 0.0f);
  for (int64_t s = 0; s < group; ++s) {
    for (int i = 0; i < OB; ++i) {
      for (int j = 0; j < TB; ++j) {
        const float* gi = g[s] + i * plane;
        const float* xj = xs[s] + offset[j];
        for (int64_t p = 0; p < body; p += 16) {
          for (int l = 0; l < 16; ++l) lanes[i * TB + j][l] += gi[p + l] * xj[p + l];
        }
      }
    }
  }
#endif
}

// dot_tile with a tile of ob <= OB channels x tb <= TB taps (the remainders of a kernel's channels and taps): one
// instance per shape, each with its sums in registers.
template <typename V, int OB, int TB>
NC_INLINE void dot_tile_upto(int64_t ob, int64_t tb, const float* const* xs, const float* const* g, int64_t group,
                             int64_t body, int64_t plane, const int32_t* offset, float (*lanes)[16]) {
  if constexpr (OB > 1) {
    if (ob < OB) return dot_tile_upto<V, OB - 1, TB>(ob, tb, xs, g, group, body, plane, offset, lanes);
  }
  if constexpr (TB > 1) {
    if (tb < TB) return dot_tile_upto<V, OB, TB - 1>(ob, tb, xs, g, group, body, plane, offset, lanes);
  }
  dot_tile<V, OB, TB>(xs, g, group, body, plane, offset, lanes);
}

// The weight and bias gradients of output channels [0, outs) over a group of samples, in tiles of up to Tile<V>'s
// OB channels x TB taps: dw[o][t] = the sum over the group's samples s and positions p < plane of g[s][o * plane + p] *
// xs[s][offset[t] + p], for every tap t (each (channel, kernel row, kernel column)), and db[o] = the sum of g over
// the group (dw and db rows `stride` apart). A sum runs in 16 lanes over the group's samples and the positions below
// the last multiple of 16, then adds its lanes in order, then the positions past that multiple: a fixed order, so
// the same bits on any machine and with any tiles.
template <typename V>
NC_INLINE void weight_sums(const float* const* xs, const float* const* g, int64_t group, int64_t outs, int64_t plane,
                           const int32_t* offset, int64_t taps, float* dw, int64_t stride) {
  constexpr int OB = Tile<V>::OB, TB = Tile<V>::TB;
  const int64_t body = plane - plane % 16;
  auto finish = [&](const float* lanes, int64_t o, int64_t off) {
    float sum = 0.0f;
    for (int l = 0; l < 16; ++l) sum += lanes[l];
    for (int64_t s = 0; s < group; ++s) {
      for (int64_t p = body; p < plane; ++p) sum += g[s][o * plane + p] * xs[s][off + p];
    }
    return sum;
  };
  const float* gt[kSampleGroup];
  float lanes[OB * TB][16];
  for (int64_t o0 = 0; o0 < outs; o0 += OB) {
    const int64_t ob = std::min<int64_t>(OB, outs - o0);
    for (int64_t s = 0; s < group; ++s) gt[s] = g[s] + o0 * plane;
    for (int64_t t0 = 0; t0 < taps; t0 += TB) {
      const int64_t tb = std::min<int64_t>(TB, taps - t0);
      dot_tile_upto<V, OB, TB>(ob, tb, xs, gt, group, body, plane, offset + t0, lanes);
      for (int64_t i = 0; i < ob; ++i) {
        for (int64_t j = 0; j < tb; ++j) {
          dw[(o0 + i) * stride + t0 + j] = finish(lanes[i * tb + j], o0 + i, offset[t0 + j]);
        }
      }
    }
  }
  // the bias: the same sums with 1 in place of the input
  for (int64_t o = 0; o < outs; ++o) {
    float acc[16] = {};
    for (int64_t s = 0; s < group; ++s) {
      const float* gs = g[s] + o * plane;
      for (int64_t p = 0; p < body; p += 16) {
        for (int l = 0; l < 16; ++l) acc[l] += gs[p + l];
      }
    }
    float sum = 0.0f;
    for (int l = 0; l < 16; ++l) sum += acc[l];
    for (int64_t s = 0; s < group; ++s) {
      for (int64_t p = body; p < plane; ++p) sum += g[s][o * plane + p];
    }
    dw[o * stride + taps] = sum;
  }
}

// ---- one instance of each loop per instruction set, and the choice among them ----

enum class Isa { kBaseline, kAvx2, kAvx512 };

// NETCOMPRESS_SIMD: unset, empty or "avx512" (no cap), "avx2" or "baseline".
Isa simd_cap() {
  const char* cap = std::getenv("NETCOMPRESS_SIMD");
  if (cap == nullptr || *cap == '\0' || std::strcmp(cap, "avx512") == 0) return Isa::kAvx512;
  if (std::strcmp(cap, "avx2") == 0) return Isa::kAvx2;
  if (std::strcmp(cap, "baseline") == 0) return Isa::kBaseline;
  TORCH_CHECK(false, "NETCOMPRESS_SIMD must be avx512, avx2 or baseline (the widest vector instructions the direct "
              "convolution sums may use), or unset; got '", cap, "'");
}

// The widest vector instruction set the CPU has, capped by NETCOMPRESS_SIMD ("avx2" or "baseline"; read at each op
// call, so that tests and benchmarks can compare the paths in one process).
Isa vector_isa() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 11
  // x86-64-v3's and x86-64-v4's vector features (GCC 11's __builtin_cpu_supports has no level names)
  static const bool v3 = __builtin_cpu_supports("avx") && __builtin_cpu_supports("avx2") &&
                         __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
                         __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  static const Isa best = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                  __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                                  __builtin_cpu_supports("avx512vl")
                              ? Isa::kAvx512
                          : v3 ? Isa::kAvx2
                               : Isa::kBaseline;
  const Isa cap = simd_cap();
  return std::min(best, cap);
#else
  simd_cap();  // a bad value is an error on every machine
  return Isa::kBaseline;
#endif
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 11
#define NC_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#define NC_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#else
#define NC_TARGET_AVX512
#define NC_TARGET_AVX2
#endif

// NAME_avx512, NAME_avx2 and NAME_baseline: the template FN<V> compiled for each instruction set, with V its
// vector type. NC_ISA_CALL(isa, NAME, ...) calls the one for isa, which each op takes from vector_isa() once, before
// its threads start.
#define NC_ISA_PATHS(NAME, FN, PARAMS, ARGS)                                        \
  NC_TARGET_AVX512 void NAME##_avx512 PARAMS { FN<vec16> ARGS; }                    \
  NC_TARGET_AVX2 void NAME##_avx2 PARAMS { FN<vec8> ARGS; }                         \
  void NAME##_baseline PARAMS { FN<vec4> ARGS; }

NC_ISA_PATHS(sample_sums, tap_sums,
             (const float* xs, const int64_t* first, const int32_t* offset, const float* value, const float* bias,
              int64_t outs, int64_t plane, float* out),
             (xs, first, offset, value, bias, outs, plane, out))
NC_ISA_PATHS(sample_scatter, tap_scatter,
             (const float* g, const int64_t* first, const int32_t* offset, const float* value, const int32_t* at,
              int64_t positions, int64_t plane, int64_t padded_plane, float* gxs),
             (g, first, offset, value, at, positions, plane, padded_plane, gxs))
NC_ISA_PATHS(group_weight_sums, weight_sums,
             (const float* const* xs, const float* const* g, int64_t group, int64_t outs, int64_t plane,
              const int32_t* offset, int64_t taps, float* dw, int64_t stride),
             (xs, g, group, outs, plane, offset, taps, dw, stride))

#define NC_ISA_CALL(ISA, NAME, ...)                         \
  switch (ISA) {                                            \
    case Isa::kAvx512: NAME##_avx512(__VA_ARGS__); break;   \
    case Isa::kAvx2: NAME##_avx2(__VA_ARGS__); break;       \
    default: NAME##_baseline(__VA_ARGS__); break;           \
  }

// A kernel size, input size or padding argument: two values, each > 0 (positive) or >= 0.
void check_pair(const char* op, const char* name, at::IntArrayRef v, bool positive) {
  const int64_t low = positive ? 1 : 0;
  TORCH_CHECK(v.size() == 2 && v[0] >= low && v[1] >= low, "netcompress::", op, ": ", name, " must be two values ",
              positive ? "> 0" : ">= 0", ", got ", v);
}

at::Tensor sparse_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef padding) {
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, "netcompress::sparse_conv2d: x (N, C, H, W) and weight "
              "(O, C, kH, kW) must be 4-D, got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat &&
                  (!bias || bias->scalar_type() == at::kFloat),
              "netcompress::sparse_conv2d: float32 only, got ", x.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(x.size(1) == weight.size(1), "netcompress::sparse_conv2d: x has ", x.size(1),
              " channels, weight expects ", weight.size(1));
  TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == weight.size(0)),
              "netcompress::sparse_conv2d: bias must have ", weight.size(0), " elements");
  check_pair("sparse_conv2d", "padding", padding, false);
  const int64_t n = x.size(0), chans = x.size(1), h = x.size(2), w = x.size(3), outs = weight.size(0),
                kh = weight.size(2), kw = weight.size(3);
  const int64_t padded_h = h + 2 * padding[0], out_h = padded_h - kh + 1, out_w = w + 2 * padding[1] - kw + 1;
  TORCH_CHECK(kh > 0 && kw > 0 && out_h > 0 && out_w > 0, "netcompress::sparse_conv2d: the kernel ",
              weight.sizes().slice(2), " is empty or larger than the padded input ", x.sizes().slice(2));
  const int64_t xs_size = chans * kw * padded_h * out_w;
  TORCH_CHECK(xs_size + kBlock <= INT32_MAX, "netcompress::sparse_conv2d: a sample's shifted input (", xs_size,
              " floats) is too large for this op; use F.conv2d");
  at::Tensor out = at::empty({n, outs, out_h, out_w}, x.options());
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous();
  const at::Tensor bc = bias ? bias->contiguous() : at::Tensor();
  const Taps taps = nonzero_taps(weight.contiguous(), padded_h, out_w);
  const float* xp = xc.const_data_ptr<float>();
  const float* bp = bias ? bc.const_data_ptr<float>() : nullptr;
  float* op = out.mutable_data_ptr<float>();
  const int64_t plane = out_h * out_w;
  const Isa isa = vector_isa();  // before the threads: NETCOMPRESS_SIMD is read once
  at::parallel_for(0, n, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> xs(xs_size + kBlock, 0.0f);
    for (int64_t i = lo; i < hi; ++i) {
      shifted_planes(xp + i * chans * h * w, chans, h, w, kw, padding[0], padding[1], padded_h, out_w, xs.data());
      NC_ISA_CALL(isa, sample_sums, xs.data(), taps.first.data(), taps.offset.data(), taps.value.data(), bp, outs,
                  plane, op + i * outs * plane);
    }
  });
  return out;
}

at::Tensor sparse_conv2d_input_cpu(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef input_size,
                                   at::IntArrayRef padding) {
  TORCH_CHECK(grad_out.dim() == 4 && weight.dim() == 4, "netcompress::sparse_conv2d_input: grad_out (N, O, outH, "
              "outW) and weight (O, C, kH, kW) must be 4-D, got ", grad_out.sizes(), " and ", weight.sizes());
  TORCH_CHECK(grad_out.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "netcompress::sparse_conv2d_input: float32 only, got ", grad_out.scalar_type(), " and ",
              weight.scalar_type());
  check_pair("sparse_conv2d_input", "input_size", input_size, true);
  check_pair("sparse_conv2d_input", "padding", padding, false);
  const int64_t n = grad_out.size(0), outs = weight.size(0), chans = weight.size(1), kh = weight.size(2),
                kw = weight.size(3), h = input_size[0], w = input_size[1];
  const int64_t padded_h = h + 2 * padding[0], out_h = padded_h - kh + 1, out_w = w + 2 * padding[1] - kw + 1;
  TORCH_CHECK(out_h > 0 && out_w > 0 && grad_out.size(1) == outs && grad_out.size(2) == out_h &&
                  grad_out.size(3) == out_w,
              "netcompress::sparse_conv2d_input: grad_out ", grad_out.sizes(), " is not the output of a ",
              weight.sizes(), " kernel on ", input_size, " inputs with padding ", padding, " (expected (N, ", outs,
              ", ", out_h, ", ", out_w, "))");
  const int64_t xs_size = chans * kw * padded_h * out_w, plane = out_h * out_w;
  const int64_t padded_plane = (plane + kBlock - 1) / kBlock * kBlock;
  TORCH_CHECK(xs_size + kBlock <= INT32_MAX && outs * padded_plane <= INT32_MAX,
              "netcompress::sparse_conv2d_input: the input or output is too large for this op");
  at::Tensor gx = at::empty({n, chans, h, w}, grad_out.options());
  if (gx.numel() == 0) return gx;
  const at::Tensor gc = grad_out.contiguous();
  const InputTaps taps = nonzero_input_taps(weight.contiguous(), padded_h, out_w, padded_plane);
  const float* gp = gc.const_data_ptr<float>();
  float* xp = gx.mutable_data_ptr<float>();
  const int64_t positions = chans * kw * kh;
  const Isa isa = vector_isa();  // before the threads: NETCOMPRESS_SIMD is read once
  at::parallel_for(0, n, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> gxs(xs_size + kBlock);
    std::vector<float> g(outs * padded_plane + kBlock, 0.0f);  // the planes' padding stays zero
    for (int64_t i = lo; i < hi; ++i) {
      for (int64_t o = 0; o < outs; ++o) {
        std::memcpy(g.data() + o * padded_plane, gp + (i * outs + o) * plane, plane * sizeof(float));
      }
      std::fill(gxs.begin(), gxs.end(), 0.0f);
      NC_ISA_CALL(isa, sample_scatter, g.data(), taps.first.data(), taps.offset.data(), taps.value.data(),
                  taps.at.data(), positions, plane, padded_plane, gxs.data());
      fold_shifted(gxs.data(), chans, h, w, kw, padding[0], padding[1], padded_h, out_w, xp + i * chans * h * w);
    }
  });
  return gx;
}

std::tuple<at::Tensor, at::Tensor> direct_conv2d_weight_cpu(const at::Tensor& x, const at::Tensor& grad_out,
                                                             at::IntArrayRef kernel_size, at::IntArrayRef padding) {
  TORCH_CHECK(x.dim() == 4 && grad_out.dim() == 4, "netcompress::direct_conv2d_weight: x (N, C, H, W) and grad_out "
              "(N, O, outH, outW) must be 4-D, got ", x.sizes(), " and ", grad_out.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && grad_out.scalar_type() == at::kFloat,
              "netcompress::direct_conv2d_weight: float32 only, got ", x.scalar_type(), " and ",
              grad_out.scalar_type());
  check_pair("direct_conv2d_weight", "kernel_size", kernel_size, true);
  check_pair("direct_conv2d_weight", "padding", padding, false);
  const int64_t n = x.size(0), chans = x.size(1), h = x.size(2), w = x.size(3), outs = grad_out.size(1),
                kh = kernel_size[0], kw = kernel_size[1];
  const int64_t padded_h = h + 2 * padding[0], out_h = padded_h - kh + 1, out_w = w + 2 * padding[1] - kw + 1;
  TORCH_CHECK(out_h > 0 && out_w > 0 && grad_out.size(0) == n && grad_out.size(2) == out_h &&
                  grad_out.size(3) == out_w,
              "netcompress::direct_conv2d_weight: grad_out ", grad_out.sizes(), " is not the output of x ",
              x.sizes(), " with a ", kernel_size, " kernel and padding ", padding, " (expected (", n, ", O, ", out_h,
              ", ", out_w, "))");
  const int64_t xs_size = chans * kw * padded_h * out_w;
  TORCH_CHECK(kSampleGroup * xs_size + kBlock <= INT32_MAX,
              "netcompress::direct_conv2d_weight: the input is too large for this op");
  const int64_t taps = chans * kh * kw, plane = out_h * out_w;
  // Samples in fixed groups of kSampleGroup (not per thread): each group's sums, then the groups' added in order.
  const int64_t groups = (n + kSampleGroup - 1) / kSampleGroup;
  at::Tensor partial = at::empty({groups, outs, taps + 1}, x.options());  // + 1: the bias
  std::vector<int32_t> offset(taps);
  for (int64_t c = 0; c < chans; ++c) {
    for (int64_t i = 0; i < kh; ++i) {
      for (int64_t j = 0; j < kw; ++j) {
        offset[(c * kh + i) * kw + j] = run_start(c, i, j, kw, padded_h, out_w);
      }
    }
  }
  const at::Tensor xc = x.contiguous(), gc = grad_out.contiguous();
  const float* xp = xc.const_data_ptr<float>();
  const float* gp = gc.const_data_ptr<float>();
  float* pp = partial.mutable_data_ptr<float>();
  const Isa isa = vector_isa();  // before the threads: NETCOMPRESS_SIMD is read once
  at::parallel_for(0, groups, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> xs(kSampleGroup * xs_size + kBlock, 0.0f);
    const float* xs_of[kSampleGroup];
    const float* g_of[kSampleGroup];
    for (int64_t grp = lo; grp < hi; ++grp) {
      const int64_t first = grp * kSampleGroup, count = std::min(kSampleGroup, n - first);
      for (int64_t s = 0; s < count; ++s) {
        shifted_planes(xp + (first + s) * chans * h * w, chans, h, w, kw, padding[0], padding[1], padded_h, out_w,
                       xs.data() + s * xs_size);
        xs_of[s] = xs.data() + s * xs_size;
      }
      for (int64_t s = 0; s < count; ++s) g_of[s] = gp + (first + s) * outs * plane;
      NC_ISA_CALL(isa, group_weight_sums, xs_of, g_of, count, outs, plane, offset.data(), taps,
                  pp + grp * outs * (taps + 1), taps + 1);
    }
  });
  at::Tensor total = at::zeros({outs, taps + 1}, x.options());
  float* dst = total.mutable_data_ptr<float>();
  const int64_t per = outs * (taps + 1);
  for (int64_t grp = 0; grp < groups; ++grp) {  // in order: the same sums on any number of threads
    const float* src = pp + grp * per;
    for (int64_t k = 0; k < per; ++k) dst[k] += src[k];
  }
  return {total.narrow(1, 0, taps).contiguous().view({outs, chans, kh, kw}), total.select(1, taps).contiguous()};
}

}  // namespace

// The vector instructions the direct sums run with now: "avx512", "avx2" or "baseline" (the module function
// netcompress._C.direct_sum_simd, for `netcompress info` and the benchmarks' records). Throws for a bad
// NETCOMPRESS_SIMD, as the ops do.
const char* direct_sum_simd() {
  switch (vector_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CPU, m) {
  m.impl("sparse_conv2d", &netcompress::sparse_conv2d_cpu);
  m.impl("sparse_conv2d_input", &netcompress::sparse_conv2d_input_cpu);
  m.impl("direct_conv2d_weight", &netcompress::direct_conv2d_weight_cpu);
}
