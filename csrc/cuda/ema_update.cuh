// Torch-free interface of the CUDA multi-tensor EMA (method.md §e K9):
//
//   ema[i] <- beta ema[i] + (1 - beta) params[i]   for every i, as lerp(ema, p, w = 1 - beta):
//             e + w (p - e) if |w| < 0.5, else p - (p - e)(1 - w)
//
// CUDA headers and our own only (tests/test_nvcc_compile.py); csrc/bindings/cuda_ops_ema_update.cpp
// validates tensors, groups them by dtype pair, makes them contiguous and picks the stream.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "rmmd_types.cuh"

// One (EMA, param) pair: contiguous device buffers of `numel` elements.
struct EmaTensor {
  void* ema;
  const void* param;
  int64_t numel;
};

// Plain-old-data launch arguments: a host array of tensors that all share one dtype pair.
struct EmaUpdateParams {
  const EmaTensor* tensors;  // host array of n_tensors entries (read during the call only)
  int64_t n_tensors;
  RmmdDType ema_dtype;    // math in float for float / half / bfloat16 EMAs, double for double
  RmmdDType param_dtype;  // converted to the EMA's math type on load
  double beta;            // in [0, 1]
};

// Enqueues the kernels on `stream` (one launch per chunk table of up to kEmaMaxChunks chunks, see
// ema_update.cu); returns the first launch error (never exits or prints).
cudaError_t rmmd_launch_ema_update(const EmaUpdateParams& params, cudaStream_t stream);
