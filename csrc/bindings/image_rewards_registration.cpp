// rmmd_core::grayscale_reward (K4a) and rmmd_core::laplacian_reward (K4b): schemas (TORCH_LIBRARY_FRAGMENT)
// and CPU impls. CUDA impls: cuda_ops_image_rewards.cpp; fakes and
// autograd: rmmd_core/ops/image_rewards.py.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../cpu/image_rewards_cpu.h"
#include "image_rewards_checks.h"

namespace rmmd {
namespace {

std::tuple<at::Tensor, at::Tensor> grayscale_reward_cpu(const at::Tensor& x0) {
  check_image_reward_args("grayscale_reward", x0, 3);
  TORCH_CHECK(x0.device().is_cpu(), "rmmd_core::grayscale_reward (CPU kernel): x0 must be a CPU tensor, got ",
              x0.device());
  return grayscale_reward_cpu_kernel(x0);
}

std::tuple<at::Tensor, at::Tensor> laplacian_reward_cpu(const at::Tensor& x0) {
  check_image_reward_args("laplacian_reward", x0, -1);
  TORCH_CHECK(x0.device().is_cpu(), "rmmd_core::laplacian_reward (CPU kernel): x0 must be a CPU tensor, got ",
              x0.device());
  return laplacian_reward_cpu_kernel(x0);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rmmd_core, m) {
  // Black-and-white reward and its gradient, method.md §e K4a. x0: (B, 3, H, W), D = 3 H W:
  //   d_c = x_c - (0.299 x_0 + 0.587 x_1 + 0.114 x_2);  value = -(1/D) sum d^2;  grad = d value / d x0
  // Returns (value (B,) float32 / float64 for float64 data, grad contiguous like x0).
  m.def("grayscale_reward(Tensor x0) -> (Tensor, Tensor)");
  // Laplacian-smoothness reward and its gradient, method.md §e K4b. x0: (B, C, H, W), D = C H W:
  //   r = x - avg4(x) (replicate borders);  value = -(1/D) sum r^2;  grad = -(2/D) (r - avg4(r))
  m.def("laplacian_reward(Tensor x0) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rmmd_core, CPU, m) {
  m.impl("grayscale_reward", &grayscale_reward_cpu);
  m.impl("laplacian_reward", &laplacian_reward_cpu);
}

}  // namespace rmmd
