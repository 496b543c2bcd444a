// Argument checks shared by the CPU and CUDA impls of rmmd_core::posterior_step. They mirror the fake
// kernel (rmmd_core/ops/_library.py) and the Python validator (rmmd_core/ops/dispatch.py), so a direct
// torch.ops.rmmd_core.posterior_step call fails with the same argument names as the public API.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace rmmd {

inline bool is_supported_data_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_coefficient(const at::Tensor& coef, const char* name, const at::Tensor& z_t) {
  TORCH_CHECK(coef.dim() == 1 && coef.size(0) == z_t.size(0), "rmmd_core::posterior_step: ", name,
              " must have shape (B,) = (", z_t.size(0), ",), got ", coef.sizes());
  TORCH_CHECK(at::isFloatingType(coef.scalar_type()), "rmmd_core::posterior_step: ", name,
              " must be a floating tensor, got ", coef.scalar_type());
  TORCH_CHECK(coef.device() == z_t.device(), "rmmd_core::posterior_step: ", name, " is on ", coef.device(),
              " but z_t is on ", z_t.device());
}

inline void check_posterior_step_args(const at::Tensor& z_t, const at::Tensor& x_hat, const at::Tensor& A,
                                      const at::Tensor& C, const at::Tensor& gamma, int64_t seed,
                                      int64_t offset) {
  TORCH_CHECK(z_t.dim() >= 1, "rmmd_core::posterior_step: z_t must have a leading batch dimension, got a 0-d tensor");
  TORCH_CHECK(is_supported_data_dtype(z_t.scalar_type()),
              "rmmd_core::posterior_step: z_t must be float32, float64, float16 or bfloat16, got ",
              z_t.scalar_type());
  TORCH_CHECK(x_hat.sizes() == z_t.sizes(), "rmmd_core::posterior_step: x_hat has shape ", x_hat.sizes(),
              " but z_t has shape ", z_t.sizes());
  TORCH_CHECK(x_hat.scalar_type() == z_t.scalar_type(), "rmmd_core::posterior_step: x_hat has dtype ",
              x_hat.scalar_type(), " but z_t has dtype ", z_t.scalar_type());
  TORCH_CHECK(x_hat.device() == z_t.device(), "rmmd_core::posterior_step: x_hat is on ", x_hat.device(),
              " but z_t is on ", z_t.device());
  check_coefficient(A, "A", z_t);
  check_coefficient(C, "C", z_t);
  check_coefficient(gamma, "gamma", z_t);
  TORCH_CHECK(seed >= 0, "rmmd_core::posterior_step: seed must be non-negative, got ", seed);
  TORCH_CHECK(offset >= 0, "rmmd_core::posterior_step: offset must be non-negative, got ", offset);
}

}  // namespace rmmd
