// MAX pooling on CUDA: ATen's kernel (composite.h); the CPU has its own (cpu/pool_kernel.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../composite.h"

TORCH_LIBRARY_IMPL(netcompress, CUDA, m) {
  m.impl("max_pool2d", &netcompress::max_pool2d_composite);
  m.impl("_max_pool2d_backward", &netcompress::max_pool2d_backward_composite);
}
