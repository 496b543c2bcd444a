// CPU kernels of rmmd_core::posterior_step and rmmd_core::denoise_step (method.md §a.4, §e K1). Arguments are validated by the
// caller (csrc/bindings/cpu_ops.cpp); see posterior_step_cpu.cpp for the math and numerics.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace rmmd {

at::Tensor posterior_step_cpu_kernel(const at::Tensor& z_t, const at::Tensor& x_hat, const at::Tensor& A,
                                     const at::Tensor& C, const at::Tensor& gamma, int64_t seed,
                                     int64_t offset);

// rmmd_core::denoise_step (csrc/bindings/denoise_step_registration.cpp): z_s = P z_t + Q net_out + gamma n
// with the noise of posterior_step, plus x0 = a z_t + c net_out when want_x0 (else an empty (0,) tensor).
std::tuple<at::Tensor, at::Tensor> denoise_step_cpu_kernel(const at::Tensor& z_t, const at::Tensor& net_out,
                                                           const at::Tensor& P, const at::Tensor& Q,
                                                           const at::Tensor& gamma, const at::Tensor& a,
                                                           const at::Tensor& c, int64_t seed, int64_t offset,
                                                           bool want_x0);

// The CPU noise path the kernels above take right now: "avx512", "avx2" or "scalar" (CPU features and the
// RMMD_CORE_CPU_SIMD environment variable, read per call). For build_info / rmmd_core.info.
const char* cpu_noise_path();

}  // namespace rmmd
