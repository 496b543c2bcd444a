// Torch-free interface of the CUDA RMMD cotangent assembly (method.md §c.6 step 7, §e K5):
//
//   w_eff[b] = dmd ? w[b] / (mean_j |x0 - m_ref|[b, j] + dmd_eps) : w[b]
//   g[b, j]  = scale * (w_eff[b] (m_stu - m_ref) - lam g_R + 2 lam_reg (x0 - anchor))[b, j]
//   stats[b] = [(1/D)<x0, w_eff d>, (1/D)||x0 - a||^2, ||scale w_eff d||^2, ||scale lam g_R||^2,
//               ||2 scale lam_reg (x0 - a)||^2, w_eff]                    (d = m_stu - m_ref)
//
// Only CUDA headers and our own are included (tests/test_nvcc_compile.py compiles this with plain
// nvcc); csrc/bindings/cuda_ops_rmmd_cotangent.cpp validates tensors, allocates the workspace, fills
// the params and picks the stream.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "rmmd_types.cuh"

// Plain-old-data launch arguments. All tensors are contiguous and on the current device.
struct RmmdCotangentParams {
  void* g;               // (B * D) output, `dtype`
  void* stats;           // (B, 6) output, double if dtype == kFloat64 else float
  const void* x0;        // (B * D) `dtype`
  const void* m_stu;     // (B * D)
  const void* m_ref;     // (B * D)
  const void* g_r;       // (B * D) or nullptr (no reward term)
  const void* anchor;    // (B * D) or nullptr (no anchor term)
  const void* w;         // (B,) same type as stats
  void* workspace;       // rmmd_cotangent_workspace_bytes(params) bytes, any contents
  int64_t batch;         // B >= 1
  int64_t per_sample;    // D >= 1
  double lam, lam_reg, scale, dmd_eps;
  bool dmd;
  RmmdDType dtype;
};

// Bytes of scratch the launch needs (per-(sample, chunk) partial sums).
int64_t rmmd_cotangent_workspace_bytes(const RmmdCotangentParams& params);

// Enqueues the kernels on `stream`; returns the first launch error (never exits or prints).
cudaError_t rmmd_launch_rmmd_cotangent(const RmmdCotangentParams& params, cudaStream_t stream);
