// CUDA impl of rmmd_core::aux_loss: validate, guard the device, allocate outputs and workspace, fill the
// torch-free params (csrc/cuda/aux_loss.cuh) and launch on PyTorch's current stream. Built only against
// CUDA torch (setup.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../cuda/aux_loss.cuh"
#include "aux_loss_checks.h"
#include "cuda_dtype.h"

namespace rmmd {
namespace {

std::tuple<at::Tensor, at::Tensor> aux_loss_cuda(const at::Tensor& o_in, const at::Tensor& x0_in,
                                                 const at::Tensor& m_ref_in, const at::Tensor& w) {
  check_aux_loss_args(o_in, x0_in, m_ref_in, w);
  TORCH_CHECK(o_in.is_cuda(), "rmmd_core::aux_loss (CUDA kernel): o must be a CUDA tensor, got ", o_in.device());
  const c10::cuda::CUDAGuard device_guard(o_in.device());
  // Flat indexing: strided inputs are copied once (documented on the Python API); grad is contiguous.
  const at::Tensor o = o_in.contiguous();
  const at::Tensor x0 = x0_in.contiguous();
  const at::Tensor m_ref = m_ref_in.contiguous();
  const at::ScalarType opmath = o.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t batch = o.size(0);
  const int64_t D = batch > 0 ? o.numel() / batch : 0;
  at::Tensor grad = at::empty(o.sizes(), o.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor loss = at::zeros({batch}, o.options().dtype(opmath));
  if (batch == 0 || D == 0) {
    return {loss, grad};
  }
  const at::Tensor w_op = w.to(opmath).contiguous();

  AuxLossParams params{};
  params.grad = grad.data_ptr();
  params.loss = loss.data_ptr();
  params.o = o.const_data_ptr();
  params.x0 = x0.const_data_ptr();
  params.m_ref = m_ref.const_data_ptr();
  params.w = w_op.const_data_ptr();
  params.batch = batch;
  params.per_sample = D;
  params.dtype = to_rmmd_dtype(o.scalar_type());
  at::Tensor workspace = at::empty({rmmd_aux_loss_workspace_bytes(params)}, o.options().dtype(at::kByte));
  params.workspace = workspace.data_ptr();

  const cudaError_t err = rmmd_launch_aux_loss(params, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "rmmd_core::aux_loss: CUDA launch failed: ", cudaGetErrorString(err));
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(rmmd_core, CUDA, m) {
  m.impl("aux_loss", &aux_loss_cuda);
}

}  // namespace rmmd
