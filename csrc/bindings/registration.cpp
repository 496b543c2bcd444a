// Operator schemas of the rmmd_core namespace, defined once here; device kernels are registered in
// cpu_ops.cpp / cuda_ops.cpp, fakes and autograd in rmmd_core/ops/_library.py.
//
// There is deliberately no pybind11: importing rmmd_core._C only has to load this shared object so the
// static TORCH_LIBRARY / TORCH_LIBRARY_IMPL registrations run (pytorch/extension-cpp does the same).
// Keeping Python usage to PyModule_Create also keeps Py_LIMITED_API a one-flag change.
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // m_name
      "rmmd_core C++/CUDA operators; import only to register torch.ops.rmmd_core.*",  // m_doc
      -1,    // m_size: no per-module state
      nullptr,  // m_methods: everything is reached through torch.ops
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(rmmd_core, m) {
  // Posterior / DDIM(eta) step, method.md §a.4 and §e K1:
  //   z_s[b, j] = A[b] * z_t[b, j] + C[b] * x_hat[b, j] + gamma[b] * n[b * D + j]
  // z_t, x_hat: same shape (B, ...), dtype (float32/float64/float16/bfloat16) and device; D = numel / B.
  // A, C, gamma: (B,) floating, read as float32 (float64 when the data is float64).
  // n[i] = Philox-4x32-10 randn at counter offset + i with key seed, the stream of Triton's
  // tl.randn(seed, offset + i) (csrc/common/philox.h); samples with gamma[b] == 0 draw no noise.
  // seed in [0, 2^63), offset >= 0. Returns a new contiguous tensor shaped like z_t.
  // Autograd (Python): grad_z_t = A[b] * grad, grad_x_hat = C[b] * grad; A, C, gamma get none.
  m.def("posterior_step(Tensor z_t, Tensor x_hat, Tensor A, Tensor C, Tensor gamma, int seed, int offset) -> Tensor");
  // Device-seed twin, for CUDA-graph capture: seed and offset are one-element int64 tensors on z_t's device,
  // read by the kernel (never on the host for CUDA), so a replay draws the noise of whatever the caller
  // copied into them; otherwise identical (same kernel, same stream bit for bit).
  m.def("posterior_step_dev(Tensor z_t, Tensor x_hat, Tensor A, Tensor C, Tensor gamma, Tensor seed, Tensor offset) "
        "-> Tensor");
}
