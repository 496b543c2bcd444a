// Torch-free interface of the CUDA image rewards with their gradients (method.md §e K4a, K4b):
//
//   K4a grayscale  x: (B, 3, H, W), D = 3HW   d_c = x_c - (0.299 x_0 + 0.587 x_1 + 0.114 x_2)
//                  value = -(1/D) sum d^2,     grad_k = -(2/D) (d_k - w_k sum_c d_c)
//   K4b laplacian  x: (B, C, H, W), D = CHW   r = x - avg4(x) (replicate borders, per plane)
//                  value = -(1/D) sum r^2,     grad = -(2/D) (r - avg4(r))
//
// CUDA headers and our own only (tests/test_nvcc_compile.py); csrc/bindings/cuda_ops_image_rewards.cpp
// validates tensors, allocates outputs and workspace, and picks the stream.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "rmmd_types.cuh"

// Plain-old-data launch arguments, shared by both rewards. All tensors contiguous, on the current device.
struct ImageRewardParams {
  void* grad;        // (B, C, H, W) output, `dtype`
  void* value;       // (B,) output, double if dtype == kFloat64 else float
  const void* x;     // (B, C, H, W) `dtype`
  void* workspace;   // rmmd_*_reward_workspace_bytes(params) bytes, any contents
  int64_t batch;     // B >= 1
  int64_t channels;  // C (3 for the grayscale reward)
  int64_t height;    // H >= 1
  int64_t width;     // W >= 1
  RmmdDType dtype;
};

// Bytes of scratch each launch needs (per-block partial sums, combined per sample in a fixed order).
int64_t rmmd_grayscale_reward_workspace_bytes(const ImageRewardParams& params);
int64_t rmmd_laplacian_reward_workspace_bytes(const ImageRewardParams& params);

// Enqueue the kernels on `stream`; return the first launch error (never exit or print).
cudaError_t rmmd_launch_grayscale_reward(const ImageRewardParams& params, cudaStream_t stream);
cudaError_t rmmd_launch_laplacian_reward(const ImageRewardParams& params, cudaStream_t stream);
