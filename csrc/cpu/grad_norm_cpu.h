// CPU kernels of rmmd_core::grad_norm (global L2 norm of a tensor list) and rmmd_core::grad_scale (in-place
// multiply of a tensor list by a 0-d coefficient). Arguments are validated by the caller
// (csrc/bindings/grad_norm_registration.cpp); math and numerics in grad_norm_cpu.cpp.
#pragma once

#include <ATen/core/Tensor.h>

namespace rmmd {

// sqrt(sum_i sum_j tensors[i][j]^2): a 0-d CPU tensor, float32 (float64 if any input is float64). Squares
// accumulate in double per chunk; the chunk partials are added in chunk order (thread-count independent).
at::Tensor grad_norm_cpu_kernel(at::TensorList tensors);

// In place: tensors[i] <- tensors[i] * coef in float32 math (float64 for float64 tensors), rounded once.
void grad_scale_cpu_kernel(at::TensorList tensors, double coef);

}  // namespace rmmd
