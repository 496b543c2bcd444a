// rmmd_core::rmmd_cotangent: schema (a TORCH_LIBRARY_FRAGMENT of the rmmd_core namespace, so each op's
// registration lives in its own file) and its CPU impl. CUDA impl: cuda_ops_rmmd_cotangent.cpp; fake and
// autograd: rmmd_core/ops/rmmd_cotangent.py.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../cpu/rmmd_cotangent_cpu.h"
#include "rmmd_cotangent_checks.h"

namespace rmmd {
namespace {

std::tuple<at::Tensor, at::Tensor> rmmd_cotangent_cpu(const at::Tensor& x0, const at::Tensor& m_stu,
                                                      const at::Tensor& m_ref, const std::optional<at::Tensor>& g_R,
                                                      const std::optional<at::Tensor>& anchor, const at::Tensor& w,
                                                      double lam, double lam_reg, double scale, bool dmd,
                                                      double dmd_eps) {
  check_rmmd_cotangent_args(x0, m_stu, m_ref, g_R, anchor, w, dmd, dmd_eps);
  TORCH_CHECK(x0.device().is_cpu(), "rmmd_core::rmmd_cotangent (CPU kernel): x0 must be a CPU tensor, got ",
              x0.device());
  return rmmd_cotangent_cpu_kernel(x0, m_stu, m_ref, g_R, anchor, w, lam, lam_reg, scale, dmd, dmd_eps);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rmmd_core, m) {
  // RMMD cotangent assembly, method.md §c.6 step 7 and §e K5:
  //   w_eff[b] = dmd ? w[b] / (mean_j |x0 - m_ref|[b, j] + dmd_eps) : w[b]    (normaliser under stop-grad)
  //   g[b, j]  = scale * (w_eff[b] (m_stu - m_ref) - lam g_R + 2 lam_reg (x0 - anchor))[b, j]
  // x0, m_stu, m_ref and the optional g_R, anchor: same shape (B, ...), dtype and device; w: (B,) floating.
  // Returns (g, stats): g contiguous like x0; stats (B, 6) float32 (float64 for float64 data) with
  // columns [(1/D)<x0, w_eff d>, (1/D)||x0 - a||^2, ||scale w_eff d||^2, ||scale lam g_R||^2,
  // ||2 scale lam_reg (x0 - a)||^2, w_eff], d = m_stu - m_ref (absent terms give 0).
  m.def(
      "rmmd_cotangent(Tensor x0, Tensor m_stu, Tensor m_ref, Tensor? g_R, Tensor? anchor, Tensor w, float lam, "
      "float lam_reg, float scale, bool dmd, float dmd_eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rmmd_core, CPU, m) {
  m.impl("rmmd_cotangent", &rmmd_cotangent_cpu);
}

}  // namespace rmmd
