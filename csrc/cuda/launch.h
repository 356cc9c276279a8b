// Launch helpers shared by the CUDA op files (torch side): grid sizes, the per-stream scratch buffer, pointer
// alignment, and scalar arguments. Everything here is cheap per call: the device properties and each kernel's
// occupancy are looked up once, and the scratch buffer is made once per stream.
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
#include <map>
#include <mutex>
#include <utility>

#include "loops.cuh"
#include "reduce.cuh"

namespace netcompress {
namespace cuda {

// ---- grids ----

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Element-wise kernels: one 16-byte pack per thread (the pack loop of loops.cuh is grid-stride, so a grid this
// large is only a bound for the biggest tensors). Many short blocks balance the SMs without a per-device size.
inline int elementwise_blocks(int64_t n, int vec) {
  const int64_t blocks = ceil_div(ceil_div(n, vec), kThreads);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(1) << 30)));
}

// How many blocks of `kernel` (kThreads threads, static shared memory only) one SM holds at once.
template <typename Kernel>
inline int resident_blocks_per_sm(Kernel kernel) {
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, 0));
  return std::max(blocks, 1);
}

// Reductions (one partial per block, folded by the last block): one full wave of resident blocks, fewer for a
// small input. The grid, and with it the order of the float64 sums, is fixed per device and size, so a result
// is the same bits on every run on that device. `per_sm` is the kernel's resident_blocks_per_sm, which the
// caller computes once (a function-local static per kernel instantiation).
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

inline int reduction_blocks(int64_t n, int vec, int per_sm) {
  const int sms = sm_count();
  const int64_t wave = std::min<int64_t>(int64_t(sms) * per_sm, kMaxReduceBlocks);
  const int64_t blocks = ceil_div(ceil_div(n, vec), kThreads);
  return static_cast<int>(std::max<int64_t>(1, std::min(blocks, wave)));
}

// Whether `vec`-wide packs may be used: every pointer 16-byte aligned.
inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

template <typename... Ptrs>
inline bool all_aligned16(const Ptrs*... ptrs) {
  return (aligned16(ptrs) && ...);
}

// ---- the per-stream scratch buffer ----
//
// The reductions' partials and ticket and inq_threshold's histogram and state, made (and zeroed) once per
// (device, stream) and then reused by every call on that stream: no allocation, no memset launch per call.
// Kernels on one stream run one after another, and each leaves the ticket and the histogram zero (reduce.cuh,
// inq_kernels.cuh), so the buffer is never shared by two kernels at once. Kept for the life of the process.
struct Scratch {
  unsigned int* ticket;
  void* state;               // inq_threshold's SelectState (inq_kernels.cuh), at most kStateBytes
  unsigned long long* hist;  // kScratchHistBins counters
  double* partials;          // kMaxReduceBlocks partials of up to kPartialBytes each
};

constexpr int64_t kPartialBytes = 64;
constexpr int64_t kStateBytes = 256;
constexpr int kScratchHistBins = 2048;
constexpr int64_t kTicketOffset = 0;
constexpr int64_t kStateOffset = 256;
constexpr int64_t kHistOffset = kStateOffset + kStateBytes;
constexpr int64_t kPartialsOffset = kHistOffset + int64_t(kScratchHistBins) * 8;
constexpr int64_t kScratchBytes = kPartialsOffset + int64_t(kMaxReduceBlocks) * kPartialBytes;

inline Scratch stream_scratch(const at::Tensor& like) {
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(like.device().index());
  const std::pair<int, int64_t> key(stream.device_index(), static_cast<int64_t>(stream.id()));
  static std::mutex mutex;
  static auto* buffers = new std::map<std::pair<int, int64_t>, at::Tensor>();  // never freed (exit order)
  uint8_t* base;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    auto it = buffers->find(key);
    if (it == buffers->end()) {
      it = buffers->emplace(key, at::zeros({kScratchBytes}, like.options().dtype(at::kByte))).first;
    }
    base = it->second.mutable_data_ptr<uint8_t>();
  }
  Scratch s;
  s.ticket = reinterpret_cast<unsigned int*>(base + kTicketOffset);
  s.state = base + kStateOffset;
  s.hist = reinterpret_cast<unsigned long long*>(base + kHistOffset);
  s.partials = reinterpret_cast<double*>(base + kPartialsOffset);
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
