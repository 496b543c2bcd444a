// CUDA impl of rmmd_core::renoise (method.md §e K2): the torch-free posterior-step kernel
// (csrc/cuda/posterior_step.cu) with x as both inputs, C = 0 (see renoise_registration.cpp for why).
// Built only against CUDA torch (setup.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../cuda/posterior_step.cuh"
#include "cuda_dtype.h"
#include "philox_tensor_checks.h"
#include "renoise_checks.h"

namespace rmmd {
namespace {

// Shared by the int op and its device-seed twin; arguments checked by the caller. seed_ptr / offset_ptr:
// device addresses of one int64 each (renoise_dev), or nullptr to use seed / offset.
at::Tensor launch_renoise_cuda(const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& sigma, int64_t seed,
                               int64_t offset, const int64_t* seed_ptr, const int64_t* offset_ptr) {
  TORCH_CHECK(x_in.is_cuda(), "rmmd_core::renoise (CUDA kernel): x must be a CUDA tensor, got ", x_in.device());
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) {
    return out;
  }
  const at::ScalarType coef_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor a = alpha.to(coef_dtype).contiguous();
  const at::Tensor c = at::zeros({x.size(0)}, a.options());
  const at::Tensor g = sigma.to(coef_dtype).contiguous();

  PosteriorStepParams params{};
  params.out = out.data_ptr();
  params.z_t = x.const_data_ptr();
  params.x_hat = x.const_data_ptr();
  params.A = a.const_data_ptr();
  params.C = c.const_data_ptr();
  params.gamma = g.const_data_ptr();
  params.numel = x.numel();
  params.per_sample = x.numel() / x.size(0);
  params.dtype = to_rmmd_dtype(x.scalar_type());
  params.seed = static_cast<uint64_t>(seed);
  params.offset = static_cast<uint64_t>(offset);
  params.seed_ptr = seed_ptr;
  params.offset_ptr = offset_ptr;
  const cudaError_t err = rmmd_launch_posterior_step(params, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "rmmd_core::renoise: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

at::Tensor renoise_cuda(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& sigma, int64_t seed,
                        int64_t offset) {
  check_renoise_args(x, alpha, sigma, seed, offset);
  return launch_renoise_cuda(x, alpha, sigma, seed, offset, nullptr, nullptr);
}

// Device seeds (CUDA-graph capture): read by the kernel, never on the host, so their values go unchecked.
at::Tensor renoise_dev_cuda(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& sigma,
                            const at::Tensor& seed, const at::Tensor& offset) {
  check_renoise_args(x, alpha, sigma, 0, 0);
  check_philox_tensor("renoise", seed, "seed", x, "x");
  check_philox_tensor("renoise", offset, "offset", x, "x");
  return launch_renoise_cuda(x, alpha, sigma, 0, 0, philox_value_ptr(seed), philox_value_ptr(offset));
}

}  // namespace

TORCH_LIBRARY_IMPL(rmmd_core, CUDA, m) {
  m.impl("renoise", &renoise_cuda);
  m.impl("renoise_dev", &renoise_dev_cuda);
}

}  // namespace rmmd
