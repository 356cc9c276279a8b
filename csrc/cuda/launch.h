// Launch helpers shared by the CUDA op files (torch side).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <utility>

namespace netcompress {
namespace cuda {

// A threshold kept on the device is read by the kernel through a float64 pointer (a device-side cast, no
// sync); a CPU value is passed by value.
struct ScalarArg {
  at::Tensor holder;
  const double* ptr = nullptr;
  double value = 0.0;
};

inline ScalarArg scalar_arg(const at::Tensor& t) {
  ScalarArg a;
  if (t.device().is_cpu()) {
    a.value = t.item<double>();
  } else {
    a.holder = t.to(at::kDouble).contiguous();
    a.ptr = a.holder.const_data_ptr<double>();
  }
  return a;
}

// Scratch for the single-pass reductions in reduce.cuh, from the caching allocator: `blocks` partials of
// `bytes_per_partial` and a zeroed ticket counter.
struct ReduceScratch {
  at::Tensor partials;
  at::Tensor ticket;
};

inline ReduceScratch reduce_scratch(const at::Tensor& like, int blocks, size_t bytes_per_partial) {
  ReduceScratch s;
  const int64_t doubles = static_cast<int64_t>((bytes_per_partial + sizeof(double) - 1) / sizeof(double));
  s.partials = at::empty({blocks * doubles}, like.options().dtype(at::kDouble));
  s.ticket = at::zeros({1}, like.options().dtype(at::kInt));
  return s;
}

}  // namespace cuda
}  // namespace netcompress
