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

// ---- launches: 16-byte packs where every pointer allows them, else the scalar loop ----

template <typename scalar_t, typename acc_t>
void launch_masked_weight(int64_t n, const scalar_t* w, const scalar_t* m, scalar_t* out, cudaStream_t stream) {
  constexpr int V = kPackOf<scalar_t>;
  if (all_aligned16(w, m, out)) {
    dns_masked_weight_kernel<scalar_t, acc_t, V><<<elementwise_blocks(n, V), kThreads, 0, stream>>>(n, w, m, out);
  } else {
    dns_masked_weight_kernel<scalar_t, acc_t, 1><<<elementwise_blocks(n, 1), kThreads, 0, stream>>>(n, w, m, out);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int V>
void launch_stats_v(const at::Tensor& like, int64_t nw, const scalar_t* w, const scalar_t* wm, int64_t nb,
                    const scalar_t* b, const scalar_t* bm, double* out, cudaStream_t stream) {
  static const int per_sm = resident_blocks_per_sm(dns_stats_kernel<scalar_t, V>);
  const int blocks = reduction_blocks(nw + nb, V, per_sm);
  const Scratch scratch = make_scratch(like, blocks, sizeof(kernels::DnsStatsAcc), false);
  dns_stats_kernel<scalar_t, V><<<blocks, kThreads, 0, stream>>>(
      nw, w, wm, nb, b, bm, static_cast<kernels::DnsStatsAcc*>(scratch.partials), scratch.ticket, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t>
void launch_update_mask(int64_t n, const scalar_t* w, scalar_t* m, scalar_t* out, const ScalarRef& low,
                        const ScalarRef& high, cudaStream_t stream) {
  constexpr int V = kPackOf<scalar_t>;
  if (all_aligned16(w, m, out)) {
    dns_update_mask_kernel<scalar_t, acc_t, V><<<elementwise_blocks(n, V), kThreads, 0, stream>>>(n, w, m, out, low,
                                                                                                   high);
  } else {
    dns_update_mask_kernel<scalar_t, acc_t, 1><<<elementwise_blocks(n, 1), kThreads, 0, stream>>>(n, w, m, out, low,
                                                                                                   high);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t>
void launch_splice(int64_t n, scalar_t* d, const scalar_t* m, const scalar_t* g, cudaStream_t stream) {
  constexpr int V = kPackOf<scalar_t>;
  if (all_aligned16(d, m, g)) {
    dns_splice_grad_kernel<scalar_t, acc_t, V><<<elementwise_blocks(n, V), kThreads, 0, stream>>>(n, d, m, g);
  } else {
    dns_splice_grad_kernel<scalar_t, acc_t, 1><<<elementwise_blocks(n, 1), kThreads, 0, stream>>>(n, d, m, g);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- ops ----

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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "dns_masked_weight_cuda", [&] {
    launch_masked_weight<scalar_t, at::opmath_type<scalar_t>>(n, w.const_data_ptr<scalar_t>(),
                                                              m.const_data_ptr<scalar_t>(),
                                                              out.mutable_data_ptr<scalar_t>(), stream);
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "dns_stats_cuda", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* wmp = wm.const_data_ptr<scalar_t>();
    const scalar_t* bp = nb > 0 ? b.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* bmp = nb > 0 ? bm.const_data_ptr<scalar_t>() : nullptr;
    double* outp = out.mutable_data_ptr<double>();
    if (all_aligned16(wp, wmp)) {
      launch_stats_v<scalar_t, kPackOf<scalar_t>>(w, nw, wp, wmp, nb, bp, bmp, outp, stream);
    } else {
      launch_stats_v<scalar_t, 1>(w, nw, wp, wmp, nb, bp, bmp, outp, stream);
    }
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "dns_update_mask_cuda", [&] {
    launch_update_mask<scalar_t, at::opmath_type<scalar_t>>(n, w.const_data_ptr<scalar_t>(),
                                                            m.mutable_data_ptr<scalar_t>(),
                                                            out.mutable_data_ptr<scalar_t>(), low.ref, high.ref,
                                                            stream);
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "dns_splice_grad_cuda", [&] {
    launch_splice<scalar_t, at::opmath_type<scalar_t>>(n, d.mutable_data_ptr<scalar_t>(),
                                                       m.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
                                                       stream);
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
