// DNS ops on the CPU: at::parallel_for over vectorized loops (loops.h) of the rules in kernels/dns.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../kernels/dns.h"
#include "f16c.h"
#include "loops.h"

namespace netcompress {
namespace {

using namespace kernels;
using cpu::kGrain;
using cpu::kLanes;

// ---- loops (one instruction-set clone each; __restrict: the arrays never overlap) ----

template <typename scalar_t, typename acc_t>
NC_CPU_CLONES_STREAM void masked_weight_loop(int64_t n, const scalar_t* __restrict w,
                                             const scalar_t* __restrict m, scalar_t* __restrict out) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<scalar_t>(dns_masked(static_cast<acc_t>(w[i]), static_cast<acc_t>(m[i])));
  }
}

template <typename scalar_t, typename acc_t>
NC_CPU_CLONES void update_mask_loop(int64_t n, const scalar_t* __restrict w, scalar_t* __restrict m,
                                    scalar_t* __restrict out, acc_t low, acc_t high) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t wi = static_cast<acc_t>(w[i]);
    const acc_t mi = dns_mask_rule(wi, static_cast<acc_t>(m[i]), low, high);
    m[i] = static_cast<scalar_t>(mi);
    out[i] = static_cast<scalar_t>(dns_masked(wi, mi));
  }
}

template <typename scalar_t, typename acc_t>
NC_CPU_CLONES void splice_grad_loop(int64_t n, scalar_t* __restrict diff, const scalar_t* __restrict m,
                                    const scalar_t* __restrict g) {
  for (int64_t i = 0; i < n; ++i) {
    diff[i] = static_cast<scalar_t>(
        dns_splice(static_cast<acc_t>(diff[i]), static_cast<acc_t>(m[i]), static_cast<acc_t>(g[i])));
  }
}

// float16/bfloat16 go through float tiles (loops.h); the arithmetic is the same, in float.
template <typename scalar_t, typename acc_t>
void masked_weight_range(int64_t n, const scalar_t* w, const scalar_t* m, scalar_t* out) {
#ifdef NC_HAVE_F16C
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    if (cpu::f16c::available()) {
      const int64_t done = cpu::f16c::masked_weight(n, w, m, out);
      n -= done, w += done, m += done, out += done;
    }
  }
#endif
  if constexpr (sizeof(scalar_t) == 2) {
    float wt[cpu::kTile], mt[cpu::kTile], ot[cpu::kTile];
    for (int64_t t = 0; t < n; t += cpu::kTile) {
      const int64_t len = std::min(cpu::kTile, n - t);
      cpu::widen(len, w + t, wt);
      cpu::widen(len, m + t, mt);
      masked_weight_loop<float, float>(len, wt, mt, ot);
      cpu::narrow(len, ot, out + t);
    }
  } else {
    masked_weight_loop<scalar_t, acc_t>(n, w, m, out);
  }
}

template <typename scalar_t, typename acc_t>
void update_mask_range(int64_t n, const scalar_t* w, scalar_t* m, scalar_t* out, acc_t low, acc_t high) {
#ifdef NC_HAVE_F16C
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    if (cpu::f16c::available()) {
      const int64_t done = cpu::f16c::update_mask(n, w, m, out, low, high);
      n -= done, w += done, m += done, out += done;
    }
  }
#endif
  if constexpr (sizeof(scalar_t) == 2) {
    float wt[cpu::kTile], mt[cpu::kTile], ot[cpu::kTile];
    for (int64_t t = 0; t < n; t += cpu::kTile) {
      const int64_t len = std::min(cpu::kTile, n - t);
      cpu::widen(len, w + t, wt);
      cpu::widen(len, m + t, mt);
      update_mask_loop<float, float>(len, wt, mt, ot, low, high);
      cpu::narrow(len, mt, m + t);
      cpu::narrow(len, ot, out + t);
    }
  } else {
    update_mask_loop<scalar_t, acc_t>(n, w, m, out, low, high);
  }
}

template <typename scalar_t, typename acc_t>
void splice_grad_range(int64_t n, scalar_t* diff, const scalar_t* m, const scalar_t* g) {
#ifdef NC_HAVE_F16C
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    if (cpu::f16c::available()) {
      const int64_t done = cpu::f16c::splice_grad(n, diff, m, g);
      n -= done, diff += done, m += done, g += done;
    }
  }
#endif
  if constexpr (sizeof(scalar_t) == 2) {
    float dt[cpu::kTile], mt[cpu::kTile], gt[cpu::kTile];
    for (int64_t t = 0; t < n; t += cpu::kTile) {
      const int64_t len = std::min(cpu::kTile, n - t);
      cpu::widen(len, diff + t, dt);
      cpu::widen(len, m + t, mt);
      cpu::widen(len, g + t, gt);
      splice_grad_loop<float, float>(len, dt, mt, gt);
      cpu::narrow(len, dt, diff + t);
    }
  } else {
    splice_grad_loop<scalar_t, acc_t>(n, diff, m, g);
  }
}

// Lane j of the sums takes the entries j, j + kLanes, ...; n is a multiple of kLanes. The lanes are copied
// in and out so that they live in registers (the loop body is then vectorized across the lanes).
template <typename scalar_t>
NC_CPU_CLONES void stats_lanes(int64_t n, const scalar_t* __restrict w, const scalar_t* __restrict m,
                               double* __restrict s1_io, double* __restrict s2_io, int64_t* __restrict nz_io) {
  double s1[kLanes], s2[kLanes];
  int64_t nz[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    s1[j] = s1_io[j];
    s2[j] = s2_io[j];
    nz[j] = nz_io[j];
  }
  for (int64_t i = 0; i < n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const DnsStatsTerm t = dns_stats_term(static_cast<double>(w[i + j]), static_cast<double>(m[i + j]));
      s1[j] += t.abs_v;
      s2[j] += t.v_w;
      nz[j] += t.nonzero;
    }
  }
  for (int j = 0; j < kLanes; ++j) {
    s1_io[j] = s1[j];
    s2_io[j] = s2[j];
    nz_io[j] = nz[j];
  }
}

// The sums of one block, added in a fixed order: lanes first, then a tree over the lanes. The order is in the
// source, so every instruction-set clone (and any thread count) gives the same bits.
template <typename scalar_t>
void stats_block(int64_t n, const scalar_t* w, const scalar_t* m, double* out3) {
  double s1[kLanes] = {}, s2[kLanes] = {};
  int64_t nz[kLanes] = {};
  int64_t full = n / kLanes * kLanes;
#ifdef NC_HAVE_F16C
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    if (cpu::f16c::available()) {
      cpu::f16c::stats_lanes(full, w, m, s1, s2, nz);
      w += full, m += full, n -= full;
      full = 0;
    }
  }
#endif
  if constexpr (sizeof(scalar_t) == 2) {
    // float16/bfloat16: widened to float a tile at a time by a vectorized loop (exact), then summed as float.
    float wt[cpu::kTile], mt[cpu::kTile];
    for (int64_t t = 0; t < full; t += cpu::kTile) {
      const int64_t len = std::min(cpu::kTile, full - t);
      cpu::widen(len, w + t, wt);
      cpu::widen(len, m + t, mt);
      stats_lanes<float>(len, wt, mt, s1, s2, nz);
    }
  } else {
    stats_lanes<scalar_t>(full, w, m, s1, s2, nz);
  }
  if (full < n) {
    // The tail, padded with w = m = 0, which adds +0 to every sum.
    scalar_t wt[kLanes], mt[kLanes];
    for (int j = 0; j < kLanes; ++j) {
      wt[j] = full + j < n ? w[full + j] : scalar_t(0);
      mt[j] = full + j < n ? m[full + j] : scalar_t(0);
    }
    stats_lanes<scalar_t>(kLanes, wt, mt, s1, s2, nz);
  }
  static_assert(kLanes == 8, "the fold below is written for 8 lanes");
  out3[0] = ((s1[0] + s1[1]) + (s1[2] + s1[3])) + ((s1[4] + s1[5]) + (s1[6] + s1[7]));
  out3[1] = ((s2[0] + s2[1]) + (s2[2] + s2[3])) + ((s2[4] + s2[5]) + (s2[6] + s2[7]));
  int64_t count = 0;
  for (int j = 0; j < kLanes; ++j) count += nz[j];
  out3[2] = static_cast<double>(count);
}

// Block sums of one blob (weight or bias), added in block order into acc.
template <typename scalar_t>
void stats_blob(const scalar_t* w, const scalar_t* m, int64_t n, bool is_bias, DnsStatsAcc& acc) {
  const int64_t blocks = (n + cpu::kReduceBlock - 1) / cpu::kReduceBlock;
  std::vector<double> partial(static_cast<size_t>(3 * blocks));
  cpu::for_each_block(n, [&](int64_t begin, int64_t end, int64_t b) {
    stats_block<scalar_t>(end - begin, w + begin, m + begin, partial.data() + 3 * b);
  });
  for (int64_t b = 0; b < blocks; ++b) {
    acc.s1 += partial[3 * b];
    acc.s2 += partial[3 * b + 1];
    (is_bias ? acc.n_bias : acc.n_weight) += partial[3 * b + 2];
  }
}

// ---- ops ----

at::Tensor dns_masked_weight_cpu(const at::Tensor& weight, const at::Tensor& mask) {
  const char* op = "dns_masked_weight";
  check_floating(op, "weight", weight, true);
  check_like(op, "weight", weight, "mask", mask);
  const at::Tensor w = contiguous_in(weight);
  const at::Tensor m = contiguous_in(mask);
  at::Tensor out = at::empty(weight.sizes(), weight.options());
  const int64_t n = w.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "dns_masked_weight_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    scalar_t* outp = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      masked_weight_range<scalar_t, acc_t>(end - begin, wp + begin, mp + begin, outp + begin);
    });
  });
  return out;
}

at::Tensor dns_stats_cpu(const at::Tensor& weight, const at::Tensor& weight_mask,
                         const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& bias_mask) {
  const char* op = "dns_stats";
  check_weight_and_bias(op, weight, weight_mask, bias, bias_mask);
  const at::Tensor w = contiguous_in(weight);
  const at::Tensor wm = contiguous_in(weight_mask);
  at::Tensor b, bm;
  if (bias.has_value()) {
    b = contiguous_in(*bias);
    bm = contiguous_in(*bias_mask);
  }
  DnsStatsAcc acc = dns_stats_zero();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "dns_stats_cpu", [&] {
    stats_blob<scalar_t>(w.const_data_ptr<scalar_t>(), wm.const_data_ptr<scalar_t>(), w.numel(), false, acc);
    if (b.defined()) {
      stats_blob<scalar_t>(b.const_data_ptr<scalar_t>(), bm.const_data_ptr<scalar_t>(), b.numel(), true, acc);
    }
  });
  at::Tensor out = at::empty({4}, weight.options().dtype(at::kDouble));
  dns_stats_finalize(acc, out.mutable_data_ptr<double>());
  return out;
}

void dns_update_mask_cpu(const at::Tensor& weight, at::Tensor& mask, const at::Tensor& threshold_low,
                         const at::Tensor& threshold_high, at::Tensor& masked_out) {
  const char* op = "dns_update_mask_";
  check_floating(op, "weight", weight, true);
  check_like(op, "weight", weight, "mask", mask);
  check_like(op, "weight", weight, "masked_out", masked_out);
  check_scalar(op, "threshold_low", threshold_low, weight.device());
  check_scalar(op, "threshold_high", threshold_high, weight.device());
  const at::Tensor w = contiguous_in(weight);
  at::Tensor m = contiguous_in(mask);
  at::Tensor out = contiguous_in(masked_out);
  const double low = threshold_low.item<double>();
  const double high = threshold_high.item<double>();
  const int64_t n = w.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "dns_update_mask_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* mp = m.mutable_data_ptr<scalar_t>();
    scalar_t* outp = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      update_mask_range<scalar_t, acc_t>(end - begin, wp + begin, mp + begin, outp + begin,
                                        static_cast<acc_t>(low), static_cast<acc_t>(high));
    });
  });
  write_back(mask, m);
  write_back(masked_out, out);
}

void dns_splice_grad_cpu(at::Tensor& diff, const at::Tensor& mask, const at::Tensor& grad) {
  const char* op = "dns_splice_grad_";
  check_floating(op, "diff", diff, true);
  check_like(op, "diff", diff, "mask", mask);
  check_like(op, "diff", diff, "grad", grad);
  at::Tensor d = contiguous_in(diff);
  const at::Tensor m = contiguous_in(mask);
  const at::Tensor g = contiguous_in(grad);
  const int64_t n = d.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "dns_splice_grad_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* dp = d.mutable_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      splice_grad_range<scalar_t, acc_t>(end - begin, dp + begin, mp + begin, gp + begin);
    });
  });
  write_back(diff, d);
}

}  // namespace
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CPU, m) {
  m.impl("dns_masked_weight", &netcompress::dns_masked_weight_cpu);
  m.impl("dns_stats", &netcompress::dns_stats_cpu);
  m.impl("dns_update_mask_", &netcompress::dns_update_mask_cpu);
  m.impl("dns_splice_grad_", &netcompress::dns_splice_grad_cpu);
}
