// CPU kernel of rmmd_core::rmmd_cotangent (method.md §c.6 step 7, §e K5). Arguments are validated by
// the caller (csrc/bindings/rmmd_cotangent_registration.cpp); math and numerics in rmmd_cotangent_cpu.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace rmmd {

std::tuple<at::Tensor, at::Tensor> rmmd_cotangent_cpu_kernel(const at::Tensor& x0, const at::Tensor& m_stu,
                                                             const at::Tensor& m_ref,
                                                             const std::optional<at::Tensor>& g_R,
                                                             const std::optional<at::Tensor>& anchor,
                                                             const at::Tensor& w, double lam, double lam_reg,
                                                             double scale, bool dmd, double dmd_eps);

}  // namespace rmmd
