// CUDA impl of rmmd_core::denoise_step (method.md §e K1 / K3): validate, guard the device, fill the
// torch-free params (csrc/cuda/denoise_step.cuh) and launch on the current stream. Built only against
// CUDA torch (setup.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../cuda/denoise_step.cuh"
#include "cuda_dtype.h"
#include "denoise_step_checks.h"
#include "philox_tensor_checks.h"

namespace rmmd {
namespace {

// Shared by the int op and its device-seed twin; arguments checked by the caller. seed_ptr / offset_ptr:
// device addresses of one int64 each (denoise_step_dev), or nullptr to use seed / offset.
std::tuple<at::Tensor, at::Tensor> launch_denoise_step_cuda(const at::Tensor& z_t, const at::Tensor& net_out,
                                                            const at::Tensor& P, const at::Tensor& Q,
                                                            const at::Tensor& gamma, const at::Tensor& a,
                                                            const at::Tensor& c, int64_t seed, int64_t offset,
                                                            bool want_x0, const int64_t* seed_ptr,
                                                            const int64_t* offset_ptr) {
  TORCH_CHECK(z_t.is_cuda(), "rmmd_core::denoise_step (CUDA kernel): z_t must be a CUDA tensor, got ", z_t.device());
  const c10::cuda::CUDAGuard device_guard(z_t.device());

  // The kernel indexes flat contiguous memory: strided inputs are copied once (documented on the
  // Python API); outputs are always contiguous, as the fake kernel promises.
  const at::Tensor z = z_t.contiguous();
  const at::Tensor f = net_out.contiguous();
  const auto contiguous = z_t.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor z_s = at::empty(z_t.sizes(), contiguous);
  at::Tensor x0 = want_x0 ? at::empty(z_t.sizes(), contiguous) : at::empty({0}, z_t.options());
  if (z_s.numel() == 0) {
    return {z_s, x0};
  }
  const at::ScalarType coef_dtype = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor p = P.to(coef_dtype).contiguous();
  const at::Tensor q = Q.to(coef_dtype).contiguous();
  const at::Tensor g = gamma.to(coef_dtype).contiguous();
  const at::Tensor ca = a.to(coef_dtype).contiguous();
  const at::Tensor cc = c.to(coef_dtype).contiguous();

  DenoiseStepParams params{};
  params.z_s = z_s.data_ptr();
  params.x0 = want_x0 ? x0.data_ptr() : nullptr;
  params.z_t = z.const_data_ptr();
  params.net_out = f.const_data_ptr();
  params.P = p.const_data_ptr();
  params.Q = q.const_data_ptr();
  params.gamma = g.const_data_ptr();
  params.a = ca.const_data_ptr();
  params.c = cc.const_data_ptr();
  params.numel = z.numel();
  params.per_sample = z.numel() / z.size(0);
  params.dtype = to_rmmd_dtype(z.scalar_type());
  params.seed = static_cast<uint64_t>(seed);
  params.offset = static_cast<uint64_t>(offset);
  params.seed_ptr = seed_ptr;
  params.offset_ptr = offset_ptr;

  const cudaError_t err = rmmd_launch_denoise_step(params, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "rmmd_core::denoise_step: CUDA launch failed: ", cudaGetErrorString(err));
  return {z_s, x0};
}

std::tuple<at::Tensor, at::Tensor> denoise_step_cuda(const at::Tensor& z_t, const at::Tensor& net_out,
                                                     const at::Tensor& P, const at::Tensor& Q,
                                                     const at::Tensor& gamma, const at::Tensor& a,
                                                     const at::Tensor& c, int64_t seed, int64_t offset,
                                                     bool want_x0) {
  check_denoise_step_args(z_t, net_out, P, Q, gamma, a, c, seed, offset);
  return launch_denoise_step_cuda(z_t, net_out, P, Q, gamma, a, c, seed, offset, want_x0, nullptr, nullptr);
}

// Device seeds (CUDA-graph capture): read by the kernel, never on the host, so their values go unchecked.
std::tuple<at::Tensor, at::Tensor> denoise_step_dev_cuda(const at::Tensor& z_t, const at::Tensor& net_out,
                                                         const at::Tensor& P, const at::Tensor& Q,
                                                         const at::Tensor& gamma, const at::Tensor& a,
                                                         const at::Tensor& c, const at::Tensor& seed,
                                                         const at::Tensor& offset, bool want_x0) {
  check_denoise_step_args(z_t, net_out, P, Q, gamma, a, c, 0, 0);
  check_philox_tensor("denoise_step", seed, "seed", z_t, "z_t");
  check_philox_tensor("denoise_step", offset, "offset", z_t, "z_t");
  return launch_denoise_step_cuda(z_t, net_out, P, Q, gamma, a, c, 0, 0, want_x0, philox_value_ptr(seed),
                                  philox_value_ptr(offset));
}

}  // namespace

TORCH_LIBRARY_IMPL(rmmd_core, CUDA, m) {
  m.impl("denoise_step", &denoise_step_cuda);
  m.impl("denoise_step_dev", &denoise_step_dev_cuda);
}

}  // namespace rmmd
