// Torch-free interface of the CUDA "denoise + step" (method.md §e K1 / K3), on coefficients folded in
// float64 by rmmd_core/ops/denoise_step.py (the fold: rmmd_core/ops/denoise_reference.py):
//
//   z_s[b, j] = P[b] * z_t[b, j] + Q[b] * F[b, j] + gamma[b] * n[b * D + j],   n: posterior_step's Philox stream
//   x0[b, j]  = a[b] * z_t[b, j] + c[b] * F[b, j]                               (when x0 != nullptr)
//
// Only CUDA headers and our own are included (compiled with plain nvcc in tests/test_nvcc_compile.py);
// the binding (csrc/bindings/cuda_ops_denoise_step.cpp) validates tensors, fills the params, picks the stream.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "rmmd_types.cuh"  // RmmdDType: element type of z_t, F, z_s and x0

// Plain-old-data launch arguments. All tensors are contiguous and on the current device.
struct DenoiseStepParams {
  void* z_s;            // numel elements of `dtype`
  void* x0;             // numel elements of `dtype`, or nullptr: do not write x0
  const void* z_t;      // numel elements of `dtype`
  const void* net_out;  // numel elements of `dtype`: the raw network output F
  const void* P;        // (B,) double if dtype == kFloat64, else float
  const void* Q;        // (B,) same type as P
  const void* gamma;    // (B,) same type as P; gamma[b] == 0 skips noise for sample b
  const void* a;        // (B,) same type as P; read only when x0 != nullptr
  const void* c;        // (B,) same type as P; read only when x0 != nullptr
  int64_t numel;        // B * D
  int64_t per_sample;   // D = numel / B, > 0 when numel > 0
  RmmdDType dtype;
  uint64_t seed;        // Philox key (low, high 32 bits)
  uint64_t offset;      // Philox counter of element 0
  // Device seeds (CUDA-graph capture): when non-null, the kernel reads the key / counter from this one int64
  // in device memory instead of `seed` / `offset`, so a graph replay uses what the caller copied there.
  // The value must lie in [0, 2^63) (it is reinterpreted as uint64; the kernel cannot report a violation).
  const int64_t* seed_ptr;
  const int64_t* offset_ptr;
};

// Enqueues the kernel on `stream`; returns the launch error (never exits or prints). numel == 0 is a
// no-op; an unknown dtype returns cudaErrorInvalidValue.
cudaError_t rmmd_launch_denoise_step(const DenoiseStepParams& params, cudaStream_t stream);
