// CUDA impls of rmmd_core::crps_fair and rmmd_core::forecast_stats: validate, guard the device, allocate
// outputs and the partial-sum workspace, fill the torch-free params (csrc/cuda/crps.cuh) and launch on
// PyTorch's current stream. Built only against CUDA torch (setup.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../cuda/crps.cuh"
#include "crps_checks.h"
#include "cuda_dtype.h"

namespace rmmd {
namespace {

const uint8_t* mask_bytes(const at::Tensor& mask) {
  // bool tensors hold one byte per element (0 or 1)
  return mask.defined() ? static_cast<const uint8_t*>(mask.const_data_ptr()) : nullptr;
}

std::tuple<at::Tensor, at::Tensor> crps_fair_cuda(const at::Tensor& ens_in, const at::Tensor& target_in,
                                                  const at::Tensor& weight_in, const at::Tensor& inv_norm_in,
                                                  const std::optional<at::Tensor>& mask_in, bool with_grad) {
  check_crps_fair_args(ens_in, target_in, weight_in, inv_norm_in, mask_in);
  TORCH_CHECK(ens_in.is_cuda(), "rmmd_core::crps_fair (CUDA kernel): ens must be a CUDA tensor, got ",
              ens_in.device());
  const c10::cuda::CUDAGuard device_guard(ens_in.device());
  // Flat indexing: strided inputs are copied once (documented on the Python API); grad is contiguous.
  const at::Tensor ens = ens_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor inv_norm = inv_norm_in.contiguous();
  const at::Tensor mask = mask_in.has_value() ? mask_in->contiguous() : at::Tensor();
  const at::ScalarType opmath = ens.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t M = ens.size(0), B = ens.size(1);
  const int64_t N = target.numel();
  at::Tensor grad = with_grad ? at::empty(ens.sizes(), ens.options().memory_format(at::MemoryFormat::Contiguous))
                              : at::empty({0}, ens.options());
  at::Tensor crps = at::zeros({B}, ens.options().dtype(opmath));
  if (N == 0) {
    return {crps.to(ens.scalar_type()), grad};
  }
  CrpsFairParams params{};
  params.crps = crps.data_ptr();
  params.grad = with_grad ? grad.data_ptr() : nullptr;
  params.ens = ens.const_data_ptr();
  params.target = target.const_data_ptr();
  params.weight = weight.const_data_ptr<double>();
  params.weight_stride = weight.numel() == 1 ? 0 : 1;
  params.inv_norm = inv_norm.const_data_ptr<double>();
  params.mask = mask_bytes(mask);
  params.members = M;
  params.batch = B;
  params.per_sample = N / B;
  params.dtype = to_rmmd_dtype(ens.scalar_type());
  at::Tensor workspace = at::empty({crps_fair_workspace_bytes(params)}, ens.options().dtype(at::kByte));
  params.workspace = workspace.data_ptr();
  const cudaError_t err = rmmd_launch_crps_fair(params, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "rmmd_core::crps_fair: CUDA launch failed: ", cudaGetErrorString(err));
  return {crps.to(ens.scalar_type()), grad};
}

at::Tensor forecast_stats_cuda(const at::Tensor& ens_in, const at::Tensor& target_in, const at::Tensor& weight_in,
                               const std::optional<at::Tensor>& mask_in, int64_t variables, int64_t inner) {
  check_forecast_stats_args(ens_in, target_in, weight_in, mask_in, variables, inner);
  TORCH_CHECK(ens_in.is_cuda(), "rmmd_core::forecast_stats (CUDA kernel): ens must be a CUDA tensor, got ",
              ens_in.device());
  const c10::cuda::CUDAGuard device_guard(ens_in.device());
  const at::Tensor ens = ens_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor mask = mask_in.has_value() ? mask_in->contiguous() : at::Tensor();
  const int64_t N = target.numel();
  at::Tensor out = at::zeros({variables, 5}, ens.options().dtype(at::kDouble));
  if (N == 0) {
    return out;
  }
  ForecastStatsParams params{};
  params.out = out.data_ptr<double>();
  params.ens = ens.const_data_ptr();
  params.target = target.const_data_ptr();
  params.weight = weight.const_data_ptr<double>();
  params.weight_stride = weight.numel() == 1 ? 0 : 1;
  params.mask = mask_bytes(mask);
  params.members = ens.size(0);
  params.numel = N;
  params.per_sample = N / ens.size(1);
  params.variables = variables;
  params.inner = inner;
  params.dtype = to_rmmd_dtype(ens.scalar_type());
  at::Tensor workspace = at::empty({forecast_stats_workspace_bytes(params)}, ens.options().dtype(at::kByte));
  params.workspace = workspace.data_ptr();
  const cudaError_t err = rmmd_launch_forecast_stats(params, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "rmmd_core::forecast_stats: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rmmd_core, CUDA, m) {
  m.impl("crps_fair", &crps_fair_cuda);
  m.impl("forecast_stats", &forecast_stats_cuda);
}

}  // namespace rmmd
