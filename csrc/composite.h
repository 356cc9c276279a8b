// Ops that are ATen compositions, registered by a backend that has no kernel of its own for them.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace netcompress {

// The MAX pooling op on backends without their own kernel (CUDA: ATen's kernel is the fast one there).
inline std::tuple<at::Tensor, at::Tensor> max_pool2d_composite(const at::Tensor& self, at::IntArrayRef kernel_size,
                                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                                              bool ceil_mode) {
  return at::max_pool2d_with_indices(self, kernel_size, stride, padding, {1, 1}, ceil_mode);
}

inline at::Tensor max_pool2d_backward_composite(const at::Tensor& grad, const at::Tensor& self,
                                                const at::Tensor& indices, at::IntArrayRef kernel_size,
                                                at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode) {
  return at::max_pool2d_with_indices_backward(grad, self, kernel_size, stride, padding, {1, 1}, ceil_mode, indices);
}

// The layout ops (a copy in the other memory order) as ATen's copy: the CUDA kernels, and the CPU's for the
// tensors its transpose does not take.
inline at::Tensor to_channels_last_composite(const at::Tensor& x) {
  return x.clone(at::MemoryFormat::ChannelsLast);
}

inline at::Tensor to_contiguous_composite(const at::Tensor& x) {
  return x.clone(at::MemoryFormat::Contiguous);
}

}  // namespace netcompress
