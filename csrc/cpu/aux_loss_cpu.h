// CPU kernel of rmmd_core::aux_loss (method.md §c.6 step 8, §e K6). Arguments are validated by the caller
// (csrc/bindings/aux_loss_registration.cpp); math and numerics in aux_loss_cpu.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace rmmd {

std::tuple<at::Tensor, at::Tensor> aux_loss_cpu_kernel(const at::Tensor& o, const at::Tensor& x0,
                                                       const at::Tensor& m_ref, const at::Tensor& w);

}  // namespace rmmd
