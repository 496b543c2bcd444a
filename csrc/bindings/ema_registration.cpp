// rmmd_core::ema_update: schema (TORCH_LIBRARY_FRAGMENT) and CPU impl. CUDA impl: cuda_ops_ema_update.cpp;
// fake kernel: rmmd_core/ops/ema.py.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../cpu/ema_cpu.h"
#include "ema_checks.h"

namespace rmmd {
namespace {

void ema_update_cpu(at::TensorList ema, at::TensorList params, double beta) {
  check_ema_update_args(ema, params, beta);
  if (ema.empty()) return;
  TORCH_CHECK(ema[0].device().is_cpu(), "rmmd_core::ema_update (CPU kernel): ema must be CPU tensors, got ",
              ema[0].device());
  ema_update_cpu_kernel(ema, params, beta);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rmmd_core, m) {
  // Multi-tensor EMA, method.md §e K9: in place, for every i,
  //   ema[i] <- beta ema[i] + (1 - beta) params[i]      (as torch.lerp(ema[i], params[i], 1 - beta))
  // ema: floating tensors (fp32 master weights usually); params: same shapes and device, any floating
  // dtype; beta in [0, 1]. Math in float32 (float64 for a float64 EMA).
  m.def("ema_update(Tensor(a!)[] ema, Tensor[] params, float beta) -> ()");
}

TORCH_LIBRARY_IMPL(rmmd_core, CPU, m) {
  m.impl("ema_update", &ema_update_cpu);
}

}  // namespace rmmd
