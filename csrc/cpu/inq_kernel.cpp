// INQ ops on the CPU: at::parallel_for loops over kernels/inq.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../composite.h"
#include "../kernels/inq.h"

namespace netcompress {
namespace {

using namespace kernels;

constexpr int64_t kGrain = at::internal::GRAIN_SIZE;
// One log() per selected entry: smaller grain than a pure memory-bound loop.
constexpr int64_t kQuantizeGrain = 4096;

at::Tensor inq_mask_stats_cpu(const at::Tensor& weight, const at::Tensor& mask) {
  const char* op = "inq_mask_stats";
  check_floating(op, "weight", weight, false);
  check_like(op, "weight", weight, "mask", mask);
  const at::Tensor w = contiguous_in(weight);
  const at::Tensor m = contiguous_in(mask);
  const int64_t n = w.numel();
  // Maxima and counts do not depend on the order of combination: any split gives the same result.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (n + kGrain - 1) / kGrain));
  const int64_t chunk = (n + chunks - 1) / std::max<int64_t>(chunks, 1);
  std::vector<InqRangeAcc> partial(static_cast<size_t>(chunks), inq_range_zero());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "inq_mask_stats_cpu", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        InqRangeAcc& acc = partial[static_cast<size_t>(c)];
        const int64_t end = std::min(n, (c + 1) * chunk);
        for (int64_t i = c * chunk; i < end; ++i) {
          inq_range_add(acc, static_cast<double>(wp[i]), static_cast<double>(mp[i]));
        }
      }
    });
  });
  InqRangeAcc acc = inq_range_zero();
  for (const InqRangeAcc& p : partial) acc.merge(p);
  at::Tensor out = at::empty({5}, weight.options().dtype(at::kDouble));
  inq_range_finalize(acc, out.mutable_data_ptr<double>());
  return out;
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
    at::parallel_for(0, n, kQuantizeGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const double v = static_cast<double>(wp[i]);
        if (mp[i] == scalar_t(1) && abs_value(v) >= thr) {
          wp[i] = static_cast<scalar_t>(inq_round_pow2(v, e_min));
          mp[i] = scalar_t(0);
        }
      }
    });
  });
  write_back(weight, w);
  write_back(mask, m);
}

}  // namespace
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CPU, m) {
  m.impl("inq_mask_stats", &netcompress::inq_mask_stats_cpu);
  m.impl("inq_threshold", &netcompress::inq_threshold_composite);
  m.impl("inq_quantize_", &netcompress::inq_quantize_cpu);
}
