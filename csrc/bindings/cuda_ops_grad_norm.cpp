// CUDA impls of rmmd_core::grad_norm and rmmd_core::grad_scale: validate, guard the device, group the
// tensors by dtype, make them contiguous, fill the torch-free params (csrc/cuda/grad_norm.cuh) and launch
// on PyTorch's current stream. No host synchronisation: the norm stays on the device, coef is read there.
// Built only against CUDA torch (setup.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <map>
#include <vector>

#include "../cuda/grad_norm.cuh"
#include "cuda_dtype.h"
#include "grad_norm_checks.h"

namespace rmmd {
namespace {

// Contiguous working copies of `tensors` (kept alive by `work` until every launch is enqueued; the
// caching allocator orders their reuse on this stream), grouped by dtype in a fixed (dtype) order.
std::map<int, std::vector<GradTensor>> group_by_dtype(at::TensorList tensors, std::vector<at::Tensor>& work) {
  std::map<int, std::vector<GradTensor>> groups;
  work.resize(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    work[i] = tensors[i].contiguous();
    if (tensors[i].numel() == 0) continue;
    groups[static_cast<int>(tensors[i].scalar_type())].push_back(GradTensor{work[i].data_ptr(), tensors[i].numel()});
  }
  return groups;
}

at::Tensor grad_norm_cuda(at::TensorList tensors) {
  check_grad_tensors("grad_norm", tensors);
  if (tensors.empty()) return at::zeros({}, at::TensorOptions().dtype(at::kFloat));
  TORCH_CHECK(tensors[0].is_cuda(), "rmmd_core::grad_norm (CUDA kernel): tensors must be CUDA tensors, got ",
              tensors[0].device());
  const c10::cuda::CUDAGuard device_guard(tensors[0].device());
  bool any_double = false;
  for (const at::Tensor& t : tensors) any_double |= t.scalar_type() == at::kDouble;
  std::vector<at::Tensor> work;
  const auto groups = group_by_dtype(tensors, work);
  int64_t n_partials = 0;
  for (const auto& [dtype, group] : groups) {
    for (const GradTensor& g : group) n_partials += rmmd_grad_norm_chunks(g.numel);
  }
  const auto options = tensors[0].options();
  at::Tensor partials = at::empty({n_partials > 0 ? n_partials : 1}, options.dtype(at::kDouble));
  at::Tensor out = at::empty({}, options.dtype(any_double ? at::kDouble : at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  int64_t first = 0;
  for (const auto& [dtype, group] : groups) {
    GradNormParams p{};
    p.tensors = group.data();
    p.n_tensors = static_cast<int64_t>(group.size());
    p.dtype = to_rmmd_dtype(static_cast<at::ScalarType>(dtype));
    p.partials = partials.data_ptr<double>();
    p.first_partial = first;
    const cudaError_t err = rmmd_launch_grad_norm_partials(p, stream);
    TORCH_CHECK(err == cudaSuccess, "rmmd_core::grad_norm: CUDA launch failed: ", cudaGetErrorString(err));
    for (const GradTensor& g : group) first += rmmd_grad_norm_chunks(g.numel);
  }
  const cudaError_t err = rmmd_launch_grad_norm_finish(partials.data_ptr<double>(), n_partials, out.data_ptr(),
                                                       to_rmmd_dtype(out.scalar_type()), stream);
  TORCH_CHECK(err == cudaSuccess, "rmmd_core::grad_norm: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

void grad_scale_cuda(at::TensorList tensors, const at::Tensor& coef) {
  check_grad_scale_args(tensors, coef);
  if (tensors.empty()) return;
  TORCH_CHECK(tensors[0].is_cuda(), "rmmd_core::grad_scale (CUDA kernel): tensors must be CUDA tensors, got ",
              tensors[0].device());
  const c10::cuda::CUDAGuard device_guard(tensors[0].device());
  // coef as one double on the device (exact for every floating dtype); the kernels convert it to their math type
  const at::Tensor coef64 = coef.reshape({}).to(at::kDouble).contiguous();
  std::vector<at::Tensor> work;
  const auto groups = group_by_dtype(tensors, work);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  for (const auto& [dtype, group] : groups) {
    GradScaleParams p{};
    p.tensors = group.data();
    p.n_tensors = static_cast<int64_t>(group.size());
    p.dtype = to_rmmd_dtype(static_cast<at::ScalarType>(dtype));
    p.coef = coef64.const_data_ptr<double>();
    const cudaError_t err = rmmd_launch_grad_scale(p, stream);
    TORCH_CHECK(err == cudaSuccess, "rmmd_core::grad_scale: CUDA launch failed: ", cudaGetErrorString(err));
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!work[i].is_same(tensors[i])) tensors[i].copy_(work[i]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(rmmd_core, CUDA, m) {
  m.impl("grad_norm", &grad_norm_cuda);
  m.impl("grad_scale", &grad_scale_cuda);
}

}  // namespace rmmd
