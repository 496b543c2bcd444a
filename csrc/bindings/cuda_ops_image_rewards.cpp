// CUDA impls of rmmd_core::grayscale_reward (K4a) and rmmd_core::laplacian_reward (K4b): validate, guard the
// device, allocate outputs and workspace, fill the torch-free params (csrc/cuda/image_rewards.cuh) and
// launch on PyTorch's current stream. The two ops share everything but the launcher. Built only against
// CUDA torch (setup.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../cuda/image_rewards.cuh"
#include "cuda_dtype.h"
#include "image_rewards_checks.h"

namespace rmmd {
namespace {

using WorkspaceFn = int64_t (*)(const ImageRewardParams&);
using LaunchFn = cudaError_t (*)(const ImageRewardParams&, cudaStream_t);

std::tuple<at::Tensor, at::Tensor> image_reward_cuda(const char* op, const at::Tensor& x_in, int64_t channels,
                                                     WorkspaceFn workspace_bytes, LaunchFn launch) {
  check_image_reward_args(op, x_in, channels);
  TORCH_CHECK(x_in.is_cuda(), "rmmd_core::", op, " (CUDA kernel): x0 must be a CUDA tensor, got ", x_in.device());
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();  // flat indexing: strided inputs are copied once
  const at::ScalarType opmath = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor value = at::zeros({x.size(0)}, x.options().dtype(opmath));
  if (x.numel() == 0) {
    return {value, grad};
  }
  ImageRewardParams params{};
  params.grad = grad.data_ptr();
  params.value = value.data_ptr();
  params.x = x.const_data_ptr();
  params.batch = x.size(0);
  params.channels = x.size(1);
  params.height = x.size(2);
  params.width = x.size(3);
  params.dtype = to_rmmd_dtype(x.scalar_type());
  at::Tensor workspace = at::empty({workspace_bytes(params)}, x.options().dtype(at::kByte));
  params.workspace = workspace.data_ptr();

  const cudaError_t err = launch(params, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "rmmd_core::", op, ": CUDA launch failed: ", cudaGetErrorString(err));
  return {value, grad};
}

std::tuple<at::Tensor, at::Tensor> grayscale_reward_cuda(const at::Tensor& x0) {
  return image_reward_cuda("grayscale_reward", x0, 3, &rmmd_grayscale_reward_workspace_bytes,
                           &rmmd_launch_grayscale_reward);
}

std::tuple<at::Tensor, at::Tensor> laplacian_reward_cuda(const at::Tensor& x0) {
  return image_reward_cuda("laplacian_reward", x0, -1, &rmmd_laplacian_reward_workspace_bytes,
                           &rmmd_launch_laplacian_reward);
}

}  // namespace

TORCH_LIBRARY_IMPL(rmmd_core, CUDA, m) {
  m.impl("grayscale_reward", &grayscale_reward_cuda);
  m.impl("laplacian_reward", &laplacian_reward_cuda);
}

}  // namespace rmmd
