// Torch-free interface of the CUDA fused optimiser update rmmd_core::adam_update (clip scale + Adam + EMA over
// lists of tensors, in place; the math and its order: rmmd_core/ops/adam_reference.py). For every element, in the
// param's math type M (float for float / half / bfloat16 params, double for double), each scalar rounded to M once:
//
//   g = grad;  if grad_scale != 1: g = round_P(g * grad_scale), written back to grad
//   if weight_decay != 0: g = g + weight_decay * p
//   m = lerp(m, g, 1 - beta1);  v = v * beta2 + ((1 - beta2) * g) * g;   m, v stored, the stored values used below
//   p = p + ((-step_size) * m) / (sqrt(v) / bias_correction2_sqrt + eps)   stored
//   if has_ema: ema = lerp(ema, p, 1 - ema_decay) in the EMA's math type (double for a double EMA, else float)
//
// with lerp(e, x, w) = e + w (x - e) if |w| < 0.5, else x - (x - e)(1 - w); every operation IEEE round-to-nearest,
// none contracted into an FMA.
//
// CUDA headers and our own only (tests/test_nvcc_compile.py); csrc/bindings/cuda_ops_adam_update.cpp validates
// tensors, groups them by (param dtype, EMA dtype), makes them contiguous and picks the stream.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "rmmd_types.cuh"

// One parameter: contiguous device buffers of `numel` elements. param / grad / exp_avg / exp_avg_sq share the
// params' dtype; ema has the group's EMA dtype and is null when the group has no EMA. grad is written only when
// grad_scale != 1.
struct AdamTensor {
  void* param;
  void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  void* ema;
  int64_t numel;
};

// Plain-old-data launch arguments: a host array of tensors that all share one (param dtype, EMA dtype) pair.
struct AdamUpdateParams {
  const AdamTensor* tensors;  // host array of n_tensors entries (read during the call only)
  int64_t n_tensors;
  RmmdDType param_dtype;  // also the dtype of grad / exp_avg / exp_avg_sq
  RmmdDType ema_dtype;    // ignored when !has_ema
  bool has_ema;
  // The op's scalars as the caller passed them (rmmd::AdamScalars); each is rounded to its math type once.
  double step_size;              // lr / (1 - beta1^k), finite, >= 0
  double beta1;                  // in [0, 1)
  double beta2;                  // in [0, 1)
  double eps;                    // finite, >= 0
  double bias_correction2_sqrt;  // sqrt(1 - beta2^k), finite, > 0
  double weight_decay;           // finite, >= 0 (0: no L2 term)
  double grad_scale;             // finite, > 0 (1: grads neither scaled nor written)
  double ema_decay;              // in [0, 1] (used only when has_ema)
};

// Enqueues the kernels on `stream` (one launch per chunk table, see adam_update.cu); returns
// cudaErrorInvalidValue for bad arguments, else the first launch error (never exits or prints).
cudaError_t rmmd_launch_adam_update(const AdamUpdateParams& params, cudaStream_t stream);
