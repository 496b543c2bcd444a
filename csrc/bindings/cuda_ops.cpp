// CUDA impls of the rmmd_core ops: validate tensors, guard the device, fill the torch-free params struct
// and launch on PyTorch's current stream (so CUDA graphs and torch.compile's reduce-overhead mode see
// the launch on the stream they captured). Built only against CUDA torch (see setup.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../cuda/posterior_step.cuh"
#include "cuda_dtype.h"
#include "philox_tensor_checks.h"
#include "posterior_step_checks.h"

namespace rmmd {
namespace {

// Shared by the int op and its device-seed twin; arguments checked by the caller. seed_ptr / offset_ptr:
// device addresses of one int64 each (the *_dev op), or nullptr to use seed / offset.
at::Tensor launch_posterior_step_cuda(const at::Tensor& z_t, const at::Tensor& x_hat, const at::Tensor& A,
                                      const at::Tensor& C, const at::Tensor& gamma, int64_t seed, int64_t offset,
                                      const int64_t* seed_ptr, const int64_t* offset_ptr) {
  TORCH_CHECK(z_t.is_cuda(), "rmmd_core::posterior_step (CUDA kernel): z_t must be a CUDA tensor, got ",
              z_t.device());
  const c10::cuda::CUDAGuard device_guard(z_t.device());

  // The kernel indexes flat contiguous memory: strided inputs are copied once (documented on the
  // Python API); the output is always contiguous, as the fake kernel promises.
  const at::Tensor z = z_t.contiguous();
  const at::Tensor x = x_hat.contiguous();
  at::Tensor out = at::empty(z_t.sizes(), z_t.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) {
    return out;
  }
  // Coefficients are read in the op's math type: float64 only for float64 data.
  const at::ScalarType coef_dtype = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor a = A.to(coef_dtype).contiguous();
  const at::Tensor c = C.to(coef_dtype).contiguous();
  const at::Tensor g = gamma.to(coef_dtype).contiguous();

  PosteriorStepParams params{};
  params.out = out.data_ptr();
  params.z_t = z.const_data_ptr();
  params.x_hat = x.const_data_ptr();
  params.A = a.const_data_ptr();
  params.C = c.const_data_ptr();
  params.gamma = g.const_data_ptr();
  params.numel = z.numel();
  params.per_sample = z.numel() / z.size(0);
  params.dtype = to_rmmd_dtype(z.scalar_type());
  params.seed = static_cast<uint64_t>(seed);
  params.offset = static_cast<uint64_t>(offset);
  params.seed_ptr = seed_ptr;
  params.offset_ptr = offset_ptr;

  const cudaError_t err = rmmd_launch_posterior_step(params, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "rmmd_core::posterior_step: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

at::Tensor posterior_step_cuda(const at::Tensor& z_t, const at::Tensor& x_hat, const at::Tensor& A,
                               const at::Tensor& C, const at::Tensor& gamma, int64_t seed, int64_t offset) {
  check_posterior_step_args(z_t, x_hat, A, C, gamma, seed, offset);
  return launch_posterior_step_cuda(z_t, x_hat, A, C, gamma, seed, offset, nullptr, nullptr);
}

// Device seeds (CUDA-graph capture): the kernel reads seed / offset from device memory at every launch or
// replay; they are never read on the host here, so their values (which must be in [0, 2^63)) go unchecked.
at::Tensor posterior_step_dev_cuda(const at::Tensor& z_t, const at::Tensor& x_hat, const at::Tensor& A,
                                   const at::Tensor& C, const at::Tensor& gamma, const at::Tensor& seed,
                                   const at::Tensor& offset) {
  check_posterior_step_args(z_t, x_hat, A, C, gamma, 0, 0);
  check_philox_tensor("posterior_step", seed, "seed", z_t, "z_t");
  check_philox_tensor("posterior_step", offset, "offset", z_t, "z_t");
  return launch_posterior_step_cuda(z_t, x_hat, A, C, gamma, 0, 0, philox_value_ptr(seed), philox_value_ptr(offset));
}

}  // namespace

TORCH_LIBRARY_IMPL(rmmd_core, CUDA, m) {
  m.impl("posterior_step", &posterior_step_cuda);
  m.impl("posterior_step_dev", &posterior_step_dev_cuda);
}

}  // namespace rmmd
