// Solver ops on the CPU: at::parallel_for loops over kernels/solver.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>

#include "../checks.h"
#include "../kernels/solver.h"

namespace netcompress {
namespace {

using namespace kernels;

constexpr int64_t kGrain = at::internal::GRAIN_SIZE;

void sgd_momentum_update_cpu(at::Tensor& grad, at::Tensor& history, const std::optional<at::Tensor>& mask,
                             double momentum, double local_rate) {
  const char* op = "sgd_momentum_update_";
  check_floating(op, "grad", grad, true);
  check_like(op, "grad", grad, "history", history);
  if (mask.has_value()) check_like(op, "grad", grad, "mask", *mask);
  at::Tensor g = contiguous_in(grad);
  at::Tensor h = contiguous_in(history);
  const at::Tensor m = mask.has_value() ? contiguous_in(*mask) : at::Tensor();
  const int64_t n = g.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "sgd_momentum_update_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t mom = static_cast<acc_t>(momentum);
    const acc_t rate = static_cast<acc_t>(local_rate);
    scalar_t* gp = g.mutable_data_ptr<scalar_t>();
    scalar_t* hp = h.mutable_data_ptr<scalar_t>();
    const scalar_t* mp = m.defined() ? m.const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t gi = static_cast<acc_t>(gp[i]);
        const acc_t hi = static_cast<acc_t>(hp[i]);
        const scalar_t v = static_cast<scalar_t>(
            mp ? sgd_momentum_masked(gi, hi, static_cast<acc_t>(mp[i]), mom, rate) : sgd_momentum(gi, hi, mom, rate));
        hp[i] = v;
        gp[i] = v;
      }
    });
  });
  write_back(grad, g);
  write_back(history, h);
}

}  // namespace
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CPU, m) {
  m.impl("sgd_momentum_update_", &netcompress::sgd_momentum_update_cpu);
}
