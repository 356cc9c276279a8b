// MAX pooling, per window element (ATen's rule, which the layers' pooling reproduces).
#pragma once

#include "common.h"

namespace netcompress {
namespace kernels {

// Whether v replaces the running maximum: strictly larger (the first maximum in row-major order wins ties),
// or NaN (NaN propagates; of several, the last is kept). Written with `|`, so that it becomes selects.
template <typename acc_t>
NC_HD inline bool max_pool_takes(acc_t v, acc_t best) {
  return (v > best) | (v != v);
}

}  // namespace kernels
}  // namespace netcompress
