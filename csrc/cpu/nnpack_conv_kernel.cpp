// Stride-1 2-D convolution (F.conv2d's cross-correlation) by NNPACK's transform algorithms (FFT or Winograd
// tiles, `nnp_convolution_algorithm_auto`), through ATen's `_nnpack_spatial_convolution`, with the batch split
// over ATen's threads.
//
// Why: oneDNN computes a convolution as a direct (GEMM-like) product, bounded by this core's multiply-add rate;
// with channel counts off its SIMD blocks (LeNet's conv2, 20 -> 50) it reaches ~70 % of it. NNPACK's 8×8 FFT
// tiles do a 5×5 kernel's 4×4 output block with a fraction of the multiplications (LeNet's conv2 on one core:
// forward 2.87 -> 1.42 ms, data gradient 3.91 -> 2.10, weight gradient 3.08 -> 1.67; benchmarks/RESULTS.md).
// The layer (layers/vision.py, cpu_fft_conv) decides where; the gradients are convolutions of this op too.
//
// Threads: ATen creates NNPACK's thread pool at NNPACK's first call, with at::get_num_threads() threads, for the
// life of the process, and NNPACK spreads one call's tiles over it (on a 2-core machine no faster than one
// thread). This op instead gives each ATen (OpenMP) thread a slice of the batch and makes the pool with one
// thread before NNPACK's first call, so NNPACK runs on the calling thread, without the pool's lock. NNPACK's
// result for a sample does not depend on the batch around it nor on the pool's size (tests/ops/test_conv_ops.py
// asserts the bits at 1, 2 and 3 threads), so the values are the same on any number of threads.
//
// An output channel whose kernel is all zeros is its bias, exactly and without computing it (see below).
#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <vector>

namespace netcompress {
namespace {

// NNPACK initialised (`_nnpack_available` runs nnp_initialize once; `_nnpack_spatial_convolution` does not), and
// its pool made with one thread where this is NNPACK's first use in the process.
void nnpack_ready() {
  TORCH_CHECK(at::_nnpack_available(),
              "netcompress::nnpack_conv2d: NNPACK is not available (this PyTorch was built without it, or it does "
              "not support this CPU)");
  static std::once_flag once;
  std::call_once(once, [] {
#if AT_PARALLEL_OPENMP
    // (with ATen's native thread pool, changing the thread count after parallel work only warns and does nothing)
    if (at::in_parallel_region()) return;  // cannot change the thread count here: NNPACK keeps its own choice
    const int threads = at::get_num_threads();
    at::set_num_threads(1);
    try {
      at::_nnpack_spatial_convolution(at::zeros({2, 1, 4, 4}), at::zeros({1, 1, 3, 3}), std::nullopt, {0, 0},
                                      {1, 1});
    } catch (...) {
      at::set_num_threads(threads);
      throw;
    }
    at::set_num_threads(threads);
#endif
  });
}

at::Tensor nnpack_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef padding) {
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, "netcompress::nnpack_conv2d: x (N, C, H, W) and weight "
              "(O, C, kH, kW) must be 4-D, got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat &&
                  (!bias || bias->scalar_type() == at::kFloat),
              "netcompress::nnpack_conv2d: float32 only, got ", x.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(x.size(1) == weight.size(1), "netcompress::nnpack_conv2d: x has ", x.size(1),
              " channels, weight expects ", weight.size(1));
  TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == weight.size(0)),
              "netcompress::nnpack_conv2d: bias must have ", weight.size(0), " elements");
  TORCH_CHECK(weight.size(2) <= 16 && weight.size(3) <= 16, "netcompress::nnpack_conv2d: NNPACK's FFT tiles take "
              "kernels of at most 16x16, got ", weight.sizes().slice(2));
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0 && padding[0] < weight.size(2) &&
                  padding[1] < weight.size(3),
              "netcompress::nnpack_conv2d: padding must be two values each >= 0 and below the kernel size ",
              weight.sizes().slice(2), ", got ", padding);
  const int64_t n = x.size(0), out_h = x.size(2) + 2 * padding[0] - weight.size(2) + 1,
                out_w = x.size(3) + 2 * padding[1] - weight.size(3) + 1;
  TORCH_CHECK(out_h > 0 && out_w > 0, "netcompress::nnpack_conv2d: the kernel ", weight.sizes().slice(2),
              " is larger than the padded input ", x.sizes().slice(2));
  at::Tensor out = at::empty({n, weight.size(0), out_h, out_w}, x.options());
  if (n == 0 || out.numel() == 0) return out;
  nnpack_ready();
  const at::Tensor xc = x.contiguous();
  at::Tensor wc = weight.contiguous();
  std::optional<at::Tensor> bc = bias ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  // Output channels whose kernel is all zeros (DNS prunes whole channels) are their bias exactly, as a direct sum
  // of zero products gives them for finite inputs (FFT tiles would leave rounding noise there, which breaks the
  // exact ties that max pooling resolves to the first element), and are not computed.
  std::vector<int64_t> live;  // the output channels with a nonzero weight (a scan that stops at the first)
  {
    const float* p = wc.const_data_ptr<float>();
    const int64_t per = wc.numel() / wc.size(0);
    for (int64_t o = 0; o < wc.size(0); ++o) {
      const float* k = p + o * per;
      if (std::any_of(k, k + per, [](float v) { return v != 0.0f; })) live.push_back(o);
    }
  }
  const int64_t n_live = static_cast<int64_t>(live.size());
  if (n_live < wc.size(0)) {
    if (bias) {
      out.copy_(bc->view({1, -1, 1, 1}).expand_as(out));
    } else {
      out.zero_();
    }
    if (n_live == 0) return out;
    const at::Tensor index = at::tensor(live, at::TensorOptions().dtype(at::kLong));
    const at::Tensor y = nnpack_conv2d_cpu(xc, wc.index_select(0, index),
                                           bias ? std::optional<at::Tensor>(bc->index_select(0, index))
                                                : std::nullopt,
                                           padding);
    out.index_copy_(1, index, y);
    return out;
  }
  const int64_t chunks = at::in_parallel_region() ? 1 : std::min<int64_t>(at::get_num_threads(), n);
  if (chunks <= 1) return at::_nnpack_spatial_convolution(xc, wc, bc, padding, {1, 1});
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      const int64_t lo = n * c / chunks, hi = n * (c + 1) / chunks;
      out.narrow(0, lo, hi - lo).copy_(at::_nnpack_spatial_convolution(xc.narrow(0, lo, hi - lo), wc, bc,
                                                                        padding, {1, 1}));
    }
  });
  return out;
}

}  // namespace
}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CPU, m) {
  m.impl("nnpack_conv2d", &netcompress::nnpack_conv2d_cpu);
}
