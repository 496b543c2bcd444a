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
