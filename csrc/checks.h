// Argument checks and small helpers shared by the CPU and CUDA implementations.
// Every message starts with the op name and says what was expected and what came.
#pragma once

#include <ATen/ATen.h>

#include <optional>
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

// The DNS statistics' (weight, weight_mask[, bias, bias_mask]) arguments.
inline void check_weight_and_bias(const char* op, const at::Tensor& weight, const at::Tensor& weight_mask,
                                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& bias_mask) {
  check_floating(op, "weight", weight, true);
  check_like(op, "weight", weight, "weight_mask", weight_mask);
  TORCH_CHECK(bias.has_value() == bias_mask.has_value(), op, ": bias and bias_mask must be given together, got ",
              bias.has_value() ? "a bias without bias_mask" : "bias_mask without a bias");
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == weight.scalar_type(), op, ": bias must have the weight's dtype ",
                weight.scalar_type(), ", got ", bias->scalar_type());
    TORCH_CHECK(bias->device() == weight.device(), op, ": bias must be on the weight's device ", weight.device(),
                ", got ", bias->device());
    check_like(op, "bias", *bias, "bias_mask", *bias_mask);
  }
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
