// CUDA kernel of "denoise + step", method.md §e K1 / K3 (interface and math in denoise_step.cuh).
// Torch-free: CUDA headers and our own only.
//
// Forward:  z_s[i] = P[b] z_t[i] + Q[b] F[i] + gamma[b] n(seed, offset + i);  x0[i] = a[b] z_t[i] + c[b] F[i].
// Backward: not a kernel; rmmd_core/ops/denoise_step.py applies the per-sample coefficients.
//
// Also the kernel of posterior_step (P = A, Q = C, no x0; posterior_step.cu) and so of renoise.
// Memory-bound except for the noise: per element 2 loads + 1 store (+1 with x0), plus 10 Philox rounds
// and one logf / cosf when gamma[b] != 0. Numerics: float32 math (float64 for double data), float32
// noise with the accurate logf / cosf (never build with --use_fast_math, see csrc/common/philox.h),
// nvcc's default FMA contraction (so an ULP from the CPU kernel is possible). WANT_X0 is a template
// argument so the common no-x0 path carries no extra branch or register.
#include "denoise_step.cuh"

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
template <typename T, typename IndexT, bool WantX0>
__global__ void __launch_bounds__(kThreads)
    denoise_step_kernel(T* __restrict__ z_s, T* __restrict__ x0, const T* __restrict__ z_t,
                        const T* __restrict__ net_out, const typename Io<T>::opmath_t* __restrict__ P,
                        const typename Io<T>::opmath_t* __restrict__ Q,
                        const typename Io<T>::opmath_t* __restrict__ gamma,
                        const typename Io<T>::opmath_t* __restrict__ a,
                        const typename Io<T>::opmath_t* __restrict__ c, IndexT numel, IndexT per_sample,
                        uint64_t seed, uint64_t offset, const int64_t* __restrict__ seed_ptr,
                        const int64_t* __restrict__ offset_ptr) {
  using opmath_t = typename Io<T>::opmath_t;
  // Device seeds: one broadcast 8-byte load per thread (the same address for the whole grid, served by the
  // cache); a uniform branch otherwise. The loaded value is the uint64 the int path would have received.
  if (seed_ptr != nullptr) seed = static_cast<uint64_t>(__ldg(seed_ptr));
  if (offset_ptr != nullptr) offset = static_cast<uint64_t>(__ldg(offset_ptr));
  const IndexT stride = static_cast<IndexT>(gridDim.x) * static_cast<IndexT>(blockDim.x);
  for (IndexT i = static_cast<IndexT>(blockIdx.x) * static_cast<IndexT>(blockDim.x) + threadIdx.x; i < numel;
       i += stride) {
    const IndexT b = i / per_sample;
    const opmath_t z = Io<T>::load(z_t[i]);
    const opmath_t f = Io<T>::load(net_out[i]);
    const opmath_t g = gamma[b];
    opmath_t value = P[b] * z + Q[b] * f;
    if (g != opmath_t(0)) {  // deterministic samples (eta = 0, final step) skip Philox entirely
      value += g * static_cast<opmath_t>(rmmd::philox::randn(seed, offset + static_cast<uint64_t>(i)));
    }
    z_s[i] = Io<T>::store(value);
    if (WantX0) {
      x0[i] = Io<T>::store(a[b] * z + c[b] * f);
    }
  }
}

template <typename T, typename IndexT>
void launch_indexed(const DenoiseStepParams& p, int blocks, cudaStream_t stream) {
  using opmath_t = typename Io<T>::opmath_t;
  T* zs = static_cast<T*>(p.z_s);
  T* x0 = static_cast<T*>(p.x0);
  const T* z = static_cast<const T*>(p.z_t);
  const T* f = static_cast<const T*>(p.net_out);
  const opmath_t* P = static_cast<const opmath_t*>(p.P);
  const opmath_t* Q = static_cast<const opmath_t*>(p.Q);
  const opmath_t* g = static_cast<const opmath_t*>(p.gamma);
  const opmath_t* a = static_cast<const opmath_t*>(p.a);
  const opmath_t* c = static_cast<const opmath_t*>(p.c);
  const IndexT n = static_cast<IndexT>(p.numel), d = static_cast<IndexT>(p.per_sample);
  if (x0 != nullptr) {
    denoise_step_kernel<T, IndexT, true><<<blocks, kThreads, 0, stream>>>(zs, x0, z, f, P, Q, g, a, c, n, d, p.seed,
                                                                          p.offset, p.seed_ptr, p.offset_ptr);
  } else {
    denoise_step_kernel<T, IndexT, false><<<blocks, kThreads, 0, stream>>>(zs, x0, z, f, P, Q, g, a, c, n, d, p.seed,
                                                                           p.offset, p.seed_ptr, p.offset_ptr);
  }
}

template <typename T>
cudaError_t launch_typed(const DenoiseStepParams& p, cudaStream_t stream) {
  int blocks = 1;
  const cudaError_t err = rmmd_grid_stride_blocks(p.numel, kThreads, kBlocksPerSm, &blocks);
  if (err != cudaSuccess) return err;
  const int64_t stride = static_cast<int64_t>(blocks) * kThreads;
  // 32-bit indices (a 32-bit i / D) whenever every index plus one grid stride fits.
  if (p.numel + stride <= static_cast<int64_t>(UINT32_MAX)) {
    launch_indexed<T, uint32_t>(p, blocks, stream);
  } else {
    launch_indexed<T, int64_t>(p, blocks, stream);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t rmmd_launch_denoise_step(const DenoiseStepParams& params, cudaStream_t stream) {
  if (params.numel == 0) return cudaSuccess;
  if (params.numel < 0 || params.per_sample <= 0) return cudaErrorInvalidValue;
  return rmmd_dispatch_dtype(params.dtype, [&](auto tag) { return launch_typed<decltype(tag)>(params, stream); });
}
