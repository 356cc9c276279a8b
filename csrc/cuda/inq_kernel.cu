// INQ ops on CUDA: launches of the kernels in inq_kernels.cuh; inq_threshold is the shared ATen composition.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "../composite.h"
#include "inq_kernels.cuh"
#include "launch.h"

namespace netcompress {
namespace cuda {
namespace {

at::Tensor inq_mask_stats_cuda(const at::Tensor& weight, const at::Tensor& mask) {
  const char* op = "inq_mask_stats";
  check_floating(op, "weight", weight, false);
  check_like(op, "weight", weight, "mask", mask);
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = contiguous_in(weight);
  const at::Tensor m = contiguous_in(mask);
  const int64_t n = w.numel();
  at::Tensor out = at::empty({5}, weight.options().dtype(at::kDouble));
  const int blocks = blocks_for(n, kMaxReduceBlocks);
  ReduceScratch scratch = reduce_scratch(weight, blocks, sizeof(kernels::InqRangeAcc));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "inq_mask_stats_cuda", [&] {
    inq_mask_stats_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        n, w.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(),
        reinterpret_cast<kernels::InqRangeAcc*>(scratch.partials.mutable_data_ptr<double>()),
        reinterpret_cast<unsigned int*>(scratch.ticket.mutable_data_ptr<int>()), out.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

void inq_quantize_cuda(at::Tensor& weight, at::Tensor& mask, const at::Tensor& threshold, int64_t n2) {
  const char* op = "inq_quantize_";
  check_floating(op, "weight", weight, false);
  check_like(op, "weight", weight, "mask", mask);
  check_scalar(op, "threshold", threshold, weight.device());
  const c10::cuda::CUDAGuard guard(weight.device());
  at::Tensor w = contiguous_in(weight);
  at::Tensor m = contiguous_in(mask);
  const int64_t n = w.numel();
  if (n == 0) return;
  const ScalarArg thr = scalar_arg(threshold);
  const int e_min = static_cast<int>(std::max<int64_t>(std::min<int64_t>(n2, 1 << 20), -(1 << 20)));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "inq_quantize_cuda", [&] {
    inq_quantize_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        n, w.mutable_data_ptr<scalar_t>(), m.mutable_data_ptr<scalar_t>(), thr.ptr, thr.value, e_min);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  write_back(weight, w);
  write_back(mask, m);
}

}  // namespace
}  // namespace cuda
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CUDA, m) {
  m.impl("inq_mask_stats", &netcompress::cuda::inq_mask_stats_cuda);
  m.impl("inq_threshold", &netcompress::inq_threshold_composite);
  m.impl("inq_quantize_", &netcompress::cuda::inq_quantize_cuda);
}
