// CPU kernels of rmmd_core::crps_fair and rmmd_core::forecast_stats (method.md §c.7, §e K4c, K10).
// Arguments are validated by the callers (csrc/bindings/crps_registration.cpp); math and numerics in
// crps_cpu.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace rmmd {

// ens (M, B, *S), target (B, *S) same dtype; weight (D,) or (1,) float64; inv_norm (B,) float64; mask (B, *S) bool.
// Returns (crps (B,), grad (M, B, *S) contiguous, or (0,) when !with_grad), both in ens's dtype.
std::tuple<at::Tensor, at::Tensor> crps_fair_cpu_kernel(const at::Tensor& ens, const at::Tensor& target,
                                                        const at::Tensor& weight, const at::Tensor& inv_norm,
                                                        const std::optional<at::Tensor>& mask, bool with_grad);

// Same inputs (no normaliser); the target viewed as (outer, variables, inner). Returns (variables, 5)
// float64 sums [skill, spread, mse, var, weight] per variable.
at::Tensor forecast_stats_cpu_kernel(const at::Tensor& ens, const at::Tensor& target, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& mask, int64_t variables, int64_t inner);

}  // namespace rmmd
