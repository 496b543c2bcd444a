// Argument checks shared by the CPU and CUDA impls of rmmd_core::rmmd_cotangent. They mirror the fake
// kernel and the Python validator (rmmd_core/ops/rmmd_cotangent.py), so a direct torch.ops call fails
// with the same argument names as the public API.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>

#include "posterior_step_checks.h"  // is_supported_data_dtype

namespace rmmd {

inline void check_like_x0(const at::Tensor& t, const char* name, const at::Tensor& x0) {
  TORCH_CHECK(t.sizes() == x0.sizes(), "rmmd_core::rmmd_cotangent: ", name, " has shape ", t.sizes(),
              " but x0 has shape ", x0.sizes());
  TORCH_CHECK(t.scalar_type() == x0.scalar_type(), "rmmd_core::rmmd_cotangent: ", name, " has dtype ",
              t.scalar_type(), " but x0 has dtype ", x0.scalar_type());
  TORCH_CHECK(t.device() == x0.device(), "rmmd_core::rmmd_cotangent: ", name, " is on ", t.device(),
              " but x0 is on ", x0.device());
}

inline void check_rmmd_cotangent_args(const at::Tensor& x0, const at::Tensor& m_stu, const at::Tensor& m_ref,
                                      const std::optional<at::Tensor>& g_R, const std::optional<at::Tensor>& anchor,
                                      const at::Tensor& w, bool dmd, double dmd_eps) {
  TORCH_CHECK(x0.dim() >= 1, "rmmd_core::rmmd_cotangent: x0 must have a leading batch dimension, got a 0-d tensor");
  TORCH_CHECK(is_supported_data_dtype(x0.scalar_type()),
              "rmmd_core::rmmd_cotangent: x0 must be float32, float64, float16 or bfloat16, got ", x0.scalar_type());
  check_like_x0(m_stu, "m_stu", x0);
  check_like_x0(m_ref, "m_ref", x0);
  if (g_R.has_value()) check_like_x0(*g_R, "g_R", x0);
  if (anchor.has_value()) check_like_x0(*anchor, "anchor", x0);
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x0.size(0), "rmmd_core::rmmd_cotangent: w must have shape (B,) = (",
              x0.size(0), ",), got ", w.sizes());
  TORCH_CHECK(at::isFloatingType(w.scalar_type()), "rmmd_core::rmmd_cotangent: w must be a floating tensor, got ",
              w.scalar_type());
  TORCH_CHECK(w.device() == x0.device(), "rmmd_core::rmmd_cotangent: w is on ", w.device(), " but x0 is on ",
              x0.device());
  TORCH_CHECK(!dmd || (std::isfinite(dmd_eps) && dmd_eps > 0.0),
              "rmmd_core::rmmd_cotangent: dmd_eps must be a finite positive float with dmd=True, got ", dmd_eps);
}

}  // namespace rmmd
