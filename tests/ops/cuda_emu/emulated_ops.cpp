// The CUDA ops' kernels (csrc/cuda/*.cuh) launched on the host through cuda_runtime.h's emulation, behind a C
// interface that tests/ops/test_cuda_emulated.py calls with ctypes. Each entry launches what the op file
// (csrc/cuda/*.cu) launches for a contiguous input: the same kernel instantiation, pack width, grid formula
// (loops.cuh, reduce.cuh), scratch layout and pass schedule, with the host-side checks of the op left to the op.
//
// Every entry returns 0, or -1 with the reason in emu_last_error(). dtype: 0 float32, 1 float64, 2 float16,
// 3 bfloat16 (c10's types, which the op files instantiate with; the accumulation type is at::opmath_type's).
// vec: 1 for the packed kernel (the op's choice when every pointer is 16-byte aligned), 0 for the scalar one.
// A scalar argument that the op reads on the device is given as `kind` (0: by value, 1: through a float32
// pointer, 2: through a float64 pointer) and its value.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "../../../csrc/cuda/dns_kernels.cuh"
#include "../../../csrc/cuda/inq_kernels.cuh"
#include "../../../csrc/cuda/quant_kernels.cuh"
#include "../../../csrc/cuda/solver_kernels.cuh"

namespace {

using namespace netcompress;
using namespace netcompress::cuda;

struct Options {
  uint64_t seed = 0;          // the blocks' order (0: index order)
  nc_emu::Order order = nc_emu::Order::kForward;
  int64_t wave = 132;         // a reduction's full wave of blocks (an H100 with one resident block per SM)
  int64_t max_blocks = 0;     // a cap on element-wise grids (0: none, as on the device)
};

Options options;
std::string last_error;

template <typename T, typename A>
struct Types {
  using scalar_t = T;
  using acc_t = A;
};

// kFloatOnly: the INQ kernels, which take float32 and float64 only (as their op files dispatch).
template <bool kFloatOnly, typename F>
void dispatch(int dtype, F&& f) {
  if (dtype == 0) return f(Types<float, float>{});
  if (dtype == 1) return f(Types<double, double>{});
  if constexpr (kFloatOnly) {
    throw std::runtime_error("INQ kernels take float32 or float64");
  } else {
    if (dtype == 2) return f(Types<c10::Half, float>{});
    if (dtype == 3) return f(Types<c10::BFloat16, float>{});
    throw std::runtime_error("dtype code " + std::to_string(dtype) + " is not 0-3");
  }
}

template <typename F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return -1;
  }
}

int elementwise_grid(int64_t n, int vec) {
  const int blocks = elementwise_blocks(n, vec);
  return options.max_blocks > 0 ? static_cast<int>(std::min<int64_t>(blocks, options.max_blocks)) : blocks;
}

template <typename Body>
void launch(int blocks, Body&& body) {
  nc_emu::emulate(static_cast<unsigned int>(blocks), kThreads, options.seed, options.order, body);
}

ScalarRef scalar_ref(int kind, double value, float* f32, double* f64) {
  *f32 = static_cast<float>(value);
  *f64 = value;
  switch (kind) {
    case 0: return ScalarRef{nullptr, 0, value};
    case 1: return ScalarRef{f32, 0, 0.0};
    case 2: return ScalarRef{f64, 1, 0.0};
    default: throw std::runtime_error("scalar kind " + std::to_string(kind) + " is not 0-2");
  }
}

// reduce.cuh: a kernel leaves its ticket as it found it (launch.h's make_scratch zeroes it once per call).
void check_ticket(unsigned int ticket) {
  if (ticket != 0) throw std::runtime_error("the ticket was left at " + std::to_string(ticket));
}

// A reduction's scratch, as make_scratch lays it out: the ticket zeroed, one partial per block not.
template <typename Acc>
struct ReduceScratch {
  unsigned int ticket = 0;
  std::vector<Acc> partials;
  explicit ReduceScratch(int blocks) : partials(static_cast<size_t>(blocks)) {}
};

// f(Types<T, A>{}, std::integral_constant<int, V>{}) for the dtype and the pack width vec asks for.
template <bool kFloatOnly = false, typename F>
void with_vec(int dtype, int vec, F&& f) {
  dispatch<kFloatOnly>(dtype, [&](auto types) {
    using T = typename decltype(types)::scalar_t;
    if (vec) {
      f(types, std::integral_constant<int, kPackOf<T>>{});
    } else {
      f(types, std::integral_constant<int, 1>{});
    }
  });
}

}  // namespace

extern "C" {

const char* emu_last_error() {
  return last_error.c_str();
}

// order: 0 forward, 1 reverse, 2 shuffled (the threads of a block between barriers).
int emu_configure(unsigned long long seed, int order, long long wave, long long max_blocks) {
  return guarded([&] {
    if (order < 0 || order > 2 || wave < 1 || max_blocks < 0) throw std::runtime_error("bad options");
    options.seed = seed;
    options.order = static_cast<nc_emu::Order>(order);
    options.wave = wave;
    options.max_blocks = max_blocks;
  });
}

int emu_dns_masked_weight(int dtype, int vec, long long n, const void* w, const void* m, void* out) {
  return guarded([&] {
    with_vec(dtype, vec, [&](auto types, auto v) {
      using T = typename decltype(types)::scalar_t;
      using A = typename decltype(types)::acc_t;
      constexpr int V = decltype(v)::value;
      launch(elementwise_grid(n, V), [&] {
        dns_masked_weight_kernel<T, A, V>(n, static_cast<const T*>(w), static_cast<const T*>(m),
                                          static_cast<T*>(out));
      });
    });
  });
}

// out: [mu, std, n_weight, n_bias]; nb == 0 with b, bm null for a layer without bias.
int emu_dns_stats(int dtype, int vec, long long nw, const void* w, const void* wm, long long nb, const void* b,
                  const void* bm, double* out) {
  return guarded([&] {
    with_vec(dtype, vec, [&](auto types, auto v) {
      using T = typename decltype(types)::scalar_t;
      constexpr int V = decltype(v)::value;
      const int blocks = reduction_blocks_in_wave(nw + nb, V, options.wave);
      ReduceScratch<kernels::DnsStatsAcc> scratch(blocks);
      launch(blocks, [&] {
        dns_stats_kernel<T, V>(nw, static_cast<const T*>(w), static_cast<const T*>(wm), nb,
                               static_cast<const T*>(b), static_cast<const T*>(bm), scratch.partials.data(),
                               &scratch.ticket, out);
      });
      check_ticket(scratch.ticket);
    });
  });
}

int emu_dns_update_mask(int dtype, int vec, long long n, const void* w, void* m, void* out, int low_kind,
                        double low, int high_kind, double high) {
  return guarded([&] {
    float low32, high32;
    double low64, high64;
    const ScalarRef low_ref = scalar_ref(low_kind, low, &low32, &low64);
    const ScalarRef high_ref = scalar_ref(high_kind, high, &high32, &high64);
    with_vec(dtype, vec, [&](auto types, auto v) {
      using T = typename decltype(types)::scalar_t;
      using A = typename decltype(types)::acc_t;
      constexpr int V = decltype(v)::value;
      launch(elementwise_grid(n, V), [&] {
        dns_update_mask_kernel<T, A, V>(n, static_cast<const T*>(w), static_cast<T*>(m), static_cast<T*>(out),
                                        low_ref, high_ref);
      });
    });
  });
}

int emu_dns_splice_grad(int dtype, int vec, long long n, void* diff, const void* m, const void* g) {
  return guarded([&] {
    with_vec(dtype, vec, [&](auto types, auto v) {
      using T = typename decltype(types)::scalar_t;
      using A = typename decltype(types)::acc_t;
      constexpr int V = decltype(v)::value;
      launch(elementwise_grid(n, V), [&] {
        dns_splice_grad_kernel<T, A, V>(n, static_cast<T*>(diff), static_cast<const T*>(m),
                                        static_cast<const T*>(g));
      });
    });
  });
}

// out: [max|v| mask==1, max|v| mask==0, #mask==1, #mask==0, #other].
int emu_inq_mask_stats(int dtype, int vec, long long n, const void* w, const void* m, double* out) {
  return guarded([&] {
    with_vec</*kFloatOnly=*/true>(dtype, vec, [&](auto types, auto v) {
      using T = typename decltype(types)::scalar_t;
      constexpr int V = decltype(v)::value;
      const int blocks = reduction_blocks_in_wave(n, V, options.wave);
      ReduceScratch<kernels::InqRangeAcc> scratch(blocks);
      launch(blocks, [&] {
        inq_mask_stats_kernel<T, V>(n, static_cast<const T*>(w), static_cast<const T*>(m),
                                    scratch.partials.data(), &scratch.ticket, out);
      });
      check_ticket(scratch.ticket);
    });
  });
}

// The op returns +inf without a launch when n_keep >= n (inq_kernel.cu); this entry launches for any n_keep < n.
// passes: how many launches the selection took.
int emu_inq_threshold(int dtype, int vec, long long n, const void* w, const void* m, long long n_keep, void* out,
                      int* passes) {
  return guarded([&] {
    if (n_keep < 0 || n_keep >= n) throw std::runtime_error("n_keep must be in [0, n)");
    with_vec</*kFloatOnly=*/true>(dtype, vec, [&](auto types, auto v) {
      using T = typename decltype(types)::scalar_t;
      constexpr int V = decltype(v)::value;
      const int blocks = reduction_blocks_in_wave(n, V, options.wave);
      unsigned int ticket = 0;  // inq_threshold's scratch: the ticket, the select state and histogram, zeroed
      SelectState state{};
      std::vector<unsigned long long> hist(kRadixBins, 0ull);
      *passes = 0;
      for_each_select_pass<T>([&](int shift, int first, int last) {
        launch(blocks, [&] {
          inq_select_pass_kernel<T, V>(n, static_cast<const T*>(w), static_cast<const T*>(m), n_keep, shift,
                                       first, last, &state, hist.data(), &ticket, static_cast<T*>(out));
        });
        ++*passes;
        check_ticket(ticket);
        for (int b = 0; b < kRadixBins; ++b) {
          if (hist[b] != 0) throw std::runtime_error("a pass left histogram bin " + std::to_string(b) + " set");
        }
      });
    });
  });
}

int emu_inq_quantize(int dtype, int vec, long long n, void* w, void* m, int thr_kind, double thr, long long n2) {
  return guarded([&] {
    float thr32;
    double thr64;
    const ScalarRef ref = scalar_ref(thr_kind, thr, &thr32, &thr64);
    // inq_kernel.cu clamps the exponent before the launch.
    const int e_min = static_cast<int>(std::max<long long>(std::min<long long>(n2, 1 << 20), -(1 << 20)));
    with_vec</*kFloatOnly=*/true>(dtype, vec, [&](auto types, auto v) {
      using T = typename decltype(types)::scalar_t;
      constexpr int V = decltype(v)::value;
      launch(elementwise_grid(n, V), [&] {
        inq_quantize_kernel<T, V>(n, static_cast<T*>(w), static_cast<T*>(m), ref, e_min);
      });
    });
  });
}

// scaled: act_quant (alpha given as kind/value), else int_quant; backward: the gradient kernel (g the incoming
// gradient).
int emu_act_quant(int dtype, int scaled, int backward, long long n, const void* g, const void* x, void* out,
                  int alpha_kind, double alpha, double low, double high) {
  return guarded([&] {
    float alpha32;
    double alpha64;
    const ScalarRef ref = scaled ? scalar_ref(alpha_kind, alpha, &alpha32, &alpha64) : ScalarRef{nullptr, 0, 0.0};
    dispatch<false>(dtype, [&](auto types) {
      using T = typename decltype(types)::scalar_t;
      using A = typename decltype(types)::acc_t;
      const A lo = static_cast<A>(low), hi = static_cast<A>(high);
      const T* xp = static_cast<const T*>(x);
      T* op = static_cast<T*>(out);
      launch(elementwise_grid(n, 1), [&] {
        if (backward) {
          if (scaled) {
            act_quant_backward_kernel<T, A, true>(n, static_cast<const T*>(g), xp, op, ref, lo, hi);
          } else {
            act_quant_backward_kernel<T, A, false>(n, static_cast<const T*>(g), xp, op, ref, lo, hi);
          }
        } else if (scaled) {
          act_quant_kernel<T, A, true>(n, xp, op, ref, lo, hi);
        } else {
          act_quant_kernel<T, A, false>(n, xp, op, ref, lo, hi);
        }
      });
    });
  });
}

// dequant: quant_weight, else quant_weight_codes; m may be null; alpha has one entry per row of row_len.
int emu_quant_weight(int dtype, int dequant, long long n, long long row_len, const void* w, const void* m,
                     const void* alpha, void* out, double low, double high) {
  return guarded([&] {
    dispatch<false>(dtype, [&](auto types) {
      using T = typename decltype(types)::scalar_t;
      using A = typename decltype(types)::acc_t;
      const A lo = static_cast<A>(low), hi = static_cast<A>(high);
      launch(elementwise_grid(n, 1), [&] {
        if (dequant) {
          quant_weight_kernel<T, A, true>(n, row_len, static_cast<const T*>(w), static_cast<const T*>(m),
                                          static_cast<const T*>(alpha), static_cast<T*>(out), lo, hi);
        } else {
          quant_weight_kernel<T, A, false>(n, row_len, static_cast<const T*>(w), static_cast<const T*>(m),
                                           static_cast<const T*>(alpha), static_cast<T*>(out), lo, hi);
        }
      });
    });
  });
}

// mask may be null (the unmasked kernel); vec as above (the op also needs the mask aligned for packs).
int emu_sgd_momentum_update(int dtype, int vec, long long n, void* g, void* h, const void* mask, double momentum,
                            double local_rate) {
  return guarded([&] {
    with_vec(dtype, vec, [&](auto types, auto v) {
      using T = typename decltype(types)::scalar_t;
      using A = typename decltype(types)::acc_t;
      constexpr int V = decltype(v)::value;
      const A mom = static_cast<A>(momentum), rate = static_cast<A>(local_rate);
      launch(elementwise_grid(n, V), [&] {
        if (mask != nullptr) {
          sgd_momentum_update_kernel<T, A, V, true>(n, static_cast<T*>(g), static_cast<T*>(h),
                                                    static_cast<const T*>(mask), mom, rate);
        } else {
          sgd_momentum_update_kernel<T, A, V, false>(n, static_cast<T*>(g), static_cast<T*>(h), nullptr, mom, rate);
        }
      });
    });
  });
}

}  // extern "C"

// ---- deliberately wrong kernels: the emulator must show what each does wrong ----

namespace {

int shared_sum_launch = 0;

// Thread 0 sums what every thread wrote to shared memory; without the barrier it reads whatever is there when
// its turn comes (this launch's values, or stale ones).
void shared_sum_kernel(int synced, int* result) {
  __shared__ int values[kThreads];
  values[threadIdx.x] = shared_sum_launch;
  if (synced) __syncthreads();
  if (threadIdx.x == 0) {
    int sum = 0;
    for (int t = 0; t < kThreads; ++t) sum += values[t];
    *result = sum;
  }
}

// The last lane of warp 0 returns before a full-mask shuffle of its warp (undefined on a GPU).
void exited_lane_kernel(int* result) {
  if (threadIdx.x == 31) return;
  const int v = __shfl_down_sync(0xffffffffu, int(threadIdx.x), 1);
  if (threadIdx.x == 0) *result = v;
}

// Half of warp 0 shuffles while the other half waits at __syncthreads: neither can finish.
void divergent_kernel(int* result) {
  if (threadIdx.x % 32 < 16) {
    *result += __shfl_down_sync(0xffffffffu, 1, 1);
  } else {
    __syncthreads();
  }
}

}  // namespace

extern "C" {

// *result: the sum thread 0 saw; the launch's expected sum is kThreads * launch number (returned in *expected).
int emu_selftest_shared_sum(int synced, int* result, int* expected) {
  return guarded([&] {
    ++shared_sum_launch;
    launch(1, [&] { shared_sum_kernel(synced, result); });
    *expected = kThreads * shared_sum_launch;
  });
}

int emu_selftest_exited_lane_shuffle(int* result) {
  return guarded([&] { launch(1, [&] { exited_lane_kernel(result); }); });
}

int emu_selftest_divergent_barrier(int* result) {
  return guarded([&] { launch(1, [&] { divergent_kernel(result); }); });
}

}  // extern "C"
