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

namespace rmmd {
namespace {

std::tuple<at::Tensor, at::Tensor> denoise_step_cuda(const at::Tensor& z_t, const at::Tensor& net_out,
                                                     const at::Tensor& P, const at::Tensor& Q,
                                                     const at::Tensor& gamma, const at::Tensor& a,
                                                     const at::Tensor& c, int64_t seed, int64_t offset,
                                                     bool want_x0) {
  check_denoise_step_args(z_t, net_out, P, Q, gamma, a, c, seed, offset);
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

  const cudaError_t err = rmmd_launch_denoise_step(params, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "rmmd_core::denoise_step: CUDA launch failed: ", cudaGetErrorString(err));
  return {z_s, x0};
}

}  // namespace

TORCH_LIBRARY_IMPL(rmmd_core, CUDA, m) {
  m.impl("denoise_step", &denoise_step_cuda);
}

}  // namespace rmmd
