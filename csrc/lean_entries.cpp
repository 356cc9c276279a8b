// Lean Python entries for the ops whose eager equivalent is one ATen call (issue 20: no op slower than its
// eager composition at >= 1e4 elements, no Python on the hot path).
//
// `torch.ops.netcompress.op(...)` parses its arguments against the schema into a boxed stack and calls the
// boxed kernel: ~0.4 us a call on a CPU, as much as W⊙M itself takes on 1e4 floats. An entry here unpacks
// the tensors and makes the same dispatcher call unboxed, so autograd, every backend, the meta and fake
// kernels, the profiler's record and the error messages are those of the op. It serves plain tensors and
// parameters passed by position while no __torch_function__ mode is active; anything else (a tensor subclass,
// a mode, keywords, a wrong argument) goes to torch.ops.netcompress.<op> as it is, so that the two are the same
// to a caller. Under torch.compile the Python wrappers call torch.ops, which Dynamo can trace.
#include <Python.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <array>
#include <cstdint>
#include <string>
#include <utility>

namespace netcompress {
namespace {

// CPU calls on fewer elements keep the GIL: they take a few microseconds, and releasing and taking it back costs
// ~0.15 us (a quarter of a 16-element call). Every other call releases it, as ATen's bindings do: a longer CPU
// call so that other Python threads (a data layer's prefetch) run meanwhile, and any device call because a
// kernel launch can wait for room in the device's queue.
constexpr int64_t kKeepGilBelow = 1 << 15;

template <size_t>
using TensorArg = const at::Tensor&;

template <size_t... I>
auto tensor_op_signature(std::index_sequence<I...>) -> at::Tensor (*)(TensorArg<I>...);

// at::Tensor(const at::Tensor&, ... N times)
template <size_t N>
using TensorOp = std::remove_pointer_t<decltype(tensor_op_signature(std::make_index_sequence<N>{}))>;

// One op `netcompress::<name>(Tensor × N) -> Tensor`: its unboxed handle and torch.ops' callable.
template <size_t N>
class LeanEntry {
 public:
  explicit LeanEntry(const char* name)
      : op_(c10::Dispatcher::singleton()
                .findSchemaOrThrow((std::string("netcompress::") + name).c_str(), "")
                .typed<TensorOp<N>>()),
        boxed_(torch_ops_callable(name)) {}

  PyObject* operator()(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) const {
    if (kwnames != nullptr || !plain_tensors(args, nargs)) return PyObject_Vectorcall(boxed_, args, nargs, kwnames);
    std::array<const at::Tensor*, N> t;
    for (size_t i = 0; i < N; ++i) t[i] = &THPVariable_Unpack(args[i]);
    if (t[0]->is_cpu() && t[0]->numel() < kKeepGilBelow) {
      return THPVariable_Wrap(call(t, std::make_index_sequence<N>{}));
    }
    at::Tensor out;
    {
      pybind11::gil_scoped_release no_gil;
      out = call(t, std::make_index_sequence<N>{});
    }
    return THPVariable_Wrap(std::move(out));
  }

 private:
  // Exactly N tensors or parameters (what torch.ops would hand straight to the dispatcher).
  static bool plain_tensors(PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != static_cast<Py_ssize_t>(N) || at::impl::torch_function_mode_enabled()) return false;
    for (size_t i = 0; i < N; ++i) {
      if (!THPVariable_CheckExact(args[i])) return false;
    }
    return true;
  }

  template <size_t... I>
  at::Tensor call(const std::array<const at::Tensor*, N>& t, std::index_sequence<I...>) const {
    return op_.call(*t[I]...);
  }

  // torch.ops.netcompress.<name>, held for the life of the process.
  static PyObject* torch_ops_callable(const char* name) {
    PyObject* obj = PyImport_ImportModule("torch");
    for (const char* attr : {"ops", "netcompress", name}) {
      if (obj == nullptr) break;
      PyObject* next = PyObject_GetAttrString(obj, attr);
      Py_DECREF(obj);
      obj = next;
    }
    if (obj == nullptr) throw python_error();
    return obj;
  }

  c10::TypedOperatorHandle<TensorOp<N>> op_;
  PyObject* boxed_;
};

// The entries: a function-local static each, built on the first call (with the GIL held; a failure is raised
// and the next call tries again).
#define NC_LEAN_ENTRY(NAME, N)                                                                               \
  PyObject* py_##NAME(PyObject*, PyObject* const* args, Py_ssize_t nargsf, PyObject* kwnames) {            \
    HANDLE_TH_ERRORS                                                                                         \
    static const LeanEntry<N> entry(#NAME);                                                                  \
    return entry(args, PyVectorcall_NARGS(nargsf), kwnames);                                                 \
    END_HANDLE_TH_ERRORS                                                                                     \
  }

NC_LEAN_ENTRY(dns_masked_weight, 2)
NC_LEAN_ENTRY(to_channels_last, 1)
NC_LEAN_ENTRY(to_contiguous, 1)

#undef NC_LEAN_ENTRY

template <typename F>
PyCFunction as_cfunction(F* f) {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(f));
}

PyMethodDef lean_methods[] = {
    {"dns_masked_weight", as_cfunction(py_dns_masked_weight), METH_FASTCALL | METH_KEYWORDS,
     "dns_masked_weight(weight, mask): torch.ops.netcompress.dns_masked_weight without its boxed call."},
    {"to_channels_last", as_cfunction(py_to_channels_last), METH_FASTCALL | METH_KEYWORDS,
     "to_channels_last(x): torch.ops.netcompress.to_channels_last without its boxed call."},
    {"to_contiguous", as_cfunction(py_to_contiguous), METH_FASTCALL | METH_KEYWORDS,
     "to_contiguous(x): torch.ops.netcompress.to_contiguous without its boxed call."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

int add_lean_entries(PyObject* module) {
  return PyModule_AddFunctions(module, lean_methods);
}

}  // namespace netcompress
