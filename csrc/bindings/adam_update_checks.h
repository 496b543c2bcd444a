// Argument checks shared by the CPU and CUDA impls of rmmd_core::adam_update; they mirror the fake kernel
// and the Python validator (rmmd_core/ops/adam_update.py) and name the offending argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "posterior_step_checks.h"  // is_supported_data_dtype

namespace rmmd {

// The scalars every backend receives (validated here, passed on as doubles).
struct AdamScalars {
  double step_size, beta1, beta2, eps, bias_correction2_sqrt, weight_decay, grad_scale, ema_decay;
};

inline void check_adam_update_args(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                                   at::TensorList exp_avg_sqs, at::TensorList ema, const AdamScalars& s) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n, "rmmd_core::adam_update: grads has ", grads.size(), " tensors but params has ", n);
  TORCH_CHECK(exp_avgs.size() == n, "rmmd_core::adam_update: exp_avgs has ", exp_avgs.size(),
              " tensors but params has ", n);
  TORCH_CHECK(exp_avg_sqs.size() == n, "rmmd_core::adam_update: exp_avg_sqs has ", exp_avg_sqs.size(),
              " tensors but params has ", n);
  TORCH_CHECK(ema.empty() || ema.size() == n, "rmmd_core::adam_update: ema has ", ema.size(),
              " tensors, expected 0 or ", n);
  TORCH_CHECK(s.step_size >= 0.0 && std::isfinite(s.step_size), "rmmd_core::adam_update: step_size must be a finite "
              "value >= 0, got ", s.step_size);
  TORCH_CHECK(s.beta1 >= 0.0 && s.beta1 < 1.0, "rmmd_core::adam_update: beta1 must be in [0, 1), got ", s.beta1);
  TORCH_CHECK(s.beta2 >= 0.0 && s.beta2 < 1.0, "rmmd_core::adam_update: beta2 must be in [0, 1), got ", s.beta2);
  TORCH_CHECK(s.eps >= 0.0 && std::isfinite(s.eps), "rmmd_core::adam_update: eps must be a finite value >= 0, got ",
              s.eps);
  TORCH_CHECK(s.bias_correction2_sqrt > 0.0 && std::isfinite(s.bias_correction2_sqrt),
              "rmmd_core::adam_update: bias_correction2_sqrt must be finite and > 0, got ", s.bias_correction2_sqrt);
  TORCH_CHECK(s.weight_decay >= 0.0 && std::isfinite(s.weight_decay),
              "rmmd_core::adam_update: weight_decay must be a finite value >= 0, got ", s.weight_decay);
  TORCH_CHECK(s.grad_scale > 0.0 && std::isfinite(s.grad_scale),
              "rmmd_core::adam_update: grad_scale must be finite and > 0, got ", s.grad_scale);
  TORCH_CHECK(s.ema_decay >= 0.0 && s.ema_decay <= 1.0, "rmmd_core::adam_update: ema_decay must be in [0, 1], got ",
              s.ema_decay);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(is_supported_data_dtype(p.scalar_type()), "rmmd_core::adam_update: params[", i,
                "] must be float32, float64, float16 or bfloat16, got ", p.scalar_type());
    TORCH_CHECK(p.device() == params[0].device(), "rmmd_core::adam_update: params[", i, "] is on ", p.device(),
                " but params[0] is on ", params[0].device());
    const at::Tensor* like[3] = {&grads[i], &exp_avgs[i], &exp_avg_sqs[i]};
    const char* names[3] = {"grads", "exp_avgs", "exp_avg_sqs"};
    for (int k = 0; k < 3; ++k) {
      const at::Tensor& t = *like[k];
      TORCH_CHECK(t.sizes() == p.sizes() && t.scalar_type() == p.scalar_type() && t.device() == p.device(),
                  "rmmd_core::adam_update: ", names[k], "[", i, "] must match params[", i, "] (shape ", p.sizes(),
                  ", ", p.scalar_type(), ", ", p.device(), "), got shape ", t.sizes(), ", ", t.scalar_type(), ", ",
                  t.device());
    }
    if (!ema.empty()) {
      const at::Tensor& e = ema[i];
      TORCH_CHECK(is_supported_data_dtype(e.scalar_type()), "rmmd_core::adam_update: ema[", i,
                  "] must be float32, float64, float16 or bfloat16, got ", e.scalar_type());
      TORCH_CHECK(e.sizes() == p.sizes() && e.device() == p.device(), "rmmd_core::adam_update: ema[", i,
                  "] must have params[", i, "]'s shape ", p.sizes(), " and device ", p.device(), ", got shape ",
                  e.sizes(), " on ", e.device());
    }
  }
}

}  // namespace rmmd
