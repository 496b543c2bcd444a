// CPU kernel of rmmd_core::posterior_step (method.md §a.4, §e K1). Arguments are validated by the
// caller (csrc/bindings/cpu_ops.cpp); see posterior_step_cpu.cpp for the math and numerics.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace rmmd {

at::Tensor posterior_step_cpu_kernel(const at::Tensor& z_t, const at::Tensor& x_hat, const at::Tensor& A,
                                     const at::Tensor& C, const at::Tensor& gamma, int64_t seed,
                                     int64_t offset);

}  // namespace rmmd
