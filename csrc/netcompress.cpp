// The netcompress._C extension: every op schema, in one place.
//
// Backends register implementations in cpu/*_kernel.cpp and cuda/*_kernel.cu (TORCH_LIBRARY_IMPL), the
// differentiable ops their autograd in autograd.cpp; fake kernels and the typed Python wrappers live in
// netcompress/ops/<family>.py.
// Mutating ops are declared Tensor(a!) and return (). Scalars that come from another op (DNS thresholds,
// the INQ selection threshold) are one-element tensors, so a whole DNS or INQ step runs without a host sync.
#include <Python.h>

#include <torch/csrc/Exceptions.h>
#include <torch/library.h>

TORCH_LIBRARY(netcompress, m) {
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};

  // ---- DNS (reference-semantics §2) ----
  // W ⊙ M. Autograd passes the incoming gradient to `weight` unmasked ("splicing", §2.4); `mask` gets none.
  m.def("dns_masked_weight(Tensor weight, Tensor mask) -> Tensor", tags);
  // float64 [mu, std, n_weight, n_bias] over the masked nonzero entries of weight and bias together (§2.3.1).
  m.def("dns_stats(Tensor weight, Tensor weight_mask, Tensor? bias=None, Tensor? bias_mask=None) -> Tensor", tags);
  // One pass: the mask rule of §2.3.4 with one-element thresholds, then masked_out = weight ⊙ mask_new.
  m.def("dns_update_mask_(Tensor weight, Tensor(a!) mask, Tensor threshold_low, Tensor threshold_high, "
        "Tensor(b!) masked_out) -> ()", tags);
  // One backward call's gradient rule (§2.4) in one pass: diff <- mask ⊙ diff + grad.
  m.def("dns_splice_grad_(Tensor(a!) diff, Tensor mask, Tensor grad) -> ()", tags);

  // ---- INQ (reference-semantics §3) ----
  // float64 [max|v| over mask==1, max|v| over mask==0, #mask==1, #mask==0, #other] (maxima −1 if none; §3.3).
  m.def("inq_mask_stats(Tensor weight, Tensor mask) -> Tensor", tags);
  // 0-dim: the n_keep-th smallest |v| among mask == 1 entries, counting from 0 (§3.4); +inf if there is none.
  m.def("inq_threshold(Tensor weight, Tensor mask, int n_keep) -> Tensor", tags);
  // mask == 1 ∧ |v| >= threshold: v <- power-of-two rounding with smallest exponent n2 (§3.5), mask <- 0.
  m.def("inq_quantize_(Tensor(a!) weight, Tensor(b!) mask, Tensor threshold, int n2) -> ()", tags);

  // ---- Quantization (recipes-spec §4.5, §4.6, §5.2: MicroNet's ActQuant, weight quantizer, IntQuant) ----
  // round is half to even (torch.round); a scale α == 0 gives the code 0. Autograd is the straight-through
  // estimator: the activation ops' private backwards pass grad where lo <= round(x/α) <= hi, else 0.
  // α·clamp(round(x/α), low, high), α a one-element tensor on x's device or the CPU.
  m.def("act_quant(Tensor x, Tensor alpha, float low, float high) -> Tensor", tags);
  m.def("_act_quant_backward(Tensor grad, Tensor x, Tensor alpha, float low, float high) -> Tensor", tags);
  // clamp(round(x), low, high).
  m.def("int_quant(Tensor x, float low, float high) -> Tensor", tags);
  m.def("_int_quant_backward(Tensor grad, Tensor x, float low, float high) -> Tensor", tags);
  // Per row r (weight.size(0) rows, one output channel each), v = weight ⊙ mask:
  // α_r·clamp(round(v/α_r), low, high).
  // Autograd gives weight the incoming gradient unchanged (dW = dWq, unmasked); mask and alpha get none.
  m.def("quant_weight(Tensor weight, Tensor? mask, Tensor alpha, float low, float high) -> Tensor", tags);
  // The integer codes clamp(round(v/α_r), low, high) of the same rule, in the weight's dtype (the ALS fit, merge).
  m.def("quant_weight_codes(Tensor weight, Tensor? mask, Tensor alpha, float low, float high) -> Tensor", tags);

  // ---- Pooling (the layers' MAX pooling; ATen's CPU kernel for NCHW is several times slower) ----
  // aten::max_pool2d_with_indices with dilation 1, same values and indices (int64, flat in the H×W plane,
  // first maximum in row-major order, NaN propagates); its gradient is aten::max_pool2d_with_indices_backward.
  m.def("max_pool2d(Tensor self, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode) -> "
        "(Tensor, Tensor)", tags);
  // Its gradient: aten::max_pool2d_with_indices_backward(grad, self, kernel_size, stride, padding, [1, 1],
  // ceil_mode, indices), bit for bit (the CPU writes windows that tile the input in one pass).
  m.def("_max_pool2d_backward(Tensor grad, Tensor self, Tensor indices, int[2] kernel_size, int[2] stride, "
        "int[2] padding, bool ceil_mode) -> Tensor", tags);

  // ---- Memory order of 4-D activations (the CPU convolutions' channels-last edges, layers/vision.py) ----
  // A copy of x (N, C, H, W) in channels-last (NHWC) order: `x.contiguous(memory_format=torch.channels_last)`'s
  // values, always a new tensor (a tiled transpose on the CPU; ATen's copy on CUDA).
  m.def("to_channels_last(Tensor x) -> Tensor", tags);
  // A copy of x in contiguous (NCHW) order: `x.contiguous()`'s values, always a new tensor.
  m.def("to_contiguous(Tensor x) -> Tensor", tags);

  // ---- Convolution by NNPACK (CPU only: the 2-D convolutions layers/vision.py gives it, cpu_fft_conv) ----
  // F.conv2d(x, weight, bias, stride=1, padding=padding) for float32 NCHW, kernels up to 16x16, each padding below
  // the kernel size,
  // by NNPACK's FFT / Winograd tiles (its rounding, not oneDNN's); the same values on any number of threads. An
  // output channel whose kernel is all zeros is its bias exactly (0 without one), as a direct convolution gives.
  m.def("nnpack_conv2d(Tensor x, Tensor weight, Tensor? bias, int[2] padding) -> Tensor", tags);

  // ---- Convolution over the nonzero weights (CPU only: pruned kernels, layers/vision.py cpu_sparse_conv) ----
  // F.conv2d(x, weight, bias, stride=1, padding=padding) for float32 NCHW as a direct sum over the kernel's nonzero
  // weights: windows that agree where the kernel is nonzero give the same bits; the same values on any number of
  // threads. An output channel whose kernel is all zeros is its bias exactly (0 without one).
  m.def("sparse_conv2d(Tensor x, Tensor weight, Tensor? bias, int[2] padding) -> Tensor", tags);
  // Its data gradient: the gradient of x (N, C, input_size) for the output gradient grad_out, over the nonzero
  // weights only (float32; the same values on any number of threads).
  m.def("sparse_conv2d_input(Tensor grad_out, Tensor weight, int[2] input_size, int[2] padding) -> Tensor", tags);
  // The weight and bias gradients of F.conv2d(x, weight, bias, stride=1, padding=padding) for the output gradient
  // grad_out, every weight's as a direct dot product (float32; the samples' sums added in a fixed order: the same
  // values on any number of threads).
  m.def("direct_conv2d_weight(Tensor x, Tensor grad_out, int[2] kernel_size, int[2] padding) -> (Tensor, Tensor)",
        tags);

  // ---- Solver (reference-semantics §4.4, §3.6) ----
  // history <- mask ⊙ (momentum·history + local_rate·grad); grad <- history. No mask: plain SGD momentum.
  m.def("sgd_momentum_update_(Tensor(a!) grad, Tensor(b!) history, Tensor? mask, float momentum, "
        "float local_rate) -> ()", tags);
}

namespace netcompress {
const char* direct_sum_simd();             // csrc/cpu/sparse_conv_kernel.cpp
const char* nnpack_calls();                // csrc/cpu/nnpack_conv_kernel.cpp
int add_lean_entries(PyObject* module);  // csrc/lean_entries.cpp
}  // namespace netcompress

static PyObject* py_direct_sum_simd(PyObject*, PyObject*) {
  HANDLE_TH_ERRORS
  return PyUnicode_FromString(netcompress::direct_sum_simd());
  END_HANDLE_TH_ERRORS
}

static PyObject* py_nnpack_calls(PyObject*, PyObject*) {
  return PyUnicode_FromString(netcompress::nnpack_calls());
}

static PyMethodDef netcompress_methods[] = {
    {"direct_sum_simd", py_direct_sum_simd, METH_NOARGS,
     "The vector instructions the CPU direct-sum convolutions run with now: 'avx512', 'avx2' or 'baseline'."},
    {"nnpack_calls", py_nnpack_calls, METH_NOARGS,
     "How nnpack_conv2d reaches NNPACK: 'direct' (its own calls and workspaces), 'aten' (ATen's entry) or 'none'."},
    {nullptr, nullptr, 0, nullptr}};

// `import netcompress._C` loads this library, which runs the registrations above. The module itself
// tells Python whether CUDA kernels were compiled in, which vector instructions the direct sums use, how the
// FFT convolutions reach NNPACK, and holds the lean entries of csrc/lean_entries.cpp.
static struct PyModuleDef netcompress_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, netcompress_methods};

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&netcompress_module);
  if (module == nullptr) return nullptr;
#ifdef NETCOMPRESS_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(module, "with_cuda", with_cuda) != 0 || netcompress::add_lean_entries(module) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
