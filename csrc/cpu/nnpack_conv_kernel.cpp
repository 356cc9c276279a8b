// Stride-1 2-D convolution (F.conv2d's cross-correlation) by NNPACK's transform algorithms (FFT or Winograd
// tiles, `nnp_convolution_algorithm_auto`), called directly (see "Workspace" below) or through ATen's
// `_nnpack_spatial_convolution`, with the batch split over ATen's threads.
//
// Why: oneDNN computes a convolution as a direct (GEMM-like) product, bounded by this core's multiply-add rate;
// with channel counts off its SIMD blocks (LeNet's conv2, 20 -> 50) it reaches ~70 % of it. NNPACK's 8×8 FFT
// tiles do a 5×5 kernel's 4×4 output block with a fraction of the multiplications (LeNet's conv2 on one core:
// forward 2.87 -> 1.42 ms, data gradient 3.91 -> 2.10, weight gradient 3.08 -> 1.67; benchmarks/RESULTS.md).
// The layer (layers/vision.py, cpu_fft_conv) decides where; the gradients are convolutions of this op too.
//
// Threads: ATen creates NNPACK's thread pool at NNPACK's first call, with at::get_num_threads() threads, for the
// life of the process, and NNPACK spreads one call's tiles over it (on a 2-core machine no faster than one
// thread). This op instead gives each ATen (OpenMP) thread a slice of the batch and runs NNPACK on the calling
// thread, without the pool's lock (its own calls pass no pool; for ATen's entry it makes the pool with one thread
// before NNPACK's first call). NNPACK's result for a sample does not depend on the batch around it nor on the
// pool's size (tests/ops/test_conv_ops.py asserts the bits at 1, 2 and 3 threads), so the values are the same on
// any number of threads.
//
// Workspace: NNPACK needs a scratch buffer per call (the FFT tiles' transforms: LeNet's conv2 at batch 64 1.3 MB
// forward, 5.4 MB for each gradient). ATen keeps one per thread for every call. Measured on one core, LeNet's conv2
// forward, data gradient and weight gradient, called in turn as a training step calls them: 5.5 ms with one
// buffer (ATen's, or one of our own), 4.6 ms with a buffer per call shape, 4.4 ms each repeated on its own; two
// buffers at offsets of 2 MB or more within one allocation recover it, 64 B - 1 MB apart do not (a cache effect of
// reusing the same lines across calls of different shapes; this VM has no hardware counters to say which). So
// this op calls NNPACK itself (`nnp_convolution_output` / `_inference`, which libtorch exports, with
// `nnp_convolution_algorithm_auto` as ATen passes it: the same algorithm and bits) with a buffer per thread and
// call shape (WorkspaceCache), and falls back to ATen's entry where the library lacks the exports.
//
// An output channel whose kernel is all zeros is its bias, exactly and without computing it (see below).
#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <vector>

#if AT_NNPACK_ENABLED() && defined(__linux__)
#include <nnpack.h>
// The two entry points' types (nnpack.h also declares C++ overloads of both names; these pick the C functions).
using NnpOutput = nnp_status(nnp_convolution_algorithm, size_t, size_t, size_t, nnp_size, nnp_padding, nnp_size,
                             const float*, const float*, const float*, float*, void*, size_t*, nnp_activation,
                             const void*, pthreadpool_t, nnp_profile*);
using NnpInference = nnp_status(nnp_convolution_algorithm, nnp_convolution_transform_strategy, size_t, size_t,
                                nnp_size, nnp_padding, nnp_size, nnp_size, const float*, const float*, const float*,
                                float*, void*, size_t*, nnp_activation, const void*, pthreadpool_t, nnp_profile*);
// Weak: a libtorch without these exports loads this extension all the same (their addresses are then null), and
// the op takes ATen's entry.
extern "C" {
__attribute__((weak)) NnpOutput nnp_convolution_output;
__attribute__((weak)) NnpInference nnp_convolution_inference;
}
#define NC_NNPACK_DIRECT 1
#else
#define NC_NNPACK_DIRECT 0
#endif

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

#if NC_NNPACK_DIRECT
// An NNPACK workspace, grown to the largest call seen: bytes from ATen's CPU allocator, whose 64-byte alignment
// (c10::gAlignment) is NNPACK's requirement.
struct Workspace {
  at::Tensor buffer;

  size_t size() const { return buffer.defined() ? static_cast<size_t>(buffer.numel()) : 0; }

  void* reserve(size_t bytes) {
    if (bytes > size()) buffer = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte));
    void* p = buffer.data_ptr();
    TORCH_INTERNAL_ASSERT(reinterpret_cast<uintptr_t>(p) % 64 == 0, "NNPACK's workspace is not 64-byte aligned");
    return p;
  }
};

// The calling thread's workspaces, one per call shape (see the top of the file), the most recently used first; at
// most kMaxEntries of them and, beyond the newest, kMaxBytes in all (the oldest are freed): a net's few FFT layers
// keep theirs, a stream of new shapes cannot hold memory without bound. A workspace grows with the thread's slice
// of the batch (LeNet's conv2 gradients: 5.4 MB at 64 samples, 71 MB at 1024), so the bound is wide: below a
// step's total the workspaces would be freed and faulted in again at every call.
class WorkspaceCache {
 public:
  using Key = std::array<int64_t, 9>;  // batch, input and output channels, input h and w, kernel h and w, padding

  Workspace& get(const Key& key) {
    auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.key == key; });
    if (it == entries_.end()) {
      entries_.insert(entries_.begin(), Entry{key, Workspace{}});
    } else if (it != entries_.begin()) {
      std::rotate(entries_.begin(), it, it + 1);
    }
    return entries_.front().workspace;
  }

  // Frees the least recently used workspaces past the limits (call after the newest has grown).
  void trim() {
    size_t bytes = entries_.front().workspace.size();
    size_t keep = 1;
    while (keep < entries_.size() && keep < kMaxEntries && bytes + entries_[keep].workspace.size() <= kMaxBytes) {
      bytes += entries_[keep].workspace.size();
      ++keep;
    }
    entries_.resize(keep);
  }

 private:
  static constexpr size_t kMaxEntries = 16;
  static constexpr size_t kMaxBytes = size_t{1} << 30;
  struct Entry {
    Key key;
    Workspace workspace;
  };
  std::vector<Entry> entries_;
};

// NNPACK's entry points, null where libtorch does not export them.
NnpOutput* const output_fn = &nnp_convolution_output;
NnpInference* const inference_fn = &nnp_convolution_inference;

bool nnpack_exported() { return output_fn != nullptr && inference_fn != nullptr; }

// y = conv(x, w) + b on the calling thread (NNPACK's thread pool argument null), as ATen's
// `_nnpack_spatial_convolution` computes it: one sample by nnp_convolution_inference, more by nnp_convolution_output.
// x, w, b contiguous float32; b null for none. False where NNPACK's exports are missing (nothing computed).
bool nnpack_direct(const at::Tensor& x, const at::Tensor& w, const float* b, at::Tensor& y, at::IntArrayRef padding) {
  if (!nnpack_exported()) return false;
  thread_local WorkspaceCache workspaces;
  thread_local std::vector<float> zeros;  // the bias where there is none (NNPACK always adds one)
  const size_t n = x.size(0), in_c = x.size(1), out_c = w.size(0);
  if (b == nullptr) {
    if (zeros.size() < out_c) zeros.assign(out_c, 0.0f);
    b = zeros.data();
  }
  const nnp_size input_size{static_cast<size_t>(x.size(3)), static_cast<size_t>(x.size(2))};
  const nnp_padding pad{static_cast<size_t>(padding[0]), static_cast<size_t>(padding[1]),
                        static_cast<size_t>(padding[0]), static_cast<size_t>(padding[1])};
  const nnp_size kernel_size{static_cast<size_t>(w.size(3)), static_cast<size_t>(w.size(2))};
  const nnp_size unit{1, 1};
  const float* xp = x.const_data_ptr<float>();
  const float* wp = w.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  Workspace& workspace = workspaces.get({x.size(0), x.size(1), w.size(0), x.size(2), x.size(3), w.size(2), w.size(3),
                                         padding[0], padding[1]});
  // buffer null: NNPACK only writes the workspace size the call needs into *size (and computes nothing)
  const auto call = [&](void* buffer, size_t* size) {
    if (n == 1) {
      return inference_fn(nnp_convolution_algorithm_auto, nnp_convolution_transform_strategy_compute, in_c, out_c,
                          input_size, pad, kernel_size, unit, xp, wp, b, yp, buffer, size, nnp_activation_identity,
                          nullptr, nullptr, nullptr);
    }
    return output_fn(nnp_convolution_algorithm_auto, n, in_c, out_c, input_size, pad, kernel_size, xp, wp, b, yp,
                     buffer, size, nnp_activation_identity, nullptr, nullptr, nullptr);
  };
  size_t capacity = workspace.size();  // a copy: NNPACK lowers it to the call's need
  nnp_status status = capacity ? call(workspace.buffer.data_ptr(), &capacity) : nnp_status_insufficient_buffer;
  if (status == nnp_status_insufficient_buffer) {
    size_t need = 0;
    status = call(nullptr, &need);
    if (status == nnp_status_success) {
      capacity = std::max<size_t>(need, 64);  // a buffer, never null: a null one would only be measured again
      status = call(workspace.reserve(capacity), &capacity);
      workspaces.trim();
    }
  }
  TORCH_CHECK(status == nnp_status_success, "netcompress::nnpack_conv2d: NNPACK failed with status ",
              static_cast<int>(status), " for input ", x.sizes(), ", weight ", w.sizes(), ", padding ", padding);
  return true;
}
#endif

// conv(x, w) + b into y (contiguous, of the output's shape) on the calling thread.
void nnpack_run(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b, at::Tensor& y,
                at::IntArrayRef padding) {
#if NC_NNPACK_DIRECT
  if (nnpack_direct(x, w, b ? b->const_data_ptr<float>() : nullptr, y, padding)) return;
#endif
  y.copy_(at::_nnpack_spatial_convolution(x, w, b, padding, {1, 1}));
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
  if (chunks <= 1) {
    nnpack_run(xc, wc, bc, out, padding);
    return out;
  }
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      const int64_t lo = n * c / chunks, hi = n * (c + 1) / chunks;
      at::Tensor slice = out.narrow(0, lo, hi - lo);  // contiguous: a range of whole samples
      nnpack_run(xc.narrow(0, lo, hi - lo), wc, bc, slice, padding);
    }
  });
  return out;
}

}  // namespace

// How the op reaches NNPACK in this process (netcompress._C.nnpack_calls, for `netcompress info` and the tests):
// "direct" (its own calls and workspaces), "aten" (libtorch has NNPACK but not the exports: ATen's entry), or
// "none" (this PyTorch was built without NNPACK).
const char* nnpack_calls() {
#if NC_NNPACK_DIRECT
  return nnpack_exported() ? "direct" : "aten";
#elif AT_NNPACK_ENABLED()
  return "aten";
#else
  return "none";
#endif
}

}  // namespace netcompress

TORCH_LIBRARY_IMPL(netcompress, CPU, m) {
  m.impl("nnpack_conv2d", &netcompress::nnpack_conv2d_cpu);
}
