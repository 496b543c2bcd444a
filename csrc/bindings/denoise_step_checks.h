// Argument checks of rmmd_core::denoise_step (CPU and CUDA impls); they mirror the fake kernel and the
// Python validator in rmmd_core/ops/denoise_step.py.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <utility>

#include "posterior_step_checks.h"  // is_supported_data_dtype

namespace rmmd {

inline void check_denoise_step_args(const at::Tensor& z_t, const at::Tensor& net_out, const at::Tensor& P,
                                    const at::Tensor& Q, const at::Tensor& gamma, const at::Tensor& a,
                                    const at::Tensor& c, int64_t seed, int64_t offset) {
  TORCH_CHECK(z_t.dim() >= 1, "rmmd_core::denoise_step: z_t must have a leading batch dimension, got a 0-d tensor");
  TORCH_CHECK(is_supported_data_dtype(z_t.scalar_type()),
              "rmmd_core::denoise_step: z_t must be float32, float64, float16 or bfloat16, got ", z_t.scalar_type());
  TORCH_CHECK(net_out.sizes() == z_t.sizes(), "rmmd_core::denoise_step: net_out has shape ", net_out.sizes(),
              " but z_t has shape ", z_t.sizes());
  TORCH_CHECK(net_out.scalar_type() == z_t.scalar_type(), "rmmd_core::denoise_step: net_out has dtype ",
              net_out.scalar_type(), " but z_t has dtype ", z_t.scalar_type());
  TORCH_CHECK(net_out.device() == z_t.device(), "rmmd_core::denoise_step: net_out is on ", net_out.device(),
              " but z_t is on ", z_t.device());
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{P, "P"}, {Q, "Q"}, {gamma, "gamma"},
                                {a, "a"}, {c, "c"}}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == z_t.size(0), "rmmd_core::denoise_step: ", name,
                " must have shape (B,) = (", z_t.size(0), ",), got ", t.sizes());
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), "rmmd_core::denoise_step: ", name,
                " must be a floating tensor, got ", t.scalar_type());
    TORCH_CHECK(t.device() == z_t.device(), "rmmd_core::denoise_step: ", name, " is on ", t.device(),
                " but z_t is on ", z_t.device());
  }
  TORCH_CHECK(seed >= 0, "rmmd_core::denoise_step: seed must be non-negative, got ", seed);
  TORCH_CHECK(offset >= 0, "rmmd_core::denoise_step: offset must be non-negative, got ", offset);
}

}  // namespace rmmd
