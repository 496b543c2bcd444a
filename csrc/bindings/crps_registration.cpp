// rmmd_core::crps_fair and rmmd_core::forecast_stats (method.md §c.7, §e K4c, K10): schemas
// (TORCH_LIBRARY_FRAGMENT) and CPU impls. CUDA impls: cuda_ops_crps.cpp; fakes and autograd:
// rmmd_core/ops/crps.py (which also validates values and prepares weight / inv_norm).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../cpu/crps_cpu.h"
#include "crps_checks.h"

namespace rmmd {
namespace {

std::tuple<at::Tensor, at::Tensor> crps_fair_cpu(const at::Tensor& ens, const at::Tensor& target,
                                                 const at::Tensor& weight, const at::Tensor& inv_norm,
                                                 const std::optional<at::Tensor>& mask, bool with_grad) {
  check_crps_fair_args(ens, target, weight, inv_norm, mask);
  TORCH_CHECK(ens.device().is_cpu(), "rmmd_core::crps_fair (CPU kernel): ens must be a CPU tensor, got ",
              ens.device());
  return crps_fair_cpu_kernel(ens, target, weight, inv_norm, mask, with_grad);
}

at::Tensor forecast_stats_cpu(const at::Tensor& ens, const at::Tensor& target, const at::Tensor& weight,
                              const std::optional<at::Tensor>& mask, int64_t variables, int64_t inner) {
  check_forecast_stats_args(ens, target, weight, mask, variables, inner);
  TORCH_CHECK(ens.device().is_cpu(), "rmmd_core::forecast_stats (CPU kernel): ens must be a CPU tensor, got ",
              ens.device());
  return forecast_stats_cpu_kernel(ens, target, weight, mask, variables, inner);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rmmd_core, m) {
  // Fair ensemble CRPS and its gradient, method.md §c.7 and §e K4c. ens (M, B, *S), M >= 2; target
  // (B, *S) same dtype; weight (D,) float64: the per-sample-shape weights, flattened, or (1,): one weight
  // for every element (no D-sized tensor for uniform weights); inv_norm (B,)
  // float64: 1 / sum of the sample's effective weights; mask (B, *S) bool or None. Per element
  // wn = weight[s] * inv_norm[b] * mask, c_i = 2 rank_i - M - 1 (stable ranks):
  //   crps[b]     = sum_s wn ((1/M) sum_i |x_i - y| - (1/(M(M-1))) sum_i c_i x_i)
  //   grad[i,b,s] = wn (sign(x_i - y)/M - c_i/(M(M-1)))             (M = 2: closed form, sign(0) = 0)
  // Returns (crps (B,), grad) in ens's dtype; grad is contiguous (M, B, *S), or (0,) without with_grad.
  m.def(
      "crps_fair(Tensor ens, Tensor target, Tensor weight, Tensor inv_norm, Tensor? mask, bool with_grad) -> "
      "(Tensor, Tensor)");
  // Forecast statistics, method.md §c.7 and §e K10, per variable v of the target viewed as
  // (outer, variables, inner), with w = weight[s] * mask (not normalised):
  //   [sum w (1/M) sum_i |x_i - y|, sum w (1/(M(M-1))) sum_i c_i x_i, sum w (xbar - y)^2,
  //    sum w (1/(M-1)) sum_i (x_i - xbar)^2, sum w]
  // Returns (variables, 5) float64.
  m.def(
      "forecast_stats(Tensor ens, Tensor target, Tensor weight, Tensor? mask, int variables, int inner) -> Tensor");
}

TORCH_LIBRARY_IMPL(rmmd_core, CPU, m) {
  m.impl("crps_fair", &crps_fair_cpu);
  m.impl("forecast_stats", &forecast_stats_cpu);
}

}  // namespace rmmd
