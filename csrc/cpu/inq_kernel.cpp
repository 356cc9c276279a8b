// INQ ops on the CPU: at::parallel_for over vectorized loops (loops.h) of the rules in kernels/inq.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../kernels/inq.h"
#include "loops.h"

namespace netcompress {
namespace {

using namespace kernels;
using cpu::bit_cast;
using cpu::bits_t;
using cpu::kGrain;
using cpu::kLanes;

// ---- inq_mask_stats: maxima and counts, which do not depend on the order of combination ----

// One 64-byte vector of lanes. Counts are integers of the value's width (a block is far below 2^31), maxima
// are in the value's type: the widening to double in inq_range_add is exact and monotonic, so the maxima are
// the same. n is a multiple of the lane count. #other is what the two counts leave of n.
template <typename scalar_t>
struct RangeLanes {
  using count_t = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;
  static constexpr int kN = 64 / sizeof(scalar_t);
  scalar_t max_t[kN], max_q[kN];
  count_t n_t[kN], n_q[kN];
};

template <typename scalar_t>
NC_CPU_CLONES void range_lanes(int64_t n, const scalar_t* __restrict w, const scalar_t* __restrict m,
                               RangeLanes<scalar_t>* __restrict io) {
  using L = RangeLanes<scalar_t>;
  scalar_t max_t[L::kN], max_q[L::kN];
  typename L::count_t n_t[L::kN], n_q[L::kN];
  for (int j = 0; j < L::kN; ++j) {
    max_t[j] = io->max_t[j];
    max_q[j] = io->max_q[j];
    n_t[j] = io->n_t[j];
    n_q[j] = io->n_q[j];
  }
  for (int64_t i = 0; i < n; i += L::kN) {
    for (int j = 0; j < L::kN; ++j) {
      const scalar_t a = abs_value(w[i + j]);
      const bool t = m[i + j] == scalar_t(1);
      const bool q = m[i + j] == scalar_t(0);
      max_t[j] = (t & (a > max_t[j])) ? a : max_t[j];  // NaN never wins a comparison
      max_q[j] = (q & (a > max_q[j])) ? a : max_q[j];
      n_t[j] += t;
      n_q[j] += q;
    }
  }
  for (int j = 0; j < L::kN; ++j) {
    io->max_t[j] = max_t[j];
    io->max_q[j] = max_q[j];
    io->n_t[j] = n_t[j];
    io->n_q[j] = n_q[j];
  }
}

template <typename scalar_t>
void range_block(int64_t n, const scalar_t* w, const scalar_t* m, InqRangeAcc* out) {
  using L = RangeLanes<scalar_t>;
  L lanes;
  for (int j = 0; j < L::kN; ++j) {
    lanes.max_t[j] = lanes.max_q[j] = scalar_t(-1);
    lanes.n_t[j] = lanes.n_q[j] = 0;
  }
  const int64_t full = n / L::kN * L::kN;
  range_lanes<scalar_t>(full, w, m, &lanes);
  InqRangeAcc acc = inq_range_zero();
  for (int64_t i = full; i < n; ++i) inq_range_add(acc, static_cast<double>(w[i]), static_cast<double>(m[i]));
  int64_t n_t = 0, n_q = 0;
  for (int j = 0; j < L::kN; ++j) {
    InqRangeAcc lane = inq_range_zero();
    lane.max_t = static_cast<double>(lanes.max_t[j]);
    lane.max_q = static_cast<double>(lanes.max_q[j]);
    acc.merge(lane);
    n_t += lanes.n_t[j];
    n_q += lanes.n_q[j];
  }
  acc.n_t += static_cast<double>(n_t);
  acc.n_q += static_cast<double>(n_q);
  acc.n_other += static_cast<double>(full - n_t - n_q);
  *out = acc;
}

at::Tensor inq_mask_stats_cpu(const at::Tensor& weight, const at::Tensor& mask) {
  const char* op = "inq_mask_stats";
  check_floating(op, "weight", weight, false);
  check_like(op, "weight", weight, "mask", mask);
  const at::Tensor w = contiguous_in(weight);
  const at::Tensor m = contiguous_in(mask);
  const int64_t n = w.numel();
  const int64_t blocks = (n + cpu::kReduceBlock - 1) / cpu::kReduceBlock;
  std::vector<InqRangeAcc> partial(static_cast<size_t>(blocks), inq_range_zero());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "inq_mask_stats_cpu", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    cpu::for_each_block(n, [&](int64_t begin, int64_t end, int64_t b) {
      range_block<scalar_t>(end - begin, wp + begin, mp + begin, &partial[static_cast<size_t>(b)]);
    });
  });
  InqRangeAcc acc = inq_range_zero();
  for (const InqRangeAcc& p : partial) acc.merge(p);
  at::Tensor out = at::empty({5}, weight.options().dtype(at::kDouble));
  inq_range_finalize(acc, out.mutable_data_ptr<double>());
  return out;
}

// ---- inq_quantize_ ----

// The smallest scalar_t >= thr, so that `|v| >= thr` can be tested in the weight's type: for a float v,
// v >= thr (in double) exactly when v >= that value. NaN stays NaN (nothing is selected).
template <typename scalar_t>
scalar_t ceil_to(double thr) {
  scalar_t t = static_cast<scalar_t>(thr);
  if (static_cast<double>(t) < thr) t = std::nextafter(t, std::numeric_limits<scalar_t>::infinity());
  return t;
}

// Selected entries (mask == 1, |v| >= thr) whose rounding inq_round_pow2_bits settles exactly are done here,
// vectorized; the function returns whether any selected entry was left for the log() form (zeros, subnormals,
// non-finite values, the M == 1.5 boundaries), which keeps mask 1 until quantize_rest handles it.
template <typename scalar_t>
NC_CPU_CLONES bool quantize_loop(int64_t n, scalar_t* __restrict w, scalar_t* __restrict m, scalar_t thr,
                                 int n2) {
  using U = bits_t<scalar_t>;
  U rest = 0;  // an integer flag: a bool reduction stops GCC from vectorizing
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t v = w[i];
    const scalar_t mi = m[i];
    const U sel = (mi == scalar_t(1)) & (abs_value(v) >= thr);
    U r;
    const U exact = inq_round_pow2_bits(bit_cast<U>(v), n2, &r);
    const U done = sel & exact;
    w[i] = done ? bit_cast<scalar_t>(r) : v;
    m[i] = done ? scalar_t(0) : mi;
    rest |= sel & (exact ^ 1);
  }
  return rest != 0;
}

constexpr int64_t kQuantizeTile = 4096;

template <typename scalar_t>
void quantize_rest(int64_t n, scalar_t* w, scalar_t* m, double thr, int n2) {
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(w[i]);
    if (m[i] == scalar_t(1) && abs_value(v) >= thr) {
      w[i] = static_cast<scalar_t>(inq_round_pow2(v, n2));
      m[i] = scalar_t(0);
    }
  }
}

void inq_quantize_cpu(at::Tensor& weight, at::Tensor& mask, const at::Tensor& threshold, int64_t n2) {
  const char* op = "inq_quantize_";
  check_floating(op, "weight", weight, false);
  check_like(op, "weight", weight, "mask", mask);
  check_scalar(op, "threshold", threshold, weight.device());
  at::Tensor w = contiguous_in(weight);
  at::Tensor m = contiguous_in(mask);
  const double thr = threshold.item<double>();
  const int e_min = static_cast<int>(std::max<int64_t>(std::min<int64_t>(n2, 1 << 20), -(1 << 20)));
  const int64_t n = w.numel();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "inq_quantize_cpu", [&] {
    scalar_t* wp = w.mutable_data_ptr<scalar_t>();
    scalar_t* mp = m.mutable_data_ptr<scalar_t>();
    const scalar_t thr_s = ceil_to<scalar_t>(thr);
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      // Tiles, so that a rare entry left for the log form (an exact M = 1.5, about one float32 in 2^23)
      // costs a scalar pass over its tile only, not over the thread's whole share.
      for (int64_t t = begin; t < end; t += kQuantizeTile) {
        const int64_t len = std::min(kQuantizeTile, end - t);
        if (quantize_loop<scalar_t>(len, wp + t, mp + t, thr_s, e_min)) {
          quantize_rest<scalar_t>(len, wp + t, mp + t, thr, e_min);
        }
      }
    });
  });
  write_back(weight, w);
  write_back(mask, m);
}

// ---- inq_threshold: selection by radix ----
//
// In the order of kthvalue over where(mask == 1, |v|, +inf), taken on keys: the bits of |v| for mask == 1 and
// of +inf otherwise, compared as unsigned integers (the order of non-negative floats, with NaN above +inf, where
// kthvalue also puts it). The CUDA op (cuda/inq_kernels.cuh) selects in the same order, by radix passes. Pass 1 counts the keys' top 16 bits
// in per-chunk histograms; the bin holding the n_keep-th key is found from the totals; pass 2 copies that
// bin's keys (a small fraction: 1/128 of an octave for float32) and nth_element picks the answer among them.
// Two reads of weight and mask, no sort, no copy of the tensor; exact for any input, ties and NaN included.

constexpr int kBinBits = 16;
constexpr int64_t kBins = int64_t(1) << kBinBits;
constexpr int64_t kKeyTile = 256;
// Below this many entries one nth_element over a copy of the keys is cheaper than two histogram passes.
constexpr int64_t kSelectSmall = int64_t(1) << 15;

template <typename scalar_t>
struct Keys {
  using U = bits_t<scalar_t>;
  static constexpr int kShift = int(sizeof(U)) * 8 - kBinBits;
  static constexpr U kAbs = ~(U(1) << (sizeof(U) * 8 - 1));
  static U inf() { return bit_cast<U>(std::numeric_limits<scalar_t>::infinity()); }
};

template <typename scalar_t>
NC_CPU_CLONES void keys_loop(int64_t n, const scalar_t* __restrict w, const scalar_t* __restrict m,
                             bits_t<scalar_t>* __restrict key) {
  using K = Keys<scalar_t>;
  const typename K::U inf = K::inf();
  for (int64_t i = 0; i < n; ++i) {
    key[i] = m[i] == scalar_t(1) ? (bit_cast<typename K::U>(w[i]) & K::kAbs) : inf;
  }
}

// Histogram bin of each entry: the key's top kBinBits for mask == 1. Entries with another mask (key +inf, often
// a third of the tensor) go to kSpread extra bins in turn, kBins + i % kSpread: counting them all in the +inf
// bin would chain every third increment on the one before it (a store-to-load dependency per entry).
constexpr int64_t kSpread = 8;

template <typename scalar_t>
NC_CPU_CLONES void bins_loop(int64_t n, const scalar_t* __restrict w, const scalar_t* __restrict m,
                             uint32_t* __restrict bin) {
  using K = Keys<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t top = static_cast<uint32_t>((bit_cast<typename K::U>(w[i]) & K::kAbs) >> K::kShift);
    bin[i] = m[i] == scalar_t(1) ? top : static_cast<uint32_t>(kBins + (i & (kSpread - 1)));
  }
}

// n is a multiple of kSpread except at the end of a chunk, so `i % kSpread` may restart per tile: only the
// spreading changes, not the totals.
template <typename scalar_t>
void histogram(int64_t n, const scalar_t* w, const scalar_t* m, uint32_t* hist) {
  uint32_t bin[kKeyTile];
  for (int64_t t = 0; t < n; t += kKeyTile) {
    const int64_t len = std::min(kKeyTile, n - t);
    bins_loop<scalar_t>(len, w + t, m + t, bin);
    for (int64_t i = 0; i < len; ++i) ++hist[bin[i]];
  }
}

template <typename scalar_t>
NC_CPU_CLONES int64_t count_bin(int64_t n, const scalar_t* __restrict w, const scalar_t* __restrict m,
                                bits_t<scalar_t> bin) {
  using K = Keys<scalar_t>;
  const typename K::U inf = K::inf();
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const typename K::U key = m[i] == scalar_t(1) ? (bit_cast<typename K::U>(w[i]) & K::kAbs) : inf;
    count += (key >> K::kShift) == bin;
  }
  return count;
}

// Copies the keys whose top bits equal `bin` to out and returns how many. The bin holds a small fraction of
// the keys, so most tiles have none: they are only counted, at vector speed.
template <typename scalar_t>
int64_t gather_bin(int64_t n, const scalar_t* w, const scalar_t* m, bits_t<scalar_t> bin, bits_t<scalar_t>* out) {
  using K = Keys<scalar_t>;
  typename K::U key[kKeyTile];
  int64_t count = 0;
  for (int64_t t = 0; t < n; t += kKeyTile) {
    const int64_t len = std::min(kKeyTile, n - t);
    if (count_bin<scalar_t>(len, w + t, m + t, bin) == 0) continue;
    keys_loop<scalar_t>(len, w + t, m + t, key);
    for (int64_t i = 0; i < len; ++i) {
      if ((key[i] >> K::kShift) == bin) out[count++] = key[i];
    }
  }
  return count;
}

template <typename scalar_t>
at::Tensor threshold_select(const at::Tensor& w, const at::Tensor& m, int64_t k) {
  using K = Keys<scalar_t>;
  using U = typename K::U;
  const int64_t n = w.numel();
  const scalar_t* wp = w.const_data_ptr<scalar_t>();
  const scalar_t* mp = m.const_data_ptr<scalar_t>();
  U result;
  if (n <= kSelectSmall) {
    std::vector<U> keys(static_cast<size_t>(n));
    keys_loop<scalar_t>(n, wp, mp, keys.data());
    std::nth_element(keys.begin(), keys.begin() + k, keys.end());
    result = keys[static_cast<size_t>(k)];
  } else {
    // Chunks fixed before pass 1 and reused in pass 2, so each chunk's count in the chosen bin sizes its share
    // of the output; uint32 counts, so a chunk holds fewer than 2^32 entries.
    const int64_t max_chunk = int64_t(1) << 31;
    const int64_t chunks = std::max<int64_t>({1, std::min<int64_t>(at::get_num_threads(), n / kGrain),
                                              (n + max_chunk - 1) / max_chunk});
    const int64_t chunk = (n + chunks - 1) / chunks;
    constexpr int64_t kHist = kBins + kSpread;
    std::vector<uint32_t> hist(static_cast<size_t>(chunks * kHist), 0u);
    at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        const int64_t begin = c * chunk, end = std::min(n, begin + chunk);
        uint32_t* h = hist.data() + c * kHist;
        histogram<scalar_t>(end - begin, wp + begin, mp + begin, h);
        // The spread bins hold the entries with mask != 1, whose key is +inf.
        const uint32_t inf_bin = static_cast<uint32_t>(K::inf() >> K::kShift);
        for (int64_t s = kBins; s < kHist; ++s) h[inf_bin] += h[s];
      }
    });
    int64_t before = 0, bin = 0;
    for (;; ++bin) {
      int64_t in_bin = 0;
      for (int64_t c = 0; c < chunks; ++c) in_bin += hist[static_cast<size_t>(c * kHist + bin)];
      if (before + in_bin > k) break;
      before += in_bin;
    }
    std::vector<int64_t> offset(static_cast<size_t>(chunks + 1), 0);
    for (int64_t c = 0; c < chunks; ++c) offset[c + 1] = offset[c] + hist[static_cast<size_t>(c * kHist + bin)];
    std::vector<U> cand(static_cast<size_t>(offset[chunks]));
    at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        const int64_t begin = c * chunk, end = std::min(n, begin + chunk);
        const int64_t got = gather_bin<scalar_t>(end - begin, wp + begin, mp + begin, static_cast<U>(bin),
                                                 cand.data() + offset[c]);
        TORCH_INTERNAL_ASSERT(got == offset[c + 1] - offset[c], "inq_threshold: pass 2 found ", got,
                              " keys in bin ", bin, ", pass 1 counted ", offset[c + 1] - offset[c]);
      }
    });
    const auto nth = cand.begin() + (k - before);
    std::nth_element(cand.begin(), nth, cand.end());
    result = *nth;
  }
  return at::full({}, static_cast<double>(bit_cast<scalar_t>(result)), w.options());
}

at::Tensor inq_threshold_cpu(const at::Tensor& weight, const at::Tensor& mask, int64_t n_keep) {
  const char* op = "inq_threshold";
  check_floating(op, "weight", weight, false);
  check_like(op, "weight", weight, "mask", mask);
  TORCH_CHECK(n_keep >= 0, op, ": n_keep must be >= 0, got ", n_keep);
  if (n_keep >= weight.numel()) return at::full({}, std::numeric_limits<double>::infinity(), weight.options());
  const at::Tensor w = contiguous_in(weight);
  const at::Tensor m = contiguous_in(mask);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "inq_threshold_cpu", [&] {
    out = threshold_select<scalar_t>(w, m, n_keep);
  });
  return out;
}

}  // namespace
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CPU, m) {
  m.impl("inq_mask_stats", &netcompress::inq_mask_stats_cpu);
  m.impl("inq_threshold", &netcompress::inq_threshold_cpu);
  m.impl("inq_quantize_", &netcompress::inq_quantize_cpu);
}
