// INQ ops on CUDA: launches of the kernels in inq_kernels.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../checks.h"
#include "inq_kernels.cuh"
#include "launch.h"

namespace netcompress {
namespace cuda {
namespace {

static_assert(kRadixBins <= kScratchHistBins, "the scratch buffer holds the select histogram");
static_assert(sizeof(SelectState) <= kStateBytes, "the scratch buffer holds the select state");

template <typename scalar_t, int V>
void launch_mask_stats_v(const at::Tensor& like, int64_t n, const scalar_t* w, const scalar_t* m, double* out,
                         cudaStream_t stream) {
  static const int per_sm = resident_blocks_per_sm(inq_mask_stats_kernel<scalar_t, V>);
  const int blocks = reduction_blocks(n, V, per_sm);
  const Scratch scratch = make_scratch(like, blocks, sizeof(kernels::InqRangeAcc), false);
  inq_mask_stats_kernel<scalar_t, V><<<blocks, kThreads, 0, stream>>>(
      n, w, m, static_cast<kernels::InqRangeAcc*>(scratch.partials), scratch.ticket, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int V>
void launch_quantize_v(int64_t n, scalar_t* w, scalar_t* m, const ScalarRef& thr, int n2, cudaStream_t stream) {
  inq_quantize_kernel<scalar_t, V><<<elementwise_blocks(n, V), kThreads, 0, stream>>>(n, w, m, thr, n2);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The passes of for_each_select_pass (inq_kernels.cuh), each one launch over the whole tensor.
template <typename scalar_t, int V>
void launch_select_v(const at::Tensor& like, int64_t n, const scalar_t* w, const scalar_t* m, int64_t k,
                     scalar_t* out, cudaStream_t stream) {
  static const int per_sm = resident_blocks_per_sm(inq_select_pass_kernel<scalar_t, V>);
  const int blocks = reduction_blocks(n, V, per_sm);
  const Scratch scratch = make_scratch(like, blocks, 0, true);
  auto* state = static_cast<SelectState*>(scratch.state);
  for_each_select_pass<scalar_t>([&](int shift, int first, int last) {
    inq_select_pass_kernel<scalar_t, V><<<blocks, kThreads, 0, stream>>>(
        n, w, m, static_cast<long long>(k), shift, first, last, state, scratch.hist, scratch.ticket, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor inq_mask_stats_cuda(const at::Tensor& weight, const at::Tensor& mask) {
  const char* op = "inq_mask_stats";
  check_floating(op, "weight", weight, false);
  check_like(op, "weight", weight, "mask", mask);
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = contiguous_in(weight);
  const at::Tensor m = contiguous_in(mask);
  const int64_t n = w.numel();
  at::Tensor out = at::empty({5}, weight.options().dtype(at::kDouble));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "inq_mask_stats_cuda", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    double* outp = out.mutable_data_ptr<double>();
    if (all_aligned16(wp, mp)) {
      launch_mask_stats_v<scalar_t, kPackOf<scalar_t>>(w, n, wp, mp, outp, stream);
    } else {
      launch_mask_stats_v<scalar_t, 1>(w, n, wp, mp, outp, stream);
    }
  });
  return out;
}

// §3.4: the n_keep-th smallest |v| among mask == 1 (0-based), +inf when n_keep >= #{mask == 1}; the same order
// and value as the CPU op (see inq_kernels.cuh). No host sync: the result stays on the device.
at::Tensor inq_threshold_cuda(const at::Tensor& weight, const at::Tensor& mask, int64_t n_keep) {
  const char* op = "inq_threshold";
  check_floating(op, "weight", weight, false);
  check_like(op, "weight", weight, "mask", mask);
  TORCH_CHECK(n_keep >= 0, op, ": n_keep must be >= 0, got ", n_keep);
  const c10::cuda::CUDAGuard guard(weight.device());
  const int64_t n = weight.numel();
  if (n_keep >= n) return at::full({}, std::numeric_limits<double>::infinity(), weight.options());
  const at::Tensor w = contiguous_in(weight);
  const at::Tensor m = contiguous_in(mask);
  at::Tensor out = at::empty({}, weight.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "inq_threshold_cuda", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    scalar_t* outp = out.mutable_data_ptr<scalar_t>();
    if (all_aligned16(wp, mp)) {
      launch_select_v<scalar_t, kPackOf<scalar_t>>(w, n, wp, mp, n_keep, outp, stream);
    } else {
      launch_select_v<scalar_t, 1>(w, n, wp, mp, n_keep, outp, stream);
    }
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "inq_quantize_cuda", [&] {
    scalar_t* wp = w.mutable_data_ptr<scalar_t>();
    scalar_t* mp = m.mutable_data_ptr<scalar_t>();
    if (all_aligned16(wp, mp)) {
      launch_quantize_v<scalar_t, kPackOf<scalar_t>>(n, wp, mp, thr.ref, e_min, stream);
    } else {
      launch_quantize_v<scalar_t, 1>(n, wp, mp, thr.ref, e_min, stream);
    }
  });
  write_back(weight, w);
  write_back(mask, m);
}

}  // namespace
}  // namespace cuda
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CUDA, m) {
  m.impl("inq_mask_stats", &netcompress::cuda::inq_mask_stats_cuda);
  m.impl("inq_threshold", &netcompress::cuda::inq_threshold_cuda);
  m.impl("inq_quantize_", &netcompress::cuda::inq_quantize_cuda);
}
