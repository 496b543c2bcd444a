// Torch-free interface of the CUDA posterior / DDIM(eta) step (method.md §a.4, §e K1):
//
//   z_s[b, j] = A[b] * z_t[b, j] + C[b] * x_hat[b, j] + gamma[b] * n[b * D + j],
//   n[i]      = Philox randn(seed, offset + i)   (csrc/common/philox.h, Triton's tl.randn stream)
//
// Only CUDA headers and our own are included, so this compiles with plain nvcc (tests/test_nvcc_compile.py);
// the binding (csrc/bindings/cuda_ops.cpp) validates tensors, fills the params and picks the stream.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "rmmd_types.cuh"  // RmmdDType: element type of z_t, x_hat and z_s

// Plain-old-data launch arguments. All tensors are contiguous and on the current device.
struct PosteriorStepParams {
  void* out;            // z_s, numel elements of `dtype`
  const void* z_t;      // numel elements of `dtype`
  const void* x_hat;    // numel elements of `dtype`
  const void* A;        // (B,) coefficients: double if dtype == kFloat64, else float
  const void* C;        // (B,) same type as A
  const void* gamma;    // (B,) same type as A; gamma[b] == 0 skips noise for sample b
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
cudaError_t rmmd_launch_posterior_step(const PosteriorStepParams& params, cudaStream_t stream);
