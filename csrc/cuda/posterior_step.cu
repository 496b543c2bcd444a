// CUDA kernel of the posterior / DDIM(eta) step, method.md §a.4 and §e K1 (interface and math in
// posterior_step.cuh). Torch-free: CUDA headers and our own only.
//
// Forward:  z_s[i] = A[b] z_t[i] + C[b] x_hat[i] + gamma[b] n(seed, offset + i),  b = i / D.
// Backward: not a kernel; dz_s/dz_t = A[b] and dz_s/dx_hat = C[b] are applied in rmmd_core/ops/_library.py.
//
// Memory-bound except for the noise: per element 2 loads + 1 store, plus 10 Philox rounds and one
// logf/cosf when gamma[b] != 0. Math is in float32 (float64 for double data); the noise is float32
// for every dtype (that is the stream Triton's tl.randn defines). nvcc's default FMA contraction
// applies, so results can differ from the CPU kernel by an ULP; the noise uses the accurate logf/cosf
// (never build this file with --use_fast_math, see csrc/common/philox.h).
#include "posterior_step.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "../common/philox.h"
#include "io.cuh"

namespace {

constexpr int kThreads = 256;
// 8 x 256 threads fill an SM's 2048 thread slots on sm_80 / sm_90; more blocks than that only add
// scheduling, the grid-stride loop covers the rest.
constexpr int kBlocksPerSm = 8;

using rmmd::Io;

// IndexT is uint32_t when every index (and index + grid stride) fits, which makes the per-element
// i / D a 32-bit division; otherwise int64_t.
template <typename T, typename IndexT>
__global__ void __launch_bounds__(kThreads)
    posterior_step_kernel(T* __restrict__ out, const T* __restrict__ z_t, const T* __restrict__ x_hat,
                          const typename Io<T>::opmath_t* __restrict__ A,
                          const typename Io<T>::opmath_t* __restrict__ C,
                          const typename Io<T>::opmath_t* __restrict__ gamma, IndexT numel, IndexT per_sample,
                          uint64_t seed, uint64_t offset) {
  using opmath_t = typename Io<T>::opmath_t;
  const IndexT stride = static_cast<IndexT>(gridDim.x) * static_cast<IndexT>(blockDim.x);
  for (IndexT i = static_cast<IndexT>(blockIdx.x) * static_cast<IndexT>(blockDim.x) + threadIdx.x; i < numel;
       i += stride) {
    const IndexT b = i / per_sample;
    const opmath_t g = gamma[b];
    opmath_t value = A[b] * Io<T>::load(z_t[i]) + C[b] * Io<T>::load(x_hat[i]);
    if (g != opmath_t(0)) {  // deterministic samples (eta = 0, final step) skip Philox entirely
      // uint64 counter; offset, i < 2^63 keep it below 2^64 (Triton: offset + i as int64).
      value += g * static_cast<opmath_t>(rmmd::philox::randn(seed, offset + static_cast<uint64_t>(i)));
    }
    out[i] = Io<T>::store(value);
  }
}

template <typename T>
cudaError_t launch_typed(const PosteriorStepParams& p, cudaStream_t stream) {
  using opmath_t = typename Io<T>::opmath_t;
  int blocks = 1;
  const cudaError_t err = rmmd_grid_stride_blocks(p.numel, kThreads, kBlocksPerSm, &blocks);
  if (err != cudaSuccess) return err;
  const int64_t stride = static_cast<int64_t>(blocks) * kThreads;

  T* out = static_cast<T*>(p.out);
  const T* z = static_cast<const T*>(p.z_t);
  const T* x = static_cast<const T*>(p.x_hat);
  const opmath_t* a = static_cast<const opmath_t*>(p.A);
  const opmath_t* c = static_cast<const opmath_t*>(p.C);
  const opmath_t* g = static_cast<const opmath_t*>(p.gamma);
  if (p.numel + stride <= static_cast<int64_t>(UINT32_MAX)) {
    posterior_step_kernel<T, uint32_t><<<blocks, kThreads, 0, stream>>>(
        out, z, x, a, c, g, static_cast<uint32_t>(p.numel), static_cast<uint32_t>(p.per_sample), p.seed, p.offset);
  } else {
    posterior_step_kernel<T, int64_t><<<blocks, kThreads, 0, stream>>>(out, z, x, a, c, g, p.numel, p.per_sample,
                                                                       p.seed, p.offset);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t rmmd_launch_posterior_step(const PosteriorStepParams& params, cudaStream_t stream) {
  if (params.numel == 0) return cudaSuccess;
  if (params.numel < 0 || params.per_sample <= 0) return cudaErrorInvalidValue;
  return rmmd_dispatch_dtype(params.dtype, [&](auto tag) { return launch_typed<decltype(tag)>(params, stream); });
}
