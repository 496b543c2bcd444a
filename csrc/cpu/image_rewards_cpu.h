// CPU kernels of rmmd_core::grayscale_reward (K4a) and rmmd_core::laplacian_reward (K4b), method.md §e.
// Arguments are validated by the caller (csrc/bindings/image_rewards_registration.cpp); math and numerics
// in image_rewards_cpu.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace rmmd {

// x0: (B, 3, H, W). Returns (value (B,) opmath, grad contiguous like x0).
std::tuple<at::Tensor, at::Tensor> grayscale_reward_cpu_kernel(const at::Tensor& x0);

// x0: (B, C, H, W). Returns (value (B,) opmath, grad contiguous like x0).
std::tuple<at::Tensor, at::Tensor> laplacian_reward_cpu_kernel(const at::Tensor& x0);

}  // namespace rmmd
