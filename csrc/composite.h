// Ops that are ATen compositions, registered under both CPU and CUDA (each backend file registers this same
// function next to its own kernels).
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <tuple>

#include "checks.h"

namespace netcompress {

// §3.4: thr = sorted(|v| over mask == 1, ascending)[n_keep]. Entries with other mask values are replaced by
// +inf, which sorts after every finite |v|, so kthvalue over the whole tensor picks among the mask-1 entries
// with a static output shape and no host sync. With n_keep >= #{mask == 1} the result is +inf, which selects
// no finite weight (the reference skips the step when nothing is to be updated).
inline at::Tensor inq_threshold_composite(const at::Tensor& weight, const at::Tensor& mask, int64_t n_keep) {
  const char* op = "inq_threshold";
  check_floating(op, "weight", weight, false);
  check_like(op, "weight", weight, "mask", mask);
  TORCH_CHECK(n_keep >= 0, op, ": n_keep must be >= 0, got ", n_keep);
  const double inf = std::numeric_limits<double>::infinity();
  if (n_keep >= weight.numel()) return at::full({}, inf, weight.options());
  const at::Tensor key = at::where(mask.eq(1), weight.abs(), at::Scalar(inf)).reshape({-1});
  return std::get<0>(key.kthvalue(n_keep + 1));
}

// The MAX pooling op on backends without their own kernel (CUDA: ATen's kernel is the fast one there).
inline std::tuple<at::Tensor, at::Tensor> max_pool2d_composite(const at::Tensor& self, at::IntArrayRef kernel_size,
                                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                                              bool ceil_mode) {
  return at::max_pool2d_with_indices(self, kernel_size, stride, padding, {1, 1}, ceil_mode);
}

}  // namespace netcompress
