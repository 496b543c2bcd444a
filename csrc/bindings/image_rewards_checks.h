// Argument checks shared by the CPU and CUDA impls of rmmd_core::grayscale_reward / laplacian_reward; they
// mirror the fake kernels and the Python validator (rmmd_core/ops/image_rewards.py) and name the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "posterior_step_checks.h"  // is_supported_data_dtype

namespace rmmd {

// channels < 0: any number of channels (K4b); else exactly that many (K4a: 3).
inline void check_image_reward_args(const char* op, const at::Tensor& x0, int64_t channels) {
  TORCH_CHECK(is_supported_data_dtype(x0.scalar_type()), "rmmd_core::", op,
              ": x0 must be float32, float64, float16 or bfloat16, got ", x0.scalar_type());
  TORCH_CHECK(x0.dim() == 4 && (channels < 0 || x0.size(1) == channels), "rmmd_core::", op,
              ": x0 must have shape (B, ", channels < 0 ? "C" : "3", ", H, W), got ", x0.sizes());
}

}  // namespace rmmd
