// Torch-free interface of the CUDA multi-tensor gradient-clipping ops:
//
//   grad_norm:    ||g|| = sqrt(sum_i sum_j g_i[j]^2)     squares summed in double
//   grad_scale_:  g_i[j] <- g_i[j] * coef                float math (double for double), one rounding
//
// CUDA headers and our own only (tests/test_nvcc_compile.py); csrc/bindings/cuda_ops_grad_norm.cpp
// validates tensors, groups them by dtype, makes them contiguous, allocates the partials and picks the stream.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "rmmd_types.cuh"

// One tensor: a contiguous device buffer of `numel` elements.
struct GradTensor {
  void* data;
  int64_t numel;
};

// Chunks of a tensor of `numel` elements (one double partial each): ceil(numel / kGradChunk).
int64_t rmmd_grad_norm_chunks(int64_t numel);

// Sum-of-squares partials of a host array of tensors sharing one dtype: chunk c of the group (tensors in
// order, chunks in order) writes partials[first_partial + c], in double.
struct GradNormParams {
  const GradTensor* tensors;  // host array of n_tensors entries (read during the call only)
  int64_t n_tensors;
  RmmdDType dtype;
  double* partials;       // device buffer
  int64_t first_partial;  // where this group's partials start
};

// Enqueues the partial kernels on `stream` (one launch per chunk table of up to 256 chunks).
cudaError_t rmmd_launch_grad_norm_partials(const GradNormParams& params, cudaStream_t stream);

// out[0] = sqrt(sum of partials[0 .. n_partials)) in a fixed order (one block), rounded into `out_dtype`
// (kFloat32 or kFloat64). n_partials may be 0 (out = 0).
cudaError_t rmmd_launch_grad_norm_finish(const double* partials, int64_t n_partials, void* out, RmmdDType out_dtype,
                                         cudaStream_t stream);

// In place: every tensor (one dtype) times *coef, coef read on the device as double and converted to the
// tensors' math type (float; double for double) before the multiply.
struct GradScaleParams {
  const GradTensor* tensors;  // host array of n_tensors entries (read during the call only)
  int64_t n_tensors;
  RmmdDType dtype;
  const double* coef;  // device pointer to one double
};

cudaError_t rmmd_launch_grad_scale(const GradScaleParams& params, cudaStream_t stream);
