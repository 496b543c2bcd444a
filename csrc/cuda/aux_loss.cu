// CUDA kernels of the auxiliary loss and its output gradient, method.md §c.6 step 8 and §e K6 (interface
// in aux_loss.cuh). Torch-free. One pass: grid (chunks, B), each block writes grad for its chunk of one
// sample and one partial sum; a per-sample kernel combines the partials (double) in a fixed order, so
// the result is deterministic (no atomics). Backward: not a kernel (rmmd_core/ops/aux_loss.py).
#include "aux_loss.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "block_sum.cuh"
#include "io.cuh"

namespace {

using rmmd::Io;

constexpr int kThreads = 256;
constexpr int kItems = 8;
constexpr int64_t kChunk = static_cast<int64_t>(kThreads) * kItems;
constexpr int kWarps = kThreads / 32;

int64_t chunks_per_sample(int64_t per_sample) { return (per_sample + kChunk - 1) / kChunk; }

template <typename T>
__global__ void __launch_bounds__(kThreads)
    aux_loss_kernel(T* __restrict__ grad, double* __restrict__ partial, const T* __restrict__ o,
                    const T* __restrict__ x0, const T* __restrict__ m_ref,
                    const typename Io<T>::opmath_t* __restrict__ w, int64_t per_sample, double two_over_bd) {
  using opmath_t = typename Io<T>::opmath_t;
  __shared__ opmath_t shared[kWarps];
  const int64_t b = blockIdx.y, chunk = blockIdx.x;
  const int64_t base = b * per_sample;
  const opmath_t coef = static_cast<opmath_t>(two_over_bd) * w[b];  // 2 w / (B D), as the reference
  opmath_t acc = 0;
  for (int k = 0; k < kItems; ++k) {
    const int64_t j = chunk * kChunk + static_cast<int64_t>(k) * kThreads + threadIdx.x;  // coalesced
    if (j >= per_sample) break;
    const opmath_t ov = Io<T>::load(o[base + j]);
    const opmath_t e_x = ov - Io<T>::load(x0[base + j]);
    const opmath_t e_m = ov - Io<T>::load(m_ref[base + j]);
    acc += e_x * e_x + e_m * e_m;
    grad[base + j] = Io<T>::store(coef * (e_x + e_m));
  }
  const opmath_t total = rmmd::block_sum_shared<kWarps>(acc, shared);
  if (threadIdx.x == 0) partial[b * gridDim.x + chunk] = static_cast<double>(total);
}

template <typename opmath_t>
__global__ void loss_kernel(opmath_t* __restrict__ loss, const double* __restrict__ partial,
                            const opmath_t* __restrict__ w, int64_t batch, int64_t chunks, int64_t per_sample) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  double s = 0.0;
  for (int64_t c = 0; c < chunks; ++c) s += partial[b * chunks + c];
  loss[b] = w[b] * static_cast<opmath_t>(s) / static_cast<opmath_t>(per_sample);
}

template <typename T>
cudaError_t launch_typed(const AuxLossParams& p, cudaStream_t stream) {
  using opmath_t = typename Io<T>::opmath_t;
  const int64_t chunks = chunks_per_sample(p.per_sample);
  if (chunks > 0x7fffffff || p.batch > 65535) return cudaErrorInvalidValue;  // grid.x / grid.y limits
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(p.batch));
  double* partial = static_cast<double*>(p.workspace);
  const opmath_t* w = static_cast<const opmath_t*>(p.w);
  const double two_over_bd = 2.0 / (static_cast<double>(p.batch) * static_cast<double>(p.per_sample));
  aux_loss_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<T*>(p.grad), partial, static_cast<const T*>(p.o),
                                                    static_cast<const T*>(p.x0), static_cast<const T*>(p.m_ref), w,
                                                    p.per_sample, two_over_bd);
  const int blocks = static_cast<int>((p.batch + kThreads - 1) / kThreads);
  loss_kernel<opmath_t><<<blocks, kThreads, 0, stream>>>(static_cast<opmath_t*>(p.loss), partial, w, p.batch, chunks,
                                                         p.per_sample);
  return cudaGetLastError();
}

}  // namespace

int64_t rmmd_aux_loss_workspace_bytes(const AuxLossParams& params) {
  return params.batch * chunks_per_sample(params.per_sample) * static_cast<int64_t>(sizeof(double));
}

cudaError_t rmmd_launch_aux_loss(const AuxLossParams& params, cudaStream_t stream) {
  if (params.batch <= 0 || params.per_sample <= 0) return cudaErrorInvalidValue;
  return rmmd_dispatch_dtype(params.dtype, [&](auto tag) { return launch_typed<decltype(tag)>(params, stream); });
}
