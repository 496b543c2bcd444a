// Argument checks of rmmd_core::renoise (CPU and CUDA impls); they mirror rmmd_core/ops/renoise.py.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "posterior_step_checks.h"  // is_supported_data_dtype

namespace rmmd {

inline void check_renoise_args(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& sigma, int64_t seed,
                               int64_t offset) {
  TORCH_CHECK(x.dim() >= 1, "rmmd_core::renoise: x must have a leading batch dimension, got a 0-d tensor");
  TORCH_CHECK(is_supported_data_dtype(x.scalar_type()),
              "rmmd_core::renoise: x must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{alpha, "alpha"}, {sigma, "sigma"}}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(0), "rmmd_core::renoise: ", name, " must have shape (B,) = (",
                x.size(0), ",), got ", t.sizes());
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), "rmmd_core::renoise: ", name, " must be a floating tensor, got ",
                t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), "rmmd_core::renoise: ", name, " is on ", t.device(), " but x is on ",
                x.device());
  }
  TORCH_CHECK(seed >= 0, "rmmd_core::renoise: seed must be non-negative, got ", seed);
  TORCH_CHECK(offset >= 0, "rmmd_core::renoise: offset must be non-negative, got ", offset);
}

}  // namespace rmmd
