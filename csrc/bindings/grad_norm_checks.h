// Argument checks shared by the CPU and CUDA impls of rmmd_core::grad_norm and rmmd_core::grad_scale;
// they mirror the fake kernels and the Python validators (rmmd_core/ops/grad_norm.py) and name the
// offending argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "posterior_step_checks.h"  // is_supported_data_dtype

namespace rmmd {

// Every tensors[i] floating (fp32 / fp64 / fp16 / bf16) and on tensors[0]'s device.
inline void check_grad_tensors(const char* op, at::TensorList tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(is_supported_data_dtype(t.scalar_type()), "rmmd_core::", op, ": tensors[", i,
                "] must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
    TORCH_CHECK(t.device() == tensors[0].device(), "rmmd_core::", op, ": tensors[", i, "] is on ", t.device(),
                " but tensors[0] is on ", tensors[0].device());
  }
}

// coef: a 0-d / 1-element floating tensor on the tensors' device (when there are tensors).
inline void check_grad_scale_args(at::TensorList tensors, const at::Tensor& coef) {
  check_grad_tensors("grad_scale", tensors);
  TORCH_CHECK(coef.numel() == 1, "rmmd_core::grad_scale: coef must be a 0-d or 1-element tensor, got shape ",
              coef.sizes());
  TORCH_CHECK(is_supported_data_dtype(coef.scalar_type()),
              "rmmd_core::grad_scale: coef must be float32, float64, float16 or bfloat16, got ", coef.scalar_type());
  TORCH_CHECK(tensors.empty() || coef.device() == tensors[0].device(), "rmmd_core::grad_scale: coef is on ",
              coef.device(), " but tensors[0] is on ", (tensors.empty() ? coef.device() : tensors[0].device()));
}

}  // namespace rmmd
