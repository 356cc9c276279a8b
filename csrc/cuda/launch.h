// Launch helpers shared by the CUDA op files (torch side): grid sizes, scratch memory, pointer alignment and
// scalar arguments. Everything here is cheap per call: the SM count and each kernel's occupancy are looked up
// once.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "loops.cuh"
#include "reduce.cuh"

namespace netcompress {
namespace cuda {

// ---- grids (the formulas are loops.cuh's; here the device's figures) ----

// How many blocks of `kernel` (kThreads threads, static shared memory only) one SM holds at once.
template <typename Kernel>
inline int resident_blocks_per_sm(Kernel kernel) {
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, 0));
  return std::max(blocks, 1);
}

// The current device's multiprocessor count, looked up once per device (no ATen/cuda/CUDAContext.h: it needs
// the cuSPARSE and cuBLAS headers, which a compile-only toolkit may lack).
inline int sm_count() {
  static std::array<std::atomic<int>, 256> counts{};
  const int device = c10::cuda::current_device();
  std::atomic<int>& slot = counts[static_cast<size_t>(device) % counts.size()];
  int sms = slot.load(std::memory_order_relaxed);
  if (sms == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    slot.store(sms, std::memory_order_relaxed);
  }
  return sms;
}

// A reduction's grid on the current device (reduce.cuh's formula): `per_sm` is the kernel's
// resident_blocks_per_sm, which the caller computes once (a function-local static per kernel instantiation).
inline int reduction_blocks(int64_t n, int vec, int per_sm) {
  return reduction_blocks_in_wave(n, vec, int64_t(sm_count()) * per_sm);
}

// Whether `vec`-wide packs may be used: every pointer 16-byte aligned.
inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

template <typename... Ptrs>
inline bool all_aligned16(const Ptrs*... ptrs) {
  return (aligned16(ptrs) && ...);
}

// ---- scratch memory of the reductions and of inq_threshold ----
//
// One allocation per call from the caching allocator (stream-ordered, so it is free for reuse as soon as the
// call's kernels are queued, and it works under CUDA graph capture), of which only the head is zeroed, by one
// cudaMemsetAsync: the ticket (reduce.cuh) and, for inq_threshold, the select state's histogram. The partials
// need no zeroing: each block writes its own before the last block reads them.
struct Scratch {
  at::Tensor holder;
  unsigned int* ticket = nullptr;
  void* state = nullptr;              // inq_threshold's SelectState (inq_kernels.cuh), at most kStateBytes
  unsigned long long* hist = nullptr;  // kScratchHistBins zeroed counters (inq_threshold)
  void* partials = nullptr;            // `blocks` partials of a reduction
};

constexpr int64_t kStateBytes = 256;
constexpr int kScratchHistBins = 2048;

// partial_bytes: the size of one block's partial (0: none); with_select: the state and histogram of
// inq_threshold's passes.
inline Scratch make_scratch(const at::Tensor& like, int blocks, size_t partial_bytes, bool with_select) {
  constexpr int64_t kHead = 256;  // the ticket, alone in its own 256 bytes
  const int64_t select_bytes = with_select ? kStateBytes + int64_t(kScratchHistBins) * 8 : 0;
  const int64_t zeroed = kHead + select_bytes;
  const int64_t total = zeroed + int64_t(blocks) * static_cast<int64_t>(partial_bytes);
  Scratch s;
  s.holder = at::empty({total}, like.options().dtype(at::kByte));
  uint8_t* base = s.holder.mutable_data_ptr<uint8_t>();
  C10_CUDA_CHECK(cudaMemsetAsync(base, 0, static_cast<size_t>(zeroed), c10::cuda::getCurrentCUDAStream()));
  s.ticket = reinterpret_cast<unsigned int*>(base);
  if (with_select) {
    s.state = base + kHead;
    s.hist = reinterpret_cast<unsigned long long*>(base + kHead + kStateBytes);
  }
  s.partials = base + zeroed;  // a multiple of 8 bytes: doubles align
  return s;
}

// ---- scalar arguments ----

// A one-element threshold: a CPU value is read on the host; a float32 or float64 device value is read by the
// kernel through its pointer (no sync, no conversion launch); other device dtypes are converted to float64
// first (`holder` keeps that copy alive until the launch is queued).
struct ScalarArg {
  at::Tensor holder;
  ScalarRef ref{nullptr, 0, 0.0};
};

inline ScalarArg scalar_arg(const at::Tensor& t) {
  ScalarArg a;
  if (t.device().is_cpu()) {
    a.ref.value = t.item<double>();
  } else if (t.scalar_type() == at::kDouble || t.scalar_type() == at::kFloat) {
    a.ref.ptr = t.const_data_ptr();
    a.ref.is_double = t.scalar_type() == at::kDouble;
  } else {
    a.holder = t.to(at::kDouble);
    a.ref.ptr = a.holder.const_data_ptr();
    a.ref.is_double = 1;
  }
  return a;
}

}  // namespace cuda
}  // namespace netcompress
