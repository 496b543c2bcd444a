// Device-side load / store in an op's math type: float for float, half and bfloat16; double for double
// (method.md Project defaults: element-wise work in fp32, low precision upcast in registers). Torch-free.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "rmmd_types.cuh"

namespace rmmd {

template <typename T>
struct Io;

template <>
struct Io<float> {
  using opmath_t = float;
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};

template <>
struct Io<double> {
  using opmath_t = double;
  static __device__ __forceinline__ double load(double v) { return v; }
  static __device__ __forceinline__ double store(double v) { return v; }
};

template <>
struct Io<__half> {
  using opmath_t = float;
  static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};

template <>
struct Io<__nv_bfloat16> {
  using opmath_t = float;
  static __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

}  // namespace rmmd

// Calls f(T{}) with T the CUDA element type of `dtype` (float, double, __half, __nv_bfloat16) and
// returns its cudaError_t: the one place that maps RmmdDType to a template argument for every launcher.
template <typename F>
inline cudaError_t rmmd_dispatch_dtype(RmmdDType dtype, F&& f) {
  switch (dtype) {
    case RmmdDType::kFloat32:
      return f(float{});
    case RmmdDType::kFloat64:
      return f(double{});
    case RmmdDType::kFloat16:
      return f(__half{});
    case RmmdDType::kBFloat16:
      return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// Grid size for a grid-stride loop over `numel` elements with `threads` per block: one block per
// `threads` elements, capped at `blocks_per_sm` blocks on every SM of the current device (enough to fill
// the thread slots of sm_80 / sm_90; the loop strides over the rest). Writes *blocks (>= 1).
inline cudaError_t rmmd_grid_stride_blocks(int64_t numel, int threads, int blocks_per_sm, int* blocks) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  int sm_count = 0;
  err = cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  const int64_t needed = (numel + threads - 1) / threads;
  const int64_t most = static_cast<int64_t>(sm_count) * blocks_per_sm;
  *blocks = static_cast<int>(needed < most ? (needed > 0 ? needed : 1) : most);
  return cudaSuccess;
}
