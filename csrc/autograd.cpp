// Autograd for the differentiable netcompress ops, in C++ (TORCH_LIBRARY_IMPL(netcompress, Autograd)), as
// torchvision registers its ops': the training step calls them several times per layer, and a C++ autograd
// node costs a fraction of a Python `register_autograd` one (no Python on the hot path, issue 20). The
// formulas are the ops' documented ones (netcompress/ops/*.py); fake kernels stay registered from Python.
#include <torch/autograd.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

namespace netcompress {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// ---- dns_masked_weight: W ⊙ M; the gradient reaches W unmasked ("splicing", reference-semantics §2.4) ----
class DnsMaskedWeight : public torch::autograd::Function<DnsMaskedWeight> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto f = op<at::Tensor(const at::Tensor&, const at::Tensor&)>("netcompress::dns_masked_weight");
    return f.call(weight, mask);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    return {grad[0], at::Tensor()};
  }
};

at::Tensor dns_masked_weight_autograd(const at::Tensor& weight, const at::Tensor& mask) {
  if (!(at::GradMode::is_enabled() && (weight.requires_grad() || mask.requires_grad()))) {
    // No graph to record (the layers' masked-weight refresh, inference): straight to the backend kernel, without
    // the autograd node that Function::apply makes on every call.
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto f = op<at::Tensor(const at::Tensor&, const at::Tensor&)>("netcompress::dns_masked_weight");
    return f.call(weight, mask);
  }
  return DnsMaskedWeight::apply(weight, mask);
}

// ---- max_pool2d: ATen's gradient of max_pool2d_with_indices (the same indices, so the same scatter), by
// netcompress::_max_pool2d_backward (bit-identical; one pass on the CPU where the windows tile the input) ----
class MaxPool2d : public torch::autograd::Function<MaxPool2d> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& self, c10::IntArrayRef kernel_size,
                               c10::IntArrayRef stride, c10::IntArrayRef padding, bool ceil_mode) {
    at::Tensor values, indices;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      static auto f = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef,
                                                            c10::IntArrayRef, bool)>("netcompress::max_pool2d");
      std::tie(values, indices) = f.call(self, kernel_size, stride, padding, ceil_mode);
    }
    ctx->save_for_backward({self, indices});
    ctx->saved_data["kernel_size"] = kernel_size.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->mark_non_differentiable({indices});
    // No zero gradient materialized for the int64 indices (a tensor of the output's size every step).
    ctx->set_materialize_grads(false);
    return {values, indices};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    if (!grad[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const auto kernel_size = ctx->saved_data["kernel_size"].toIntVector();
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const bool ceil_mode = ctx->saved_data["ceil_mode"].toBool();
    static auto b = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::IntArrayRef,
                                  c10::IntArrayRef, c10::IntArrayRef, bool)>("netcompress::_max_pool2d_backward");
    at::Tensor gx = b.call(grad[0], saved[0], saved[1], kernel_size, stride, padding, ceil_mode);
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> max_pool2d_autograd(const at::Tensor& self, c10::IntArrayRef kernel_size,
                                                       c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                       bool ceil_mode) {
  auto out = MaxPool2d::apply(self, kernel_size, stride, padding, ceil_mode);
  return {out[0], out[1]};
}

// ---- act_quant: straight-through estimator, dy/dx = [low <= round(x/α) <= high] (recipes-spec §4.5) ----
class ActQuant : public torch::autograd::Function<ActQuant> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& alpha, double low,
                            double high) {
    ctx->save_for_backward({x, alpha});
    ctx->saved_data["low"] = low;
    ctx->saved_data["high"] = high;
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto f = op<at::Tensor(const at::Tensor&, const at::Tensor&, double, double)>("netcompress::act_quant");
    return f.call(x, alpha, low, high);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    static auto b = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double)>(
        "netcompress::_act_quant_backward");
    at::Tensor gx = b.call(grad[0], saved[0], saved[1], ctx->saved_data["low"].toDouble(),
                           ctx->saved_data["high"].toDouble());
    return {gx, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor act_quant_autograd(const at::Tensor& x, const at::Tensor& alpha, double low, double high) {
  return ActQuant::apply(x, alpha, low, high);
}

// ---- int_quant: the same straight-through estimator on clamp(round(x), low, high) (recipes-spec §5.2) ----
class IntQuant : public torch::autograd::Function<IntQuant> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, double low, double high) {
    ctx->save_for_backward({x});
    ctx->saved_data["low"] = low;
    ctx->saved_data["high"] = high;
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto f = op<at::Tensor(const at::Tensor&, double, double)>("netcompress::int_quant");
    return f.call(x, low, high);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    static auto b = op<at::Tensor(const at::Tensor&, const at::Tensor&, double, double)>(
        "netcompress::_int_quant_backward");
    at::Tensor gx = b.call(grad[0], saved[0], ctx->saved_data["low"].toDouble(), ctx->saved_data["high"].toDouble());
    return {gx, at::Tensor(), at::Tensor()};
  }
};

at::Tensor int_quant_autograd(const at::Tensor& x, double low, double high) {
  return IntQuant::apply(x, low, high);
}

// ---- quant_weight: dW = dWq, straight through the quantizer and the mask (recipes-spec §4.6, §5.2) ----
class QuantWeight : public torch::autograd::Function<QuantWeight> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                            const at::Tensor& alpha, double low, double high) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto f = op<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, double,
                                  double)>("netcompress::quant_weight");
    return f.call(weight, mask, alpha, low, high);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    return {grad[0], at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor quant_weight_autograd(const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                                 const at::Tensor& alpha, double low, double high) {
  return QuantWeight::apply(weight, mask, alpha, low, high);
}

}  // namespace
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, Autograd, m) {
  m.impl("dns_masked_weight", &netcompress::dns_masked_weight_autograd);
  m.impl("max_pool2d", &netcompress::max_pool2d_autograd);
  m.impl("act_quant", &netcompress::act_quant_autograd);
  m.impl("int_quant", &netcompress::int_quant_autograd);
  m.impl("quant_weight", &netcompress::quant_weight_autograd);
}
