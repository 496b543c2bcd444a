// Argument checks of rmmd_core::crps_fair and rmmd_core::forecast_stats (CPU and CUDA impls); they mirror
// the fake kernels in rmmd_core/ops/crps.py, so a direct torch.ops call fails naming the argument.
// Value checks (NaN targets, negative weights) are the Python entry points' job: they need data access.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "posterior_step_checks.h"  // is_supported_data_dtype

namespace rmmd {

inline void check_crps_common_args(const char* op, const at::Tensor& ens, const at::Tensor& target,
                                   const at::Tensor& weight, const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(ens.dim() >= 2 && ens.size(0) >= 2, "rmmd_core::", op,
              ": ens must have shape (M, B, ...) with M >= 2, got ", ens.sizes());
  TORCH_CHECK(is_supported_data_dtype(ens.scalar_type()), "rmmd_core::", op,
              ": ens must be float32, float64, float16 or bfloat16, got ", ens.scalar_type());
  TORCH_CHECK(target.sizes() == ens.sizes().slice(1), "rmmd_core::", op, ": target must have shape ",
              ens.sizes().slice(1), ", got ", target.sizes());
  TORCH_CHECK(target.scalar_type() == ens.scalar_type(), "rmmd_core::", op, ": target has dtype ",
              target.scalar_type(), " but ens has dtype ", ens.scalar_type());
  TORCH_CHECK(target.device() == ens.device(), "rmmd_core::", op, ": target is on ", target.device(),
              " but ens is on ", ens.device());
  int64_t D = 1;  // per-sample numel, also for B = 0
  for (int64_t k = 2; k < ens.dim(); ++k) D *= ens.size(k);
  TORCH_CHECK(weight.dim() == 1 && (weight.size(0) == D || weight.size(0) == 1) && weight.scalar_type() == at::kDouble,
              "rmmd_core::", op, ": weight must be float64 of shape (D,) = (", D, ",) or (1,), got ", weight.sizes(),
              " ", weight.scalar_type());
  TORCH_CHECK(weight.device() == ens.device(), "rmmd_core::", op, ": weight is on ", weight.device(),
              " but ens is on ", ens.device());
  if (mask.has_value()) {
    TORCH_CHECK(mask->sizes() == target.sizes() && mask->scalar_type() == at::kBool, "rmmd_core::", op,
                ": mask must be bool of shape ", target.sizes(), ", got ", mask->sizes(), " ", mask->scalar_type());
    TORCH_CHECK(mask->device() == ens.device(), "rmmd_core::", op, ": mask is on ", mask->device(), " but ens is on ",
                ens.device());
  }
}

inline void check_crps_fair_args(const at::Tensor& ens, const at::Tensor& target, const at::Tensor& weight,
                                 const at::Tensor& inv_norm, const std::optional<at::Tensor>& mask) {
  check_crps_common_args("crps_fair", ens, target, weight, mask);
  TORCH_CHECK(inv_norm.dim() == 1 && inv_norm.size(0) == ens.size(1) && inv_norm.scalar_type() == at::kDouble,
              "rmmd_core::crps_fair: inv_norm must be float64 of shape (B,) = (", ens.size(1), ",), got ",
              inv_norm.sizes(), " ", inv_norm.scalar_type());
  TORCH_CHECK(inv_norm.device() == ens.device(), "rmmd_core::crps_fair: inv_norm is on ", inv_norm.device(),
              " but ens is on ", ens.device());
}

inline void check_forecast_stats_args(const at::Tensor& ens, const at::Tensor& target, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& mask, int64_t variables, int64_t inner) {
  check_crps_common_args("forecast_stats", ens, target, weight, mask);
  TORCH_CHECK(variables >= 1 && inner >= 1, "rmmd_core::forecast_stats: variables and inner must be >= 1, got ",
              variables, ", ", inner);
  TORCH_CHECK(target.numel() % (variables * inner) == 0, "rmmd_core::forecast_stats: variables * inner = ",
              variables * inner, " must divide the target's numel ", target.numel());
}

}  // namespace rmmd
