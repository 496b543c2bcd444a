// Torch-free interface of the CUDA auxiliary loss with its output gradient (method.md §c.6 step 8, §e K6):
//
//   loss[b] = w[b] (1/D) (||x0[b] - o[b]||^2 + ||m_ref[b] - o[b]||^2)
//   grad    = d(mean_b loss[b]) / do = (2 w[b] / (B D)) ((o - x0) + (o - m_ref))
//
// CUDA headers and our own only (tests/test_nvcc_compile.py); csrc/bindings/cuda_ops_aux_loss.cpp
// validates tensors, allocates outputs and workspace, and picks the stream.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "rmmd_types.cuh"

// Plain-old-data launch arguments. All tensors are contiguous and on the current device.
struct AuxLossParams {
  void* grad;         // (B * D) output, `dtype`
  void* loss;         // (B,) output, double if dtype == kFloat64 else float
  const void* o;      // (B * D) `dtype`
  const void* x0;     // (B * D)
  const void* m_ref;  // (B * D)
  const void* w;      // (B,) same type as loss
  void* workspace;    // rmmd_aux_loss_workspace_bytes(params) bytes, any contents
  int64_t batch;      // B >= 1
  int64_t per_sample; // D >= 1
  RmmdDType dtype;
};

// Bytes of scratch the launch needs (per-(sample, chunk) partial sums).
int64_t rmmd_aux_loss_workspace_bytes(const AuxLossParams& params);

// Enqueues the kernels on `stream`; returns the first launch error (never exits or prints).
cudaError_t rmmd_launch_aux_loss(const AuxLossParams& params, cudaStream_t stream);
