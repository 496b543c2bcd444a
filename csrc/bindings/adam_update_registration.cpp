// rmmd_core::adam_update: schema (TORCH_LIBRARY_FRAGMENT) and CPU impl. CUDA impl: cuda_ops_adam_update.cpp;
// fake kernel and the math: rmmd_core/ops/adam_update.py, rmmd_core/ops/adam_reference.py.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../cpu/adam_update_cpu.h"
#include "adam_update_checks.h"

namespace rmmd {
namespace {

void adam_update_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                     at::TensorList ema, double step_size, double beta1, double beta2, double eps,
                     double bias_correction2_sqrt, double weight_decay, double grad_scale, double ema_decay) {
  const AdamScalars s{step_size, beta1, beta2, eps, bias_correction2_sqrt, weight_decay, grad_scale, ema_decay};
  check_adam_update_args(params, grads, exp_avgs, exp_avg_sqs, ema, s);
  if (params.empty()) return;
  TORCH_CHECK(params[0].device().is_cpu(), "rmmd_core::adam_update (CPU kernel): params must be CPU tensors, got ",
              params[0].device());
  adam_update_cpu_kernel(params, grads, exp_avgs, exp_avg_sqs, ema, s);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rmmd_core, m) {
  // Fused clip scale + Adam + EMA over lists of tensors, in place (rmmd_core/ops/adam_reference.py):
  //   g <- g * grad_scale (written back when != 1);  g += weight_decay * p;  m <- lerp(m, g, 1 - beta1)
  //   v <- v beta2 + (1 - beta2) g g;  p <- p - step_size m / (sqrt(v) / bias_correction2_sqrt + eps)
  //   ema <- lerp(ema, p, 1 - ema_decay)   (ema empty: no EMA)
  m.def("adam_update(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, "
        "Tensor(e!)[] ema, float step_size, float beta1, float beta2, float eps, float bias_correction2_sqrt, "
        "float weight_decay, float grad_scale, float ema_decay) -> ()");
}

TORCH_LIBRARY_IMPL(rmmd_core, CPU, m) {
  m.impl("adam_update", &adam_update_cpu);
}

}  // namespace rmmd
