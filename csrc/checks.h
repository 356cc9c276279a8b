// Argument checks and small helpers shared by the CPU and CUDA implementations.
// Every message starts with the op name and says what was expected and what came.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace netcompress {

inline void check_floating(const char* op, const char* name, const at::Tensor& t, bool allow_reduced) {
  const auto st = t.scalar_type();
  const bool ok = st == at::kFloat || st == at::kDouble ||
                  (allow_reduced && (st == at::kHalf || st == at::kBFloat16));
  TORCH_CHECK(ok, op, ": ", name, " must be ", allow_reduced ? "float16, bfloat16, float32 or float64" :
              "float32 or float64", ", got ", st);
}

// b must match a in shape, dtype and device.
inline void check_like(const char* op, const char* na, const at::Tensor& a, const char* nb, const at::Tensor& b) {
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": ", na, " and ", nb, " must have the same shape, got ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", na, " and ", nb, " must have the same dtype, got ",
              a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), op, ": ", na, " and ", nb, " must be on the same device, got ", a.device(),
              " and ", b.device());
}

// A one-element floating tensor on `device` or on the CPU (a CPU value is read on the host, with no sync).
inline void check_scalar(const char* op, const char* name, const at::Tensor& t, const at::Device& device) {
  TORCH_CHECK(t.numel() == 1, op, ": ", name, " must hold one value, got shape ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating tensor, got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == device || t.device().is_cpu(), op, ": ", name, " must be on ", device,
              " or the CPU, got ", t.device());
}

// Kernels run on contiguous memory: a non-contiguous argument is copied in, and written back if mutated.
inline at::Tensor contiguous_in(const at::Tensor& t) {
  return t.contiguous();
}

inline void write_back(at::Tensor& target, const at::Tensor& computed) {
  if (!target.is_same(computed)) target.copy_(computed);
}

}  // namespace netcompress
