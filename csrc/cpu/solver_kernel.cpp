// Solver ops on the CPU: at::parallel_for over vectorized loops (loops.h) of the rule in kernels/solver.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <type_traits>

#include "../checks.h"
#include "../kernels/solver.h"
#include "f16c.h"
#include "loops.h"

namespace netcompress {
namespace {

using namespace kernels;
using cpu::kGrain;

template <typename scalar_t, typename acc_t>
NC_CPU_CLONES void sgd_loop(int64_t n, scalar_t* __restrict g, scalar_t* __restrict h, acc_t momentum,
                            acc_t local_rate) {
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t v = static_cast<scalar_t>(
        sgd_momentum(static_cast<acc_t>(g[i]), static_cast<acc_t>(h[i]), momentum, local_rate));
    h[i] = v;
    g[i] = v;
  }
}

template <typename scalar_t, typename acc_t>
NC_CPU_CLONES void sgd_masked_loop(int64_t n, scalar_t* __restrict g, scalar_t* __restrict h,
                                   const scalar_t* __restrict m, acc_t momentum, acc_t local_rate) {
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t v = static_cast<scalar_t>(sgd_momentum_masked(
        static_cast<acc_t>(g[i]), static_cast<acc_t>(h[i]), static_cast<acc_t>(m[i]), momentum, local_rate));
    h[i] = v;
    g[i] = v;
  }
}

// float16/bfloat16 go through float tiles (loops.h); the arithmetic is the same, in float. mask may be null.
template <typename scalar_t, typename acc_t>
void sgd_range(int64_t n, scalar_t* g, scalar_t* h, const scalar_t* m, acc_t momentum, acc_t local_rate) {
#ifdef NC_HAVE_F16C
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    if (cpu::f16c::available()) {
      const int64_t done = cpu::f16c::sgd(n, g, h, m, momentum, local_rate);
      n -= done, g += done, h += done;
      if (m) m += done;
    }
  }
#endif
  if constexpr (sizeof(scalar_t) == 2) {
    float gt[cpu::kTile], ht[cpu::kTile], mt[cpu::kTile];
    for (int64_t t = 0; t < n; t += cpu::kTile) {
      const int64_t len = std::min(cpu::kTile, n - t);
      cpu::widen(len, g + t, gt);
      cpu::widen(len, h + t, ht);
      if (m) {
        cpu::widen(len, m + t, mt);
        sgd_masked_loop<float, float>(len, gt, ht, mt, momentum, local_rate);
      } else {
        sgd_loop<float, float>(len, gt, ht, momentum, local_rate);
      }
      cpu::narrow(len, ht, h + t);
      cpu::narrow(len, gt, g + t);
    }
  } else if (m) {
    sgd_masked_loop<scalar_t, acc_t>(n, g, h, m, momentum, local_rate);
  } else {
    sgd_loop<scalar_t, acc_t>(n, g, h, momentum, local_rate);
  }
}

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
      sgd_range<scalar_t, acc_t>(end - begin, gp + begin, hp + begin, mp ? mp + begin : nullptr, mom, rate);
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
