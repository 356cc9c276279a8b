// Single-pass, deterministic block reductions without torch: each block folds its grid-stride share into
// one partial; the last block to finish (atomic ticket, CUDA's threadFenceReduction pattern) folds the
// partials in index order and writes the result. One launch, no host round trip, no atomics on the data,
// and the same grid gives the same bits on every run (the grid is fixed per device: launch.h).
//
// The ticket is zeroed before the launch (launch.h); atomicInc also wraps it back to 0 with the grid's last
// increment, so a kernel leaves it as it found it (inq_threshold's passes reuse one ticket).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "loops.cuh"

namespace netcompress {
namespace cuda {

// The most blocks a reduction is launched with (one full wave on today's GPUs is ~1000).
constexpr int kMaxReduceBlocks = 4096;

// Reductions (one partial per block, folded by the last block): one full wave of resident blocks (`wave`: the
// device's SMs times the kernel's resident blocks per SM, launch.h), fewer for a small input. The grid, and with
// it the order of the float64 sums, is then fixed per device and size, so a result is the same bits on every run
// on that device.
inline int reduction_blocks_in_wave(int64_t n, int vec, int64_t wave) {
  const int64_t blocks = ceil_div(ceil_div(n, vec), kThreads);
  return static_cast<int>(std::max<int64_t>(1, std::min({blocks, wave, int64_t(kMaxReduceBlocks)})));
}

// Folds `acc` over the block in a fixed tree order; the block's total ends in shared[0].
template <typename Acc>
__device__ inline void block_fold(Acc acc, Acc* shared) {
  shared[threadIdx.x] = acc;
  __syncthreads();
  for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x].merge(shared[threadIdx.x + s]);
    __syncthreads();
  }
}

// Reads another block's partial through L2 (ld.global.cg), never a stale L1 line. Acc holds only doubles.
template <typename Acc>
__device__ inline Acc load_partial(const Acc* p) {
  static_assert(sizeof(Acc) % sizeof(double) == 0, "a partial must be made of doubles");
  Acc a;
  const double* src = reinterpret_cast<const double*>(p);
  double* dst = reinterpret_cast<double*>(&a);
  for (unsigned int k = 0; k < sizeof(Acc) / sizeof(double); ++k) dst[k] = __ldcg(src + k);
  return a;
}

// Whether this block is the grid's last to arrive. Every thread calls it after its writes to global memory
// (the fence makes them visible to the block that reads them); the ticket returns to 0 (see above).
__device__ inline bool last_block(unsigned int* ticket) {
  __shared__ bool is_last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last = atomicInc(ticket, gridDim.x - 1) == gridDim.x - 1;
  __syncthreads();
  if (is_last) __threadfence();
  return is_last;
}

// Called by every thread after its grid-stride loop. Returns true in thread 0 of the last block, where
// `*result` then holds the total over all blocks.
template <typename Acc>
__device__ inline bool grid_fold(Acc acc, Acc identity, Acc* shared, Acc* partials, unsigned int* ticket,
                                 Acc* result) {
  block_fold(acc, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = shared[0];
  if (!last_block(ticket)) return false;
  Acc mine = identity;
  for (unsigned int i = threadIdx.x; i < gridDim.x; i += blockDim.x) mine.merge(load_partial(partials + i));
  block_fold(mine, shared);
  if (threadIdx.x != 0) return false;
  *result = shared[0];
  return true;
}

}  // namespace cuda
}  // namespace netcompress
