// CUDA posterior / DDIM(eta) step, method.md §a.4 and §e K1 (interface and math in posterior_step.cuh).
// Torch-free: CUDA headers and our own only.
//
// Forward:  z_s[i] = A[b] z_t[i] + C[b] x_hat[i] + gamma[b] n(seed, offset + i),  b = i / D.
// Backward: not a kernel; dz_s/dz_t = A[b] and dz_s/dx_hat = C[b] are applied in rmmd_core/ops/_library.py.
//
// This is the "denoise + step" kernel (denoise_step.cu) with P = A, Q = C and no x0 output: the same
// loop, so one body serves K1, K2 (renoise: C = 0) and K3, as on the Triton side. Memory-bound except for
// the noise: 2 loads + 1 store per element, plus 10 Philox rounds and one logf/cosf when gamma[b] != 0.
#include "posterior_step.cuh"

#include "denoise_step.cuh"

cudaError_t rmmd_launch_posterior_step(const PosteriorStepParams& params, cudaStream_t stream) {
  DenoiseStepParams p{};
  p.z_s = params.out;
  p.x0 = nullptr;  // a and c are never read without x0
  p.z_t = params.z_t;
  p.net_out = params.x_hat;
  p.P = params.A;
  p.Q = params.C;
  p.gamma = params.gamma;
  p.a = nullptr;
  p.c = nullptr;
  p.numel = params.numel;
  p.per_sample = params.per_sample;
  p.dtype = params.dtype;
  p.seed = params.seed;
  p.offset = params.offset;
  p.seed_ptr = params.seed_ptr;
  p.offset_ptr = params.offset_ptr;
  return rmmd_launch_denoise_step(p, stream);
}
