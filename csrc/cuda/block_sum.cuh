// Block-wide sum shared by the CUDA kernels with per-sample or per-variable reductions (rmmd_cotangent,
// crps / forecast_stats, the image rewards). Torch-free, header-only device code.
#pragma once

#include <cuda_runtime.h>

namespace rmmd {

// Sum of one value per thread over a block of kWarps * 32 threads, using `shared` (kWarps entries);
// the result is valid in thread 0. Safe to call repeatedly with the same `shared`: the leading
// barrier waits until thread 0 has read the previous call's entries.
template <int kWarps, typename T>
__device__ __forceinline__ T block_sum_shared(T v, T* shared) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T total = T(0);
  if (threadIdx.x == 0) {
    for (int i = 0; i < kWarps; ++i) total += shared[i];
  }
  return total;
}

}  // namespace rmmd
