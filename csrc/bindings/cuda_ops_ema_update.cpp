// CUDA impl of rmmd_core::ema_update: validate, guard the device, group the tensors by (EMA dtype, param
// dtype), make them contiguous, fill the torch-free params (csrc/cuda/ema_update.cuh) and launch on
// PyTorch's current stream. Built only against CUDA torch (setup.py).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <map>
#include <utility>
#include <vector>

#include "../cuda/ema_update.cuh"
#include "cuda_dtype.h"
#include "ema_checks.h"

namespace rmmd {
namespace {

void ema_update_cuda(at::TensorList ema, at::TensorList params, double beta) {
  check_ema_update_args(ema, params, beta);
  if (ema.empty()) return;
  TORCH_CHECK(ema[0].is_cuda(), "rmmd_core::ema_update (CUDA kernel): ema must be CUDA tensors, got ",
              ema[0].device());
  const c10::cuda::CUDAGuard device_guard(ema[0].device());
  const size_t n = ema.size();
  // Contiguous working copies: strided params are read through a copy, strided EMAs are updated in a
  // temporary and copied back. The copies stay alive until every launch is enqueued; the caching
  // allocator orders their reuse on this stream.
  std::vector<at::Tensor> e_work(n), p_work(n);
  std::map<std::pair<int, int>, std::vector<EmaTensor>> groups;
  for (size_t i = 0; i < n; ++i) {
    e_work[i] = ema[i].contiguous();
    p_work[i] = params[i].contiguous();
    if (ema[i].numel() == 0) continue;
    const auto key = std::make_pair(static_cast<int>(ema[i].scalar_type()), static_cast<int>(params[i].scalar_type()));
    groups[key].push_back(EmaTensor{e_work[i].data_ptr(), p_work[i].const_data_ptr(), ema[i].numel()});
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  for (const auto& [key, tensors] : groups) {
    EmaUpdateParams p{};
    p.tensors = tensors.data();
    p.n_tensors = static_cast<int64_t>(tensors.size());
    p.ema_dtype = to_rmmd_dtype(static_cast<at::ScalarType>(key.first));
    p.param_dtype = to_rmmd_dtype(static_cast<at::ScalarType>(key.second));
    p.beta = beta;
    const cudaError_t err = rmmd_launch_ema_update(p, stream);
    TORCH_CHECK(err == cudaSuccess, "rmmd_core::ema_update: CUDA launch failed: ", cudaGetErrorString(err));
  }
  for (size_t i = 0; i < n; ++i) {
    if (!e_work[i].is_same(ema[i])) ema[i].copy_(e_work[i]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(rmmd_core, CUDA, m) {
  m.impl("ema_update", &ema_update_cuda);
}

}  // namespace rmmd
