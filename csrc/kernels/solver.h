// SGD momentum update with INQ freezing, per element (reference-semantics §3.6, §4.4; Decision 5).
#pragma once

#include "common.h"

namespace netcompress {
namespace kernels {

// h <- momentum·h + local_rate·g, in the weight's arithmetic type as Caffe's Dtype kernels do.
template <typename acc_t>
NC_HD inline acc_t sgd_momentum(acc_t g, acc_t h, acc_t momentum, acc_t local_rate) {
  return add_rn(mul_rn(momentum, h), mul_rn(local_rate, g));
}

// Frozen (quantized) entries get a zero update and zero history: h <- h ⊙ mask, then g <- h.
template <typename acc_t>
NC_HD inline acc_t sgd_momentum_masked(acc_t g, acc_t h, acc_t m, acc_t momentum, acc_t local_rate) {
  return mul_rn(sgd_momentum(g, h, momentum, local_rate), m);
}

}  // namespace kernels
}  // namespace netcompress
