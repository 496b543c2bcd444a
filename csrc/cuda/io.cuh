// Device-side load / store in an op's math type: float for float, half and bfloat16; double for double
// (method.md Project defaults: element-wise work in fp32, low precision upcast in registers). Torch-free.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

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
