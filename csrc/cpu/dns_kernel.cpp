// DNS ops on the CPU: at::parallel_for loops over kernels/dns.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../checks.h"
#include "../kernels/dns.h"

namespace netcompress {
namespace {

using namespace kernels;

// Element-wise loops are memory bound: hand each thread at least this many elements.
constexpr int64_t kGrain = at::internal::GRAIN_SIZE;
// dns_stats sums fixed-size blocks and adds the block sums in order, so the result does not depend on the
// number of threads.
constexpr int64_t kStatsBlock = 1 << 16;

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
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        op_[i] = static_cast<scalar_t>(dns_masked(static_cast<acc_t>(wp[i]), static_cast<acc_t>(mp[i])));
      }
    });
  });
  return out;
}

template <typename scalar_t>
void dns_stats_segment(const scalar_t* w, const scalar_t* m, int64_t begin, int64_t end, bool is_bias,
                       DnsStatsAcc& acc) {
  for (int64_t i = begin; i < end; ++i) {
    dns_stats_add(acc, static_cast<double>(w[i]), static_cast<double>(m[i]), is_bias);
  }
}

at::Tensor dns_stats_cpu(const at::Tensor& weight, const at::Tensor& weight_mask,
                         const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& bias_mask) {
  const char* op = "dns_stats";
  check_floating(op, "weight", weight, true);
  check_like(op, "weight", weight, "weight_mask", weight_mask);
  TORCH_CHECK(bias.has_value() == bias_mask.has_value(), op, ": bias and bias_mask must be given together, got ",
              bias.has_value() ? "a bias without bias_mask" : "bias_mask without a bias");
  const at::Tensor w = contiguous_in(weight);
  const at::Tensor wm = contiguous_in(weight_mask);
  at::Tensor b, bm;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == weight.scalar_type(), op, ": bias must have the weight's dtype ",
                weight.scalar_type(), ", got ", bias->scalar_type());
    TORCH_CHECK(bias->device() == weight.device(), op, ": bias must be on the weight's device ", weight.device(),
                ", got ", bias->device());
    check_like(op, "bias", *bias, "bias_mask", *bias_mask);
    b = contiguous_in(*bias);
    bm = contiguous_in(*bias_mask);
  }
  const int64_t nw = w.numel();
  const int64_t nb = b.defined() ? b.numel() : 0;
  const int64_t total = nw + nb;
  const int64_t blocks = (total + kStatsBlock - 1) / kStatsBlock;
  std::vector<DnsStatsAcc> partial(static_cast<size_t>(blocks), dns_stats_zero());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "dns_stats_cpu", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* wmp = wm.const_data_ptr<scalar_t>();
    const scalar_t* bp = nb > 0 ? b.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* bmp = nb > 0 ? bm.const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
      for (int64_t blk = first; blk < last; ++blk) {
        const int64_t begin = blk * kStatsBlock;
        const int64_t end = std::min(total, begin + kStatsBlock);
        DnsStatsAcc& acc = partial[static_cast<size_t>(blk)];
        if (begin < nw) dns_stats_segment(wp, wmp, begin, std::min(end, nw), false, acc);
        if (end > nw) dns_stats_segment(bp, bmp, std::max(begin, nw) - nw, end - nw, true, acc);
      }
    });
  });

  DnsStatsAcc acc = dns_stats_zero();
  for (const DnsStatsAcc& p : partial) acc.merge(p);
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
    const acc_t lo = static_cast<acc_t>(low);
    const acc_t hi = static_cast<acc_t>(high);
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* mp = m.mutable_data_ptr<scalar_t>();
    scalar_t* outp = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t wi = static_cast<acc_t>(wp[i]);
        const acc_t mi = dns_mask_rule(wi, static_cast<acc_t>(mp[i]), lo, hi);
        mp[i] = static_cast<scalar_t>(mi);
        outp[i] = static_cast<scalar_t>(dns_masked(wi, mi));
      }
    });
  });
  write_back(mask, m);
  write_back(masked_out, out);
}

}  // namespace
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CPU, m) {
  m.impl("dns_masked_weight", &netcompress::dns_masked_weight_cpu);
  m.impl("dns_stats", &netcompress::dns_stats_cpu);
  m.impl("dns_update_mask_", &netcompress::dns_update_mask_cpu);
}
