// rmmd_core::renoise, the forward (re-)noise x_t = alpha x + sigma n (method.md §c.6 step 2, §e K2):
// schema (TORCH_LIBRARY_FRAGMENT) and CPU impl. CUDA impl: cuda_ops_renoise.cpp; fake and autograd:
// rmmd_core/ops/renoise.py.
//
// K2 is K1 with A = alpha, C = 0, gamma = sigma, so it runs the posterior-step kernel with x as both
// inputs: the second read of each element hits the cache line the first one brought in (one DRAM read,
// one write per element), and the noise stream and rounding are K1's by construction. Adding 0 * x is
// exact for finite x, so the result equals alpha x + sigma n as the reference computes it.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "../cpu/posterior_step_cpu.h"
#include "philox_tensor_checks.h"
#include "renoise_checks.h"

namespace rmmd {
namespace {

at::Tensor renoise_cpu(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& sigma, int64_t seed,
                       int64_t offset) {
  check_renoise_args(x, alpha, sigma, seed, offset);
  TORCH_CHECK(x.device().is_cpu(), "rmmd_core::renoise (CPU kernel): x must be a CPU tensor, got ", x.device());
  const at::Tensor xc = x.contiguous();  // one copy for strided x, shared by both kernel inputs
  return posterior_step_cpu_kernel(xc, xc, alpha, at::zeros_like(alpha), sigma, seed, offset);
}

// Device-seed twin: one-element int64 CPU seed / offset tensors, read here; then the int path runs.
at::Tensor renoise_dev_cpu(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& sigma,
                           const at::Tensor& seed, const at::Tensor& offset) {
  check_philox_tensor("renoise", seed, "seed", x, "x");
  check_philox_tensor("renoise", offset, "offset", x, "x");
  return renoise_cpu(x, alpha, sigma, read_cpu_philox_value(seed), read_cpu_philox_value(offset));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rmmd_core, m) {
  // Forward (re-)noise, method.md §c.6 step 2 and §e K2:
  //   x_t[b, j] = alpha[b] * x[b, j] + sigma[b] * n[b * D + j]
  // with n the Philox stream of posterior_step (tl.randn(seed, offset + i)). x: (B, ...) float32 /
  // float64 / float16 / bfloat16; alpha, sigma: (B,) floating; seed in [0, 2^63), offset >= 0.
  // Returns a new contiguous tensor like x. Autograd (Python): grad_x = alpha[b] * grad.
  m.def("renoise(Tensor x, Tensor alpha, Tensor sigma, int seed, int offset) -> Tensor");
  // Device-seed twin (CUDA-graph capture): seed, offset are one-element int64 tensors on x's device, read by
  // the kernel; same stream as the int op, bit for bit.
  m.def("renoise_dev(Tensor x, Tensor alpha, Tensor sigma, Tensor seed, Tensor offset) -> Tensor");
}

TORCH_LIBRARY_IMPL(rmmd_core, CPU, m) {
  m.impl("renoise", &renoise_cpu);
  m.impl("renoise_dev", &renoise_dev_cpu);
}

}  // namespace rmmd
