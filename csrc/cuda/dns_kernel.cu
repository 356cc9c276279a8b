// DNS ops on CUDA: launches of the kernels in dns_kernels.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <optional>

#include "../checks.h"
#include "dns_kernels.cuh"
#include "launch.h"

namespace netcompress {
namespace cuda {
namespace {

at::Tensor dns_masked_weight_cuda(const at::Tensor& weight, const at::Tensor& mask) {
  const char* op = "dns_masked_weight";
  check_floating(op, "weight", weight, true);
  check_like(op, "weight", weight, "mask", mask);
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = contiguous_in(weight);
  const at::Tensor m = contiguous_in(mask);
  at::Tensor out = at::empty(weight.sizes(), weight.options());
  const int64_t n = w.numel();
  if (n == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "dns_masked_weight_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dns_masked_weight_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
        n, w.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor dns_stats_cuda(const at::Tensor& weight, const at::Tensor& weight_mask,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& bias_mask) {
  const char* op = "dns_stats";
  check_weight_and_bias(op, weight, weight_mask, bias, bias_mask);
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = contiguous_in(weight);
  const at::Tensor wm = contiguous_in(weight_mask);
  at::Tensor b, bm;
  if (bias.has_value()) {
    b = contiguous_in(*bias);
    bm = contiguous_in(*bias_mask);
  }
  const int64_t nw = w.numel();
  const int64_t nb = b.defined() ? b.numel() : 0;
  at::Tensor out = at::empty({4}, weight.options().dtype(at::kDouble));
  const int blocks = blocks_for(nw + nb, kMaxReduceBlocks);
  ReduceScratch scratch = reduce_scratch(weight, blocks, sizeof(kernels::DnsStatsAcc));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "dns_stats_cuda", [&] {
    dns_stats_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        nw, w.const_data_ptr<scalar_t>(), wm.const_data_ptr<scalar_t>(), nb,
        nb > 0 ? b.const_data_ptr<scalar_t>() : nullptr, nb > 0 ? bm.const_data_ptr<scalar_t>() : nullptr,
        reinterpret_cast<kernels::DnsStatsAcc*>(scratch.partials.mutable_data_ptr<double>()),
        reinterpret_cast<unsigned int*>(scratch.ticket.mutable_data_ptr<int>()), out.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

void dns_update_mask_cuda(const at::Tensor& weight, at::Tensor& mask, const at::Tensor& threshold_low,
                          const at::Tensor& threshold_high, at::Tensor& masked_out) {
  const char* op = "dns_update_mask_";
  check_floating(op, "weight", weight, true);
  check_like(op, "weight", weight, "mask", mask);
  check_like(op, "weight", weight, "masked_out", masked_out);
  check_scalar(op, "threshold_low", threshold_low, weight.device());
  check_scalar(op, "threshold_high", threshold_high, weight.device());
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = contiguous_in(weight);
  at::Tensor m = contiguous_in(mask);
  at::Tensor out = contiguous_in(masked_out);
  const int64_t n = w.numel();
  if (n == 0) return;
  const ScalarArg low = scalar_arg(threshold_low);
  const ScalarArg high = scalar_arg(threshold_high);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "dns_update_mask_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dns_update_mask_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
        n, w.const_data_ptr<scalar_t>(), m.mutable_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), low.ptr,
        low.value, high.ptr, high.value);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  write_back(mask, m);
  write_back(masked_out, out);
}

void dns_splice_grad_cuda(at::Tensor& diff, const at::Tensor& mask, const at::Tensor& grad) {
  const char* op = "dns_splice_grad_";
  check_floating(op, "diff", diff, true);
  check_like(op, "diff", diff, "mask", mask);
  check_like(op, "diff", diff, "grad", grad);
  const c10::cuda::CUDAGuard guard(diff.device());
  at::Tensor d = contiguous_in(diff);
  const at::Tensor m = contiguous_in(mask);
  const at::Tensor g = contiguous_in(grad);
  const int64_t n = d.numel();
  if (n == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "dns_splice_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dns_splice_grad_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
        n, d.mutable_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  write_back(diff, d);
}

}  // namespace
}  // namespace cuda
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CUDA, m) {
  m.impl("dns_masked_weight", &netcompress::cuda::dns_masked_weight_cuda);
  m.impl("dns_stats", &netcompress::cuda::dns_stats_cuda);
  m.impl("dns_update_mask_", &netcompress::cuda::dns_update_mask_cuda);
  m.impl("dns_splice_grad_", &netcompress::cuda::dns_splice_grad_cuda);
}
