// CUDA impl of rmmd_core::adam_update: validate, guard the device, group the tensors by (param dtype, EMA dtype),
// make them contiguous, fill the torch-free params (csrc/cuda/adam_update.cuh) and launch on PyTorch's current
// stream. Schema and CPU impl: adam_update_registration.cpp. Built only against CUDA torch (setup.py).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <map>
#include <utility>
#include <vector>

#include "../cuda/adam_update.cuh"
#include "adam_update_checks.h"
#include "cuda_dtype.h"

namespace rmmd {
namespace {

constexpr int kNoEma = -1;  // EMA dtype key of the groups of a call without EMA

void adam_update_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList ema, double step_size, double beta1, double beta2,
                      double eps, double bias_correction2_sqrt, double weight_decay, double grad_scale,
                      double ema_decay) {
  const AdamScalars s{step_size, beta1, beta2, eps, bias_correction2_sqrt, weight_decay, grad_scale, ema_decay};
  check_adam_update_args(params, grads, exp_avgs, exp_avg_sqs, ema, s);
  if (params.empty()) return;
  TORCH_CHECK(params[0].is_cuda(), "rmmd_core::adam_update (CUDA kernel): params must be CUDA tensors, got ",
              params[0].device());
  const c10::cuda::CUDAGuard device_guard(params[0].device());
  const size_t n = params.size();
  const bool has_ema = !ema.empty();
  const bool scale_grads = grad_scale != 1.0;  // the kernel writes grads only then
  // Contiguous working copies: strided tensors are updated in a temporary and copied back (grads only when they
  // are written). The copies stay alive until every launch is enqueued; the caching allocator orders their reuse
  // on this stream.
  std::vector<at::Tensor> p_work(n), g_work(n), m_work(n), v_work(n), e_work(has_ema ? n : 0);
  std::map<std::pair<int, int>, std::vector<AdamTensor>> groups;
  for (size_t i = 0; i < n; ++i) {
    p_work[i] = params[i].contiguous();
    g_work[i] = grads[i].contiguous();
    m_work[i] = exp_avgs[i].contiguous();
    v_work[i] = exp_avg_sqs[i].contiguous();
    if (has_ema) e_work[i] = ema[i].contiguous();
    if (params[i].numel() == 0) continue;
    const auto key = std::make_pair(static_cast<int>(params[i].scalar_type()),
                                    has_ema ? static_cast<int>(ema[i].scalar_type()) : kNoEma);
    groups[key].push_back(AdamTensor{
        p_work[i].data_ptr(),
        scale_grads ? g_work[i].data_ptr() : const_cast<void*>(g_work[i].const_data_ptr()),  // read-only then
        m_work[i].data_ptr(),
        v_work[i].data_ptr(),
        has_ema ? e_work[i].data_ptr() : nullptr,
        params[i].numel(),
    });
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  for (const auto& [key, tensors] : groups) {
    AdamUpdateParams p{};
    p.tensors = tensors.data();
    p.n_tensors = static_cast<int64_t>(tensors.size());
    p.param_dtype = to_rmmd_dtype(static_cast<at::ScalarType>(key.first));
    p.has_ema = key.second != kNoEma;
    p.ema_dtype = p.has_ema ? to_rmmd_dtype(static_cast<at::ScalarType>(key.second)) : p.param_dtype;
    p.step_size = s.step_size;
    p.beta1 = s.beta1;
    p.beta2 = s.beta2;
    p.eps = s.eps;
    p.bias_correction2_sqrt = s.bias_correction2_sqrt;
    p.weight_decay = s.weight_decay;
    p.grad_scale = s.grad_scale;
    p.ema_decay = s.ema_decay;
    const cudaError_t err = rmmd_launch_adam_update(p, stream);
    TORCH_CHECK(err == cudaSuccess, "rmmd_core::adam_update: CUDA launch failed: ", cudaGetErrorString(err));
  }
  for (size_t i = 0; i < n; ++i) {
    if (!p_work[i].is_same(params[i])) params[i].copy_(p_work[i]);
    if (scale_grads && !g_work[i].is_same(grads[i])) grads[i].copy_(g_work[i]);
    if (!m_work[i].is_same(exp_avgs[i])) exp_avgs[i].copy_(m_work[i]);
    if (!v_work[i].is_same(exp_avg_sqs[i])) exp_avg_sqs[i].copy_(v_work[i]);
    if (has_ema && !e_work[i].is_same(ema[i])) ema[i].copy_(e_work[i]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(rmmd_core, CUDA, m) {
  m.impl("adam_update", &adam_update_cuda);
}

}  // namespace rmmd
