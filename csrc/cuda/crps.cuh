// Torch-free interface of the CUDA fair-CRPS and forecast-statistics kernels (method.md §c.7, §e K4c, K10).
//
// Per element (member-major ens: member i of flat element e at ens[i * N + e]), with target y, weight
// wn and c_i = 2 rank_i - M - 1 (1-based stable rank: ties ordered by member index):
//
//   crps_fair:      crps[b] = sum_s wn ((1/M) sum_i |x_i - y| - (1/(M(M-1))) sum_i c_i x_i),
//                   grad_i  = wn (sign(x_i - y)/M - c_i/(M(M-1)))      (M = 2: ½ sign(x_i-y) - ½ sign(x_i-x_j))
//                   with wn = weight[s] * inv_norm[b] * mask[e]
//   forecast_stats: per variable v of the target viewed as (outer, V, inner), w = weight[s] * mask[e]:
//                   [sum w (1/M) sum_i |x_i - y|, sum w sum_i c_i x_i / (M(M-1)), sum w (xbar - y)^2,
//                    sum w sum_i (x_i - xbar)^2 / (M-1), sum w]
//
// Only CUDA headers and our own are included (tests/test_nvcc_compile.py compiles this with plain nvcc);
// csrc/bindings/cuda_ops_crps.cpp validates tensors, allocates outputs and workspace, fills the params and
// picks the stream.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "rmmd_types.cuh"

// Plain-old-data launch arguments. All tensors are contiguous and on the current device.
struct CrpsFairParams {
  void* crps;              // (B,) output, double if dtype == kFloat64 else float
  void* grad;              // (M * N) output in `dtype`, or nullptr (no gradient)
  const void* ens;         // (M * N) `dtype`
  const void* target;      // (N) `dtype`
  const double* weight;    // (D), or (1) with weight_stride = 0
  int64_t weight_stride;   // 1, or 0: one weight for every element
  const double* inv_norm;  // (B)
  const uint8_t* mask;     // (N) bool bytes, or nullptr (every element verified)
  void* workspace;         // crps_fair_workspace_bytes(params) bytes, any contents
  int64_t members;         // M >= 2
  int64_t batch;           // B >= 1
  int64_t per_sample;      // D >= 1
  RmmdDType dtype;
};

struct ForecastStatsParams {
  double* out;             // (V, 5) output
  const void* ens;         // (M * N) `dtype`
  const void* target;      // (N) `dtype`
  const double* weight;    // (D), or (1) with weight_stride = 0
  int64_t weight_stride;   // 1, or 0: one weight for every element
  const uint8_t* mask;     // (N) bool bytes, or nullptr
  void* workspace;         // forecast_stats_workspace_bytes(params) bytes, any contents
  int64_t members;         // M >= 2
  int64_t numel;           // N = B * D >= 1
  int64_t per_sample;      // D >= 1
  int64_t variables;       // V >= 1
  int64_t inner;           // elements after the variable dimension, >= 1; V * inner divides N
  RmmdDType dtype;
};

// Bytes of scratch each launch needs (per-block partial sums).
int64_t crps_fair_workspace_bytes(const CrpsFairParams& params);
int64_t forecast_stats_workspace_bytes(const ForecastStatsParams& params);

// Enqueue the kernels on `stream`; return the first launch error (never exit or print).
cudaError_t rmmd_launch_crps_fair(const CrpsFairParams& params, cudaStream_t stream);
cudaError_t rmmd_launch_forecast_stats(const ForecastStatsParams& params, cudaStream_t stream);
