// rmmd_core::grad_norm and rmmd_core::grad_scale: schemas (TORCH_LIBRARY_FRAGMENT) and CPU impls. CUDA
// impls: cuda_ops_grad_norm.cpp; fake kernels: rmmd_core/ops/grad_norm.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../cpu/grad_norm_cpu.h"
#include "grad_norm_checks.h"

namespace rmmd {
namespace {

at::Tensor grad_norm_cpu(at::TensorList tensors) {
  check_grad_tensors("grad_norm", tensors);
  if (tensors.empty()) return at::zeros({}, at::TensorOptions().dtype(at::kFloat));  // float32 zero on the CPU
  TORCH_CHECK(tensors[0].device().is_cpu(), "rmmd_core::grad_norm (CPU kernel): tensors must be CPU tensors, got ",
              tensors[0].device());
  return grad_norm_cpu_kernel(tensors);
}

void grad_scale_cpu(at::TensorList tensors, const at::Tensor& coef) {
  check_grad_scale_args(tensors, coef);
  if (tensors.empty()) return;
  TORCH_CHECK(tensors[0].device().is_cpu(), "rmmd_core::grad_scale (CPU kernel): tensors must be CPU tensors, got ",
              tensors[0].device());
  grad_scale_cpu_kernel(tensors, coef.item<double>());  // a CPU read: exact for every floating coef dtype
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rmmd_core, m) {
  // Global L2 norm of a tensor list (gradient clipping): sqrt(sum_i sum_j tensors[i][j]^2), squares
  // accumulated in float64 with chunk partials added in a fixed order; a 0-d float32 tensor (float64 if
  // any input is float64) on the tensors' device; an empty list gives a float32 zero on the CPU.
  m.def("grad_norm(Tensor[] tensors) -> Tensor");
  // In place, for every i: tensors[i] <- tensors[i] * coef, coef a 0-d / 1-element floating tensor on the
  // tensors' device; float32 math (float64 for float64 tensors), one rounding: torch._foreach_mul_'s bits.
  m.def("grad_scale(Tensor(a!)[] tensors, Tensor coef) -> ()");
}

TORCH_LIBRARY_IMPL(rmmd_core, CPU, m) {
  m.impl("grad_norm", &grad_norm_cpu);
  m.impl("grad_scale", &grad_scale_cpu);
}

}  // namespace rmmd
