// Quantization ops on the CPU (recipes-spec §4.5, §4.6, §5.2): at::parallel_for over vectorized loops (loops.h)
// of the rules in kernels/quant.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "../kernels/dns.h"
#include "../kernels/quant.h"
#include "../quant_checks.h"
#include "loops.h"

namespace netcompress {
namespace {

using namespace kernels;
using cpu::kGrain;

// ---- loops (one instruction-set clone each; __restrict: the arrays never overlap) ----

// kScaled: ActQuant's α·clamp(round(x/α)); otherwise IntQuant's clamp(round(x)).
template <typename scalar_t, typename acc_t, bool kScaled>
NC_CPU_CLONES void act_loop(int64_t n, const scalar_t* __restrict x, scalar_t* __restrict out, acc_t alpha, acc_t lo,
                            acc_t hi) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t xi = static_cast<acc_t>(x[i]);
    out[i] = static_cast<scalar_t>(kScaled ? quant_dequant(xi, alpha, lo, hi) : int_quant(xi, lo, hi));
  }
}

template <typename scalar_t, typename acc_t, bool kScaled>
NC_CPU_CLONES void act_backward_loop(int64_t n, const scalar_t* __restrict g, const scalar_t* __restrict x,
                                     scalar_t* __restrict out, acc_t alpha, acc_t lo, acc_t hi) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t xi = static_cast<acc_t>(x[i]);
    const acc_t r = kScaled ? quant_round(xi, alpha) : round_half_even(xi);
    out[i] = static_cast<scalar_t>(quant_ste(static_cast<acc_t>(g[i]), r, lo, hi));
  }
}

// One row segment of the weight quantizer: v = w ⊙ m (kMasked), then α·q (kDequant) or q.
template <typename scalar_t, typename acc_t, bool kMasked, bool kDequant>
NC_CPU_CLONES void weight_loop(int64_t n, const scalar_t* __restrict w, const scalar_t* __restrict m,
                               scalar_t* __restrict out, acc_t alpha, acc_t lo, acc_t hi) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t wi = static_cast<acc_t>(w[i]);
    const acc_t v = kMasked ? dns_masked(wi, static_cast<acc_t>(m[i])) : wi;
    out[i] = static_cast<scalar_t>(kDequant ? quant_dequant(v, alpha, lo, hi) : quant_code(v, alpha, lo, hi));
  }
}

// float16/bfloat16 go through float tiles (loops.h); the arithmetic is the same, in float.
template <typename scalar_t, typename acc_t, bool kScaled>
void act_range(int64_t n, const scalar_t* x, scalar_t* out, acc_t alpha, acc_t lo, acc_t hi) {
  if constexpr (sizeof(scalar_t) == 2) {
    float xt[cpu::kTile], ot[cpu::kTile];
    for (int64_t t = 0; t < n; t += cpu::kTile) {
      const int64_t len = std::min(cpu::kTile, n - t);
      cpu::widen(len, x + t, xt);
      act_loop<float, float, kScaled>(len, xt, ot, alpha, lo, hi);
      cpu::narrow(len, ot, out + t);
    }
  } else {
    act_loop<scalar_t, acc_t, kScaled>(n, x, out, alpha, lo, hi);
  }
}

template <typename scalar_t, typename acc_t, bool kScaled>
void act_backward_range(int64_t n, const scalar_t* g, const scalar_t* x, scalar_t* out, acc_t alpha, acc_t lo,
                        acc_t hi) {
  if constexpr (sizeof(scalar_t) == 2) {
    float gt[cpu::kTile], xt[cpu::kTile], ot[cpu::kTile];
    for (int64_t t = 0; t < n; t += cpu::kTile) {
      const int64_t len = std::min(cpu::kTile, n - t);
      cpu::widen(len, g + t, gt);
      cpu::widen(len, x + t, xt);
      act_backward_loop<float, float, kScaled>(len, gt, xt, ot, alpha, lo, hi);
      cpu::narrow(len, ot, out + t);
    }
  } else {
    act_backward_loop<scalar_t, acc_t, kScaled>(n, g, x, out, alpha, lo, hi);
  }
}

template <typename scalar_t, typename acc_t, bool kMasked, bool kDequant>
void weight_range(int64_t n, const scalar_t* w, const scalar_t* m, scalar_t* out, acc_t alpha, acc_t lo, acc_t hi) {
  if constexpr (sizeof(scalar_t) == 2) {
    float wt[cpu::kTile], mt[cpu::kTile], ot[cpu::kTile];
    for (int64_t t = 0; t < n; t += cpu::kTile) {
      const int64_t len = std::min(cpu::kTile, n - t);
      cpu::widen(len, w + t, wt);
      if constexpr (kMasked) cpu::widen(len, m + t, mt);
      weight_loop<float, float, kMasked, kDequant>(len, wt, mt, ot, alpha, lo, hi);
      cpu::narrow(len, ot, out + t);
    }
  } else {
    weight_loop<scalar_t, acc_t, kMasked, kDequant>(n, w, m, out, alpha, lo, hi);
  }
}

// ---- ops ----

template <bool kScaled>
at::Tensor act_forward(const char* op, const at::Tensor& x, const at::Tensor* alpha, double low, double high) {
  check_act_args(op, x, nullptr, alpha, low, high);
  const at::Tensor xc = contiguous_in(x);
  at::Tensor out = at::empty(x.sizes(), x.options());
  const double a = alpha != nullptr ? alpha->item<double>() : 1.0;
  const int64_t n = xc.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "quant_act_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* outp = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      act_range<scalar_t, acc_t, kScaled>(end - begin, xp + begin, outp + begin, static_cast<acc_t>(a),
                                          static_cast<acc_t>(low), static_cast<acc_t>(high));
    });
  });
  return out;
}

template <bool kScaled>
at::Tensor act_backward(const char* op, const at::Tensor& grad, const at::Tensor& x, const at::Tensor* alpha,
                        double low, double high) {
  check_act_args(op, x, &grad, alpha, low, high);
  const at::Tensor gc = contiguous_in(grad);
  const at::Tensor xc = contiguous_in(x);
  at::Tensor out = at::empty(x.sizes(), x.options());
  const double a = alpha != nullptr ? alpha->item<double>() : 1.0;
  const int64_t n = xc.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "quant_act_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* outp = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      act_backward_range<scalar_t, acc_t, kScaled>(end - begin, gp + begin, xp + begin, outp + begin,
                                                   static_cast<acc_t>(a), static_cast<acc_t>(low),
                                                   static_cast<acc_t>(high));
    });
  });
  return out;
}

at::Tensor act_quant_cpu(const at::Tensor& x, const at::Tensor& alpha, double low, double high) {
  return act_forward<true>("act_quant", x, &alpha, low, high);
}

at::Tensor act_quant_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& alpha, double low,
                                  double high) {
  return act_backward<true>("_act_quant_backward", grad, x, &alpha, low, high);
}

at::Tensor int_quant_cpu(const at::Tensor& x, double low, double high) {
  return act_forward<false>("int_quant", x, nullptr, low, high);
}

at::Tensor int_quant_backward_cpu(const at::Tensor& grad, const at::Tensor& x, double low, double high) {
  return act_backward<false>("_int_quant_backward", grad, x, nullptr, low, high);
}

// Rows are weight.size(0) consecutive runs of K = numel / rows entries. Threads take element ranges (so a few
// long rows still spread over the cores); each range is cut at row boundaries, where α changes.
template <bool kDequant>
at::Tensor weight_op(const char* op, const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                     const at::Tensor& alpha, double low, double high) {
  check_weight_args(op, weight, mask, alpha, low, high);
  const at::Tensor w = contiguous_in(weight);
  const at::Tensor m = mask.has_value() ? contiguous_in(*mask) : at::Tensor();
  const at::Tensor a = contiguous_in(alpha);
  at::Tensor out = at::empty(weight.sizes(), weight.options());
  const int64_t n = w.numel();
  if (n == 0) return out;
  const int64_t row_len = n / w.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "quant_weight_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.defined() ? m.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    scalar_t* outp = out.mutable_data_ptr<scalar_t>();
    const acc_t lo = static_cast<acc_t>(low), hi = static_cast<acc_t>(high);
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        const int64_t row = i / row_len;
        const int64_t stop = std::min(end, (row + 1) * row_len);
        const acc_t alpha_r = static_cast<acc_t>(ap[row]);
        if (mp != nullptr) {
          weight_range<scalar_t, acc_t, true, kDequant>(stop - i, wp + i, mp + i, outp + i, alpha_r, lo, hi);
        } else {
          weight_range<scalar_t, acc_t, false, kDequant>(stop - i, wp + i, nullptr, outp + i, alpha_r, lo, hi);
        }
        i = stop;
      }
    });
  });
  return out;
}

at::Tensor quant_weight_cpu(const at::Tensor& weight, const std::optional<at::Tensor>& mask, const at::Tensor& alpha,
                            double low, double high) {
  return weight_op<true>("quant_weight", weight, mask, alpha, low, high);
}

at::Tensor quant_weight_codes_cpu(const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                                  const at::Tensor& alpha, double low, double high) {
  return weight_op<false>("quant_weight_codes", weight, mask, alpha, low, high);
}

}  // namespace
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CPU, m) {
  m.impl("act_quant", &netcompress::act_quant_cpu);
  m.impl("_act_quant_backward", &netcompress::act_quant_backward_cpu);
  m.impl("int_quant", &netcompress::int_quant_cpu);
  m.impl("_int_quant_backward", &netcompress::int_quant_backward_cpu);
  m.impl("quant_weight", &netcompress::quant_weight_cpu);
  m.impl("quant_weight_codes", &netcompress::quant_weight_codes_cpu);
}
