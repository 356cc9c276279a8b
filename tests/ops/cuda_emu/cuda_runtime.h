// A host stand-in for the part of the CUDA runtime that csrc/cuda/*.cuh use, so that their __global__ kernels run
// on the CPU in tests (tests/ops/test_cuda_emulated.py): g++ compiles the kernel headers with this directory first
// on the include path, and `emulate` runs a grid.
//
// Each block runs its threads as fibers (ucontext) on the calling thread, until each reaches a barrier:
// __syncthreads waits for every live thread of the block, a warp shuffle for every lane of its warp. Blocks run
// one after another, in an order the test chooses, so a kernel whose result depends on which block finishes last,
// or that reads another block's data without the last-block handshake, shows it. Within a block the threads
// between two barriers run in an order the test chooses too (forward, reverse, shuffled), so a read of shared
// memory that lacks its barrier shows as well. What this cannot show: memory ordering (fences, __ldcg's cache
// level), timing, occupancy, or the code nvcc generates (FMA contraction: the _rn intrinsics are what keep that
// apart, and kernels/common.h calls them only where __CUDA_ARCH__ is defined, so here the plain operators run,
// compiled with -ffp-contract=off as the CPU build is).
#pragma once

#include <stdint.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

struct uint3 {
  unsigned int x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One block runs at a time, so one static per declaration is that block's shared memory.
#define __shared__ static

namespace nc_emu {

constexpr int kWarp = 32;

enum class Wait { kRunnable, kBlock, kWarp, kDone };

struct Fiber {
  ucontext_t ctx;
  uint3 tid;
  Wait wait = Wait::kRunnable;
};

// How the threads of a block take turns between barriers.
enum class Order { kForward = 0, kReverse = 1, kShuffled = 2 };

struct Grid {
  uint3 block_idx;
  uint3 block_dim;
  uint3 grid_dim;
  std::vector<Fiber> fibers;
  std::vector<char> stacks;
  ucontext_t scheduler;
  int current = -1;
  std::function<void()> body;
  std::string error;  // set by a thread that cannot go on (its fiber is then abandoned)
  uint64_t lanes[1024 / kWarp][kWarp];  // a warp shuffle's exchange
};

inline Grid& grid() {
  static Grid g;
  return g;
}

inline Fiber& self() {
  return grid().fibers[static_cast<size_t>(grid().current)];
}

inline void yield(Wait wait) {
  Fiber& f = self();
  f.wait = wait;
  swapcontext(&f.ctx, &grid().scheduler);
}

// Ends the calling thread with an error, which the scheduler raises (an exception must not cross a fiber's
// boundary).
inline void fail(const std::string& message) {
  if (grid().error.empty()) grid().error = message;
  yield(Wait::kDone);
}

inline void fiber_main() {
  grid().body();
  self().wait = Wait::kDone;  // uc_link returns to the scheduler
}

// Runs one block: every thread from the start of `body` until it returns.
inline void run_block(unsigned int threads, Order order, std::mt19937& rng) {
  constexpr size_t kStack = 64 * 1024;
  Grid& g = grid();
  if (g.stacks.size() < threads * kStack) g.stacks.assign(threads * kStack, 0);
  g.fibers.assign(threads, Fiber());
  for (unsigned int t = 0; t < threads; ++t) {
    Fiber& f = g.fibers[t];
    f.tid.x = t;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = g.stacks.data() + t * kStack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &g.scheduler;
    makecontext(&f.ctx, &fiber_main, 0);
  }
  std::vector<unsigned int> turn(threads);
  std::iota(turn.begin(), turn.end(), 0u);
  if (order == Order::kReverse) std::reverse(turn.begin(), turn.end());
  for (;;) {
    if (order == Order::kShuffled) std::shuffle(turn.begin(), turn.end(), rng);
    for (unsigned int t : turn) {
      if (g.fibers[t].wait != Wait::kRunnable) continue;
      g.current = static_cast<int>(t);
      swapcontext(&g.scheduler, &g.fibers[t].ctx);
      if (!g.error.empty()) {
        const std::string message = "block " + std::to_string(g.block_idx.x) + ", thread " + std::to_string(t) +
                                    ": " + g.error;
        g.error.clear();
        throw std::runtime_error(message);
      }
    }
    g.current = -1;
    // Every thread now waits at a barrier or is done: release the warps whose lanes all wait at a shuffle, else
    // the block if every live thread waits at __syncthreads.
    bool released = false, live = false, at_block = true;
    for (unsigned int w = 0; w * kWarp < threads; ++w) {
      int waiting = 0, done = 0;
      for (unsigned int t = w * kWarp; t < std::min(threads, (w + 1) * kWarp); ++t) {
        waiting += g.fibers[t].wait == Wait::kWarp;
        done += g.fibers[t].wait == Wait::kDone;
      }
      if (waiting > 0 && done > 0) {
        throw std::runtime_error("warp " + std::to_string(w) + " of block " + std::to_string(g.block_idx.x) +
                                 ": a full-mask shuffle while " + std::to_string(done) + " of its lanes had exited");
      }
      if (waiting == kWarp) {
        for (unsigned int t = w * kWarp; t < (w + 1) * kWarp; ++t) g.fibers[t].wait = Wait::kRunnable;
        released = true;
      }
    }
    if (released) continue;
    for (const Fiber& f : g.fibers) {
      live = live || f.wait != Wait::kDone;
      at_block = at_block && (f.wait == Wait::kDone || f.wait == Wait::kBlock);
    }
    if (!live) return;
    if (!at_block) {
      throw std::runtime_error("block " + std::to_string(g.block_idx.x) +
                               ": threads wait at a warp shuffle that some lanes of their warp never reach "
                               "(they wait at __syncthreads instead)");
    }
    for (Fiber& f : g.fibers) {
      if (f.wait == Wait::kBlock) f.wait = Wait::kRunnable;
    }
  }
}

// Launches `body` (a call of the kernel with its arguments) on `blocks` blocks of `threads` threads, the blocks in
// a random order drawn from `seed` (or in index order for seed 0), the threads of each block taking turns in
// `order`.
inline void emulate(unsigned int blocks, unsigned int threads, uint64_t seed, Order order,
                    std::function<void()> body) {
  if (threads == 0 || threads > 1024 || threads % kWarp != 0) throw std::runtime_error("bad block size");
  if (blocks == 0) throw std::runtime_error("a launch of zero blocks");
  Grid& g = grid();
  g.body = std::move(body);
  g.grid_dim = uint3{blocks, 1, 1};
  g.block_dim = uint3{threads, 1, 1};
  std::vector<unsigned int> sequence(blocks);
  std::iota(sequence.begin(), sequence.end(), 0u);
  std::mt19937 rng(static_cast<std::mt19937::result_type>(seed));
  if (seed != 0) std::shuffle(sequence.begin(), sequence.end(), rng);
  for (unsigned int b : sequence) {
    g.block_idx = uint3{b, 0, 0};
    run_block(threads, order, rng);
  }
}

template <typename T>
inline uint64_t to_lane(T v) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "a shuffled value fits in 8 bytes");
  uint64_t u = 0;
  memcpy(&u, &v, sizeof(T));
  return u;
}

template <typename T>
inline T from_lane(uint64_t u) {
  T v;
  memcpy(&v, &u, sizeof(T));
  return v;
}

// A shuffle: each lane posts its value, the warp meets, each reads its source lane's, the warp meets again (so no
// lane posts its next value before every lane has read this one).
template <typename T>
inline T shuffle(unsigned int mask, T v, int source_offset) {
  if (mask != 0xffffffffu) fail("only full-mask shuffles are emulated");
  const unsigned int t = self().tid.x, warp = t / kWarp, lane = t % kWarp;
  grid().lanes[warp][lane] = to_lane(v);
  yield(Wait::kWarp);
  const int source = int(lane) + source_offset;
  const T r = (source < 0 || source >= kWarp) ? v : from_lane<T>(grid().lanes[warp][source]);
  yield(Wait::kWarp);
  return r;
}

}  // namespace nc_emu

#define threadIdx (::nc_emu::self().tid)
#define blockIdx (::nc_emu::grid().block_idx)
#define blockDim (::nc_emu::grid().block_dim)
#define gridDim (::nc_emu::grid().grid_dim)

inline void __syncthreads() {
  ::nc_emu::yield(::nc_emu::Wait::kBlock);
}

// One thread runs at a time: fences order nothing further, and an atomic is a plain read-modify-write.
inline void __threadfence() {}

template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}

inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
  const unsigned int old = *p;
  *p = old + v;
  return old;
}

inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  *p = old + v;
  return old;
}

// CUDA's atomicInc: ((old >= limit) ? 0 : old + 1).
inline unsigned int atomicInc(unsigned int* p, unsigned int limit) {
  const unsigned int old = *p;
  *p = old >= limit ? 0u : old + 1u;
  return old;
}

template <typename T>
inline T __shfl_down_sync(unsigned int mask, T v, unsigned int delta) {
  return ::nc_emu::shuffle(mask, v, static_cast<int>(delta));
}

template <typename T>
inline T __shfl_up_sync(unsigned int mask, T v, unsigned int delta) {
  return ::nc_emu::shuffle(mask, v, -static_cast<int>(delta));
}

namespace nc_emu {
template <typename To, typename From>
inline To bit_cast(From x) {
  static_assert(sizeof(To) == sizeof(From), "a bit cast keeps the width");
  To y;
  memcpy(&y, &x, sizeof y);
  return y;
}
}  // namespace nc_emu

inline unsigned int __float_as_uint(float x) {
  return ::nc_emu::bit_cast<unsigned int>(x);
}
inline float __uint_as_float(unsigned int u) {
  return ::nc_emu::bit_cast<float>(u);
}
inline long long __double_as_longlong(double x) {
  return ::nc_emu::bit_cast<long long>(x);
}
inline double __longlong_as_double(long long u) {
  return ::nc_emu::bit_cast<double>(u);
}
