// Block reductions and the per-sample finish shared by the image-reward kernels (grayscale_reward.cu,
// laplacian_reward.cu). Torch-free, header-only device code.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "block_sum.cuh"

namespace rmmd {

// Sum of `v` over a block of kThreads threads (multiple of 32); the result is valid in thread 0.
template <int kThreads, typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T shared[kThreads / 32];
  return block_sum_shared<kThreads / 32>(v, shared);
}

// value[b] = -(sum_k partial[b * per_sample + k]) / D, the sum (double, fixed order) rounded to opmath
// first as in rmmd_core/ops/reward_reference.py.
template <typename opmath_t>
__global__ void finish_reward_values(opmath_t* __restrict__ value, const double* __restrict__ partial,
                                     int64_t batch, int64_t per_sample, int64_t D) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  double s = 0.0;
  for (int64_t k = 0; k < per_sample; ++k) s += partial[b * per_sample + k];
  value[b] = -static_cast<opmath_t>(s) / static_cast<opmath_t>(D);
}

}  // namespace rmmd
