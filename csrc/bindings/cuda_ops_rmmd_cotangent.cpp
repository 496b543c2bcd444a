// CUDA impl of rmmd_core::rmmd_cotangent: validate, guard the device, allocate outputs and the partial-sum
// workspace, fill the torch-free params (csrc/cuda/rmmd_cotangent.cuh) and launch on PyTorch's current
// stream. Built only against CUDA torch (setup.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../cuda/rmmd_cotangent.cuh"
#include "cuda_dtype.h"
#include "rmmd_cotangent_checks.h"

namespace rmmd {
namespace {

std::tuple<at::Tensor, at::Tensor> rmmd_cotangent_cuda(const at::Tensor& x0_in, const at::Tensor& m_stu_in,
                                                       const at::Tensor& m_ref_in,
                                                       const std::optional<at::Tensor>& g_R,
                                                       const std::optional<at::Tensor>& anchor, const at::Tensor& w,
                                                       double lam, double lam_reg, double scale, bool dmd,
                                                       double dmd_eps) {
  check_rmmd_cotangent_args(x0_in, m_stu_in, m_ref_in, g_R, anchor, w, dmd, dmd_eps);
  TORCH_CHECK(x0_in.is_cuda(), "rmmd_core::rmmd_cotangent (CUDA kernel): x0 must be a CUDA tensor, got ",
              x0_in.device());
  const c10::cuda::CUDAGuard device_guard(x0_in.device());

  // Flat indexing: strided inputs are copied once (documented on the Python API); g is contiguous.
  const at::Tensor x0 = x0_in.contiguous();
  const at::Tensor m_stu = m_stu_in.contiguous();
  const at::Tensor m_ref = m_ref_in.contiguous();
  const at::Tensor r = g_R.has_value() ? g_R->contiguous() : at::Tensor();
  const at::Tensor a = anchor.has_value() ? anchor->contiguous() : at::Tensor();
  const at::ScalarType opmath = x0.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t batch = x0.size(0);
  const int64_t D = batch > 0 ? x0.numel() / batch : 0;

  at::Tensor g = at::empty(x0.sizes(), x0.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor stats = at::zeros({batch, 6}, x0.options().dtype(opmath));
  if (batch == 0) {
    return {g, stats};
  }
  const at::Tensor w_op = w.to(opmath).contiguous();
  if (D == 0) {
    // No elements: every sum is 0, the weight is w (an empty mean has no DMD normaliser to apply).
    stats.select(1, 5).copy_(w_op);
    return {g, stats};
  }

  RmmdCotangentParams params{};
  params.g = g.data_ptr();
  params.stats = stats.data_ptr();
  params.x0 = x0.const_data_ptr();
  params.m_stu = m_stu.const_data_ptr();
  params.m_ref = m_ref.const_data_ptr();
  params.g_r = r.defined() ? r.const_data_ptr() : nullptr;
  params.anchor = a.defined() ? a.const_data_ptr() : nullptr;
  params.w = w_op.const_data_ptr();
  params.batch = batch;
  params.per_sample = D;
  params.lam = lam;
  params.lam_reg = lam_reg;
  params.scale = scale;
  params.dmd_eps = dmd_eps;
  params.dmd = dmd;
  params.dtype = to_rmmd_dtype(x0.scalar_type());
  at::Tensor workspace = at::empty({rmmd_cotangent_workspace_bytes(params)}, x0.options().dtype(at::kByte));
  params.workspace = workspace.data_ptr();

  const cudaError_t err = rmmd_launch_rmmd_cotangent(params, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "rmmd_core::rmmd_cotangent: CUDA launch failed: ", cudaGetErrorString(err));
  return {g, stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(rmmd_core, CUDA, m) {
  m.impl("rmmd_cotangent", &rmmd_cotangent_cuda);
}

}  // namespace rmmd
