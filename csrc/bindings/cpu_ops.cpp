// CPU impls of the rmmd_core ops declared in registration.cpp: validate, then call the kernels in csrc/cpu/.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../cpu/posterior_step_cpu.h"
#include "philox_tensor_checks.h"
#include "posterior_step_checks.h"

namespace rmmd {
namespace {

at::Tensor posterior_step_cpu(const at::Tensor& z_t, const at::Tensor& x_hat, const at::Tensor& A,
                              const at::Tensor& C, const at::Tensor& gamma, int64_t seed, int64_t offset) {
  check_posterior_step_args(z_t, x_hat, A, C, gamma, seed, offset);
  TORCH_CHECK(z_t.device().is_cpu(), "rmmd_core::posterior_step (CPU kernel): z_t must be a CPU tensor, got ",
              z_t.device());
  return posterior_step_cpu_kernel(z_t, x_hat, A, C, gamma, seed, offset);
}

// Device-seed twin: seed / offset are one-element int64 CPU tensors, read here (host memory); then the
// int path runs, so the results are the int op's bit for bit.
at::Tensor posterior_step_dev_cpu(const at::Tensor& z_t, const at::Tensor& x_hat, const at::Tensor& A,
                                  const at::Tensor& C, const at::Tensor& gamma, const at::Tensor& seed,
                                  const at::Tensor& offset) {
  check_philox_tensor("posterior_step", seed, "seed", z_t, "z_t");
  check_philox_tensor("posterior_step", offset, "offset", z_t, "z_t");
  return posterior_step_cpu(z_t, x_hat, A, C, gamma, read_cpu_philox_value(seed), read_cpu_philox_value(offset));
}

}  // namespace

TORCH_LIBRARY_IMPL(rmmd_core, CPU, m) {
  m.impl("posterior_step", &posterior_step_cpu);
  m.impl("posterior_step_dev", &posterior_step_dev_cpu);
}

}  // namespace rmmd
