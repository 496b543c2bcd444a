// rmmd_core::denoise_step, "denoise + step" (method.md §e K1 / K3): schema (TORCH_LIBRARY_FRAGMENT) and CPU
// impl. CUDA impl: cuda_ops_denoise_step.cpp; fake and autograd: rmmd_core/ops/denoise_step.py; the fold of
// the parameterisation into the step's coefficients: rmmd_core/ops/denoise_reference.py.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <tuple>

#include "../cpu/posterior_step_cpu.h"
#include "denoise_step_checks.h"
#include "philox_tensor_checks.h"

namespace rmmd {
namespace {

std::tuple<at::Tensor, at::Tensor> denoise_step_cpu(const at::Tensor& z_t, const at::Tensor& net_out,
                                                    const at::Tensor& P, const at::Tensor& Q, const at::Tensor& gamma,
                                                    const at::Tensor& a, const at::Tensor& c, int64_t seed,
                                                    int64_t offset, bool want_x0) {
  check_denoise_step_args(z_t, net_out, P, Q, gamma, a, c, seed, offset);
  TORCH_CHECK(z_t.device().is_cpu(), "rmmd_core::denoise_step (CPU kernel): z_t must be a CPU tensor, got ",
              z_t.device());
  return denoise_step_cpu_kernel(z_t, net_out, P, Q, gamma, a, c, seed, offset, want_x0);
}

// Device-seed twin: one-element int64 CPU seed / offset tensors, read here; then the int path runs.
std::tuple<at::Tensor, at::Tensor> denoise_step_dev_cpu(const at::Tensor& z_t, const at::Tensor& net_out,
                                                        const at::Tensor& P, const at::Tensor& Q,
                                                        const at::Tensor& gamma, const at::Tensor& a,
                                                        const at::Tensor& c, const at::Tensor& seed,
                                                        const at::Tensor& offset, bool want_x0) {
  check_philox_tensor("denoise_step", seed, "seed", z_t, "z_t");
  check_philox_tensor("denoise_step", offset, "offset", z_t, "z_t");
  return denoise_step_cpu(z_t, net_out, P, Q, gamma, a, c, read_cpu_philox_value(seed),
                          read_cpu_philox_value(offset), want_x0);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rmmd_core, m) {
  // Denoise + posterior step on folded per-sample coefficients (rmmd_core/ops/denoise_reference.py):
  //   z_s[b, j] = P[b] * z_t[b, j] + Q[b] * net_out[b, j] + gamma[b] * n[b * D + j]
  //   x0[b, j]  = a[b] * z_t[b, j] + c[b] * net_out[b, j]          (want_x0; else x0 is an empty (0,) tensor)
  // P = A + C a, Q = C c (float64 on the side); n is the Philox stream of posterior_step. z_t, net_out:
  // (B, ...) float32 / float64 / float16 / bfloat16; P, Q, gamma, a, c: (B,) floating; seed in [0, 2^63),
  // offset >= 0. Outputs are new contiguous tensors. Autograd (Python): grad_z_t = P g_zs + a g_x0,
  // grad_net_out = Q g_zs + c g_x0.
  m.def("denoise_step(Tensor z_t, Tensor net_out, Tensor P, Tensor Q, Tensor gamma, Tensor a, Tensor c, int seed, "
        "int offset, bool want_x0) -> (Tensor, Tensor)");
  // Device-seed twin (CUDA-graph capture): seed, offset are one-element int64 tensors on z_t's device, read
  // by the kernel; same stream as the int op, bit for bit.
  m.def("denoise_step_dev(Tensor z_t, Tensor net_out, Tensor P, Tensor Q, Tensor gamma, Tensor a, Tensor c, "
        "Tensor seed, Tensor offset, bool want_x0) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rmmd_core, CPU, m) {
  m.impl("denoise_step", &denoise_step_cpu);
  m.impl("denoise_step_dev", &denoise_step_dev_cpu);
}

}  // namespace rmmd
