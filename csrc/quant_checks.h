// Argument checks of the quantization ops, shared by the CPU and CUDA implementations (checks.h style: every
// message starts with the op name and says what was expected and what came).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>

#include "checks.h"

namespace netcompress {

inline void check_range(const char* op, double low, double high) {
  TORCH_CHECK(!std::isnan(low) && !std::isnan(high) && low <= high, op, ": low must not exceed high, got ", low,
              " and ", high);
}

// act_quant / int_quant forward and backward: x floating; grad (backward) like x; alpha one value.
inline void check_act_args(const char* op, const at::Tensor& x, const at::Tensor* grad, const at::Tensor* alpha,
                           double low, double high) {
  check_floating(op, "x", x, true);
  if (grad != nullptr) check_like(op, "x", x, "grad", *grad);
  if (alpha != nullptr) check_scalar(op, "alpha", *alpha, x.device());
  check_range(op, low, high);
}

// quant_weight / quant_weight_codes: weight (rows, ...) floating, mask like weight, alpha (rows,) of the weight's
// dtype and device: one scale per row (output channel).
inline void check_weight_args(const char* op, const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                              const at::Tensor& alpha, double low, double high) {
  check_floating(op, "weight", weight, true);
  TORCH_CHECK(weight.dim() >= 1, op, ": weight must have a row (output channel) axis, got a 0-dim tensor");
  if (mask.has_value()) check_like(op, "weight", weight, "mask", *mask);
  TORCH_CHECK(alpha.dim() == 1 && alpha.size(0) == weight.size(0), op,
              ": alpha must hold one scale per row of weight, shape [", weight.size(0), "], got ", alpha.sizes());
  TORCH_CHECK(alpha.scalar_type() == weight.scalar_type(), op, ": alpha must have the weight's dtype ",
              weight.scalar_type(), ", got ", alpha.scalar_type());
  TORCH_CHECK(alpha.device() == weight.device(), op, ": alpha must be on the weight's device ", weight.device(),
              ", got ", alpha.device());
  check_range(op, low, high);
}

}  // namespace netcompress
