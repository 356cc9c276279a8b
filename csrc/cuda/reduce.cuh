// Single-pass, deterministic block reductions without torch: each block folds its grid-stride share into
// one partial; the last block to finish (atomic ticket, CUDA's threadFenceReduction pattern) folds the
// partials in index order and writes the result. One launch, no host round trip, no atomics on the data,
// and the same grid gives the same bits on every run.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace netcompress {
namespace cuda {

constexpr int kThreads = 256;           // element-wise kernels and reductions (a power of two)
constexpr int kMaxReduceBlocks = 1024;  // fixed cap, independent of the device, for reproducible sums
constexpr int64_t kMaxBlocks = 65535;

// Blocks for a grid-stride loop over n elements.
inline int blocks_for(int64_t n, int64_t cap = kMaxBlocks) {
  int64_t b = (n + kThreads - 1) / kThreads;
  if (b < 1) b = 1;
  if (b > cap) b = cap;
  return static_cast<int>(b);
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

// Called by every thread after its grid-stride loop. Returns true in thread 0 of the last block, where
// `*result` then holds the total over all blocks.
template <typename Acc>
__device__ inline bool grid_fold(Acc acc, Acc identity, Acc* shared, Acc* partials, unsigned int* ticket,
                                 Acc* result) {
  __shared__ bool is_last;
  block_fold(acc, shared);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = shared[0];
    __threadfence();  // the partial is visible to every block before the ticket is taken
    is_last = atomicAdd(ticket, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return false;
  __threadfence();
  Acc mine = identity;
  for (unsigned int i = threadIdx.x; i < gridDim.x; i += blockDim.x) mine.merge(load_partial(partials + i));
  block_fold(mine, shared);
  if (threadIdx.x != 0) return false;
  *result = shared[0];
  return true;
}

}  // namespace cuda
}  // namespace netcompress
