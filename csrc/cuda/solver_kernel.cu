// Solver ops on CUDA: launches of the kernels in solver_kernels.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <optional>

#include "../checks.h"
#include "launch.h"
#include "solver_kernels.cuh"

namespace netcompress {
namespace cuda {
namespace {

void sgd_momentum_update_cuda(at::Tensor& grad, at::Tensor& history, const std::optional<at::Tensor>& mask,
                              double momentum, double local_rate) {
  const char* op = "sgd_momentum_update_";
  check_floating(op, "grad", grad, true);
  check_like(op, "grad", grad, "history", history);
  if (mask.has_value()) check_like(op, "grad", grad, "mask", *mask);
  const c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor g = contiguous_in(grad);
  at::Tensor h = contiguous_in(history);
  const at::Tensor m = mask.has_value() ? contiguous_in(*mask) : at::Tensor();
  const int64_t n = g.numel();
  if (n == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "sgd_momentum_update_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    sgd_momentum_update_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
        n, g.mutable_data_ptr<scalar_t>(), h.mutable_data_ptr<scalar_t>(),
        m.defined() ? m.const_data_ptr<scalar_t>() : nullptr, static_cast<acc_t>(momentum),
        static_cast<acc_t>(local_rate));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  write_back(grad, g);
  write_back(history, h);
}

}  // namespace
}  // namespace cuda
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CUDA, m) {
  m.impl("sgd_momentum_update_", &netcompress::cuda::sgd_momentum_update_cuda);
}
