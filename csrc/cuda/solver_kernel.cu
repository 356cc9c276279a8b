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

template <typename scalar_t, typename acc_t, int V>
void launch_sgd_v(int64_t n, scalar_t* g, scalar_t* h, const scalar_t* m, acc_t momentum, acc_t rate,
                  cudaStream_t stream) {
  const int blocks = elementwise_blocks(n, V);
  if (m != nullptr) {
    sgd_momentum_update_kernel<scalar_t, acc_t, V, true><<<blocks, kThreads, 0, stream>>>(n, g, h, m, momentum, rate);
  } else {
    sgd_momentum_update_kernel<scalar_t, acc_t, V, false><<<blocks, kThreads, 0, stream>>>(n, g, h, m, momentum,
                                                                                           rate);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "sgd_momentum_update_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* gp = g.mutable_data_ptr<scalar_t>();
    scalar_t* hp = h.mutable_data_ptr<scalar_t>();
    const scalar_t* mp = m.defined() ? m.const_data_ptr<scalar_t>() : nullptr;
    const acc_t mom = static_cast<acc_t>(momentum), rate = static_cast<acc_t>(local_rate);
    if (all_aligned16(gp, hp) && (mp == nullptr || aligned16(mp))) {
      launch_sgd_v<scalar_t, acc_t, kPackOf<scalar_t>>(n, gp, hp, mp, mom, rate, stream);
    } else {
      launch_sgd_v<scalar_t, acc_t, 1>(n, gp, hp, mp, mom, rate, stream);
    }
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
