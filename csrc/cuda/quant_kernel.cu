// Quantization ops on CUDA (recipes-spec §4.5, §4.6, §5.2): launches of the kernels in quant_kernels.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <optional>

#include "../quant_checks.h"
#include "launch.h"
#include "quant_kernels.cuh"

namespace netcompress {
namespace cuda {
namespace {

template <bool kScaled>
at::Tensor act_forward(const char* op, const at::Tensor& x, const at::Tensor* alpha, double low, double high) {
  check_act_args(op, x, nullptr, alpha, low, high);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = contiguous_in(x);
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int64_t n = xc.numel();
  if (n == 0) return out;
  ScalarArg a;
  if (alpha != nullptr) a = scalar_arg(*alpha);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "quant_act_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    act_quant_kernel<scalar_t, acc_t, kScaled><<<elementwise_blocks(n, 1), kThreads, 0, stream>>>(
        n, xc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), a.ref, static_cast<acc_t>(low),
        static_cast<acc_t>(high));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

template <bool kScaled>
at::Tensor act_backward(const char* op, const at::Tensor& grad, const at::Tensor& x, const at::Tensor* alpha,
                        double low, double high) {
  check_act_args(op, x, &grad, alpha, low, high);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor gc = contiguous_in(grad);
  const at::Tensor xc = contiguous_in(x);
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int64_t n = xc.numel();
  if (n == 0) return out;
  ScalarArg a;
  if (alpha != nullptr) a = scalar_arg(*alpha);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "quant_act_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    act_quant_backward_kernel<scalar_t, acc_t, kScaled><<<elementwise_blocks(n, 1), kThreads, 0, stream>>>(
        n, gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), a.ref,
        static_cast<acc_t>(low), static_cast<acc_t>(high));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor act_quant_cuda(const at::Tensor& x, const at::Tensor& alpha, double low, double high) {
  return act_forward<true>("act_quant", x, &alpha, low, high);
}

at::Tensor act_quant_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& alpha, double low,
                                   double high) {
  return act_backward<true>("_act_quant_backward", grad, x, &alpha, low, high);
}

at::Tensor int_quant_cuda(const at::Tensor& x, double low, double high) {
  return act_forward<false>("int_quant", x, nullptr, low, high);
}

at::Tensor int_quant_backward_cuda(const at::Tensor& grad, const at::Tensor& x, double low, double high) {
  return act_backward<false>("_int_quant_backward", grad, x, nullptr, low, high);
}

template <bool kDequant>
at::Tensor weight_op(const char* op, const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                     const at::Tensor& alpha, double low, double high) {
  check_weight_args(op, weight, mask, alpha, low, high);
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = contiguous_in(weight);
  const at::Tensor m = mask.has_value() ? contiguous_in(*mask) : at::Tensor();
  const at::Tensor a = contiguous_in(alpha);
  at::Tensor out = at::empty(weight.sizes(), weight.options());
  const int64_t n = w.numel();
  if (n == 0) return out;
  const int64_t row_len = n / w.size(0);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "quant_weight_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    quant_weight_kernel<scalar_t, acc_t, kDequant><<<elementwise_blocks(n, 1), kThreads, 0, stream>>>(
        n, row_len, w.const_data_ptr<scalar_t>(), m.defined() ? m.const_data_ptr<scalar_t>() : nullptr,
        a.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), static_cast<acc_t>(low),
        static_cast<acc_t>(high));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor quant_weight_cuda(const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                             const at::Tensor& alpha, double low, double high) {
  return weight_op<true>("quant_weight", weight, mask, alpha, low, high);
}

at::Tensor quant_weight_codes_cuda(const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                                   const at::Tensor& alpha, double low, double high) {
  return weight_op<false>("quant_weight_codes", weight, mask, alpha, low, high);
}

}  // namespace
}  // namespace cuda
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CUDA, m) {
  m.impl("act_quant", &netcompress::cuda::act_quant_cuda);
  m.impl("_act_quant_backward", &netcompress::cuda::act_quant_backward_cuda);
  m.impl("int_quant", &netcompress::cuda::int_quant_cuda);
  m.impl("_int_quant_backward", &netcompress::cuda::int_quant_backward_cuda);
  m.impl("quant_weight", &netcompress::cuda::quant_weight_cuda);
  m.impl("quant_weight_codes", &netcompress::cuda::quant_weight_codes_cuda);
}
