// Argument checks shared by the CPU and CUDA impls of rmmd_core::ema_update; they mirror the fake kernel
// and the Python validator (rmmd_core/ops/ema.py) and name the offending argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "posterior_step_checks.h"  // is_supported_data_dtype

namespace rmmd {

inline void check_ema_update_args(at::TensorList ema, at::TensorList params, double beta) {
  TORCH_CHECK(ema.size() == params.size(), "rmmd_core::ema_update: params has ", params.size(),
              " tensors but ema has ", ema.size());
  TORCH_CHECK(beta >= 0.0 && beta <= 1.0, "rmmd_core::ema_update: beta must be in [0, 1], got ", beta);
  for (size_t i = 0; i < ema.size(); ++i) {
    const at::Tensor& e = ema[i];
    const at::Tensor& p = params[i];
    TORCH_CHECK(is_supported_data_dtype(e.scalar_type()), "rmmd_core::ema_update: ema[", i,
                "] must be float32, float64, float16 or bfloat16, got ", e.scalar_type());
    TORCH_CHECK(is_supported_data_dtype(p.scalar_type()), "rmmd_core::ema_update: params[", i,
                "] must be float32, float64, float16 or bfloat16, got ", p.scalar_type());
    TORCH_CHECK(p.sizes() == e.sizes(), "rmmd_core::ema_update: params[", i, "] has shape ", p.sizes(), " but ema[",
                i, "] has shape ", e.sizes());
    TORCH_CHECK(p.device() == e.device() && e.device() == ema[0].device(), "rmmd_core::ema_update: params[", i,
                "] is on ", p.device(), " and ema[", i, "] on ", e.device(), " but ema[0] is on ", ema[0].device());
  }
}

}  // namespace rmmd
