// rmmd_core::aux_loss: schema (TORCH_LIBRARY_FRAGMENT) and CPU impl. CUDA impl: cuda_ops_aux_loss.cpp;
// fake and autograd: rmmd_core/ops/aux_loss.py.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../cpu/aux_loss_cpu.h"
#include "aux_loss_checks.h"

namespace rmmd {
namespace {

std::tuple<at::Tensor, at::Tensor> aux_loss_cpu(const at::Tensor& o, const at::Tensor& x0, const at::Tensor& m_ref,
                                                const at::Tensor& w) {
  check_aux_loss_args(o, x0, m_ref, w);
  TORCH_CHECK(o.device().is_cpu(), "rmmd_core::aux_loss (CPU kernel): o must be a CPU tensor, got ", o.device());
  return aux_loss_cpu_kernel(o, x0, m_ref, w);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rmmd_core, m) {
  // Auxiliary loss and its output gradient, method.md §c.6 step 8 and §e K6:
  //   loss[b] = w[b] (1/D) (||x0[b] - o[b]||^2 + ||m_ref[b] - o[b]||^2)
  //   grad    = d(mean_b loss[b]) / do = (2 w[b] / (B D)) ((o - x0) + (o - m_ref))
  // o, x0, m_ref: same shape (B, ...), dtype and device; w: (B,) floating. Returns (loss (B,) float32 /
  // float64 for float64 data, grad contiguous like o).
  m.def("aux_loss(Tensor o, Tensor x0, Tensor m_ref, Tensor w) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rmmd_core, CPU, m) {
  m.impl("aux_loss", &aux_loss_cpu);
}

}  // namespace rmmd
