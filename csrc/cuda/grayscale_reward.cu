// CUDA kernel of the black-and-white reward and its gradient, method.md §e K4a (interface in
// image_rewards.cuh). Torch-free. Grid (chunks, B): each block reads kChunk pixels of one sample in all
// three channels, writes their gradient and one partial sum of d^2; finish_reward_values combines the
// partials per sample (double, fixed order), so results are deterministic (no atomics).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "image_reward_sums.cuh"
#include "image_rewards.cuh"
#include "io.cuh"

namespace {

using rmmd::Io;

constexpr int kThreads = 256;
constexpr int kItems = 4;
constexpr int64_t kChunk = static_cast<int64_t>(kThreads) * kItems;

int64_t chunks_per_sample(int64_t pixels) { return (pixels + kChunk - 1) / kChunk; }

template <typename T>
__global__ void __launch_bounds__(kThreads)
    grayscale_kernel(T* __restrict__ grad, double* __restrict__ partial, const T* __restrict__ x, int64_t hw,
                     typename Io<T>::opmath_t coef) {
  using opmath_t = typename Io<T>::opmath_t;
  // ITU-R BT.601 luma, rounded to opmath like the reference's LUMA tensor.
  const opmath_t w0 = static_cast<opmath_t>(0.299), w1 = static_cast<opmath_t>(0.587),
                 w2 = static_cast<opmath_t>(0.114);
  const int64_t b = blockIdx.y, chunk = blockIdx.x;
  const int64_t base = b * 3 * hw;
  opmath_t acc = 0;
  for (int k = 0; k < kItems; ++k) {
    const int64_t p = chunk * kChunk + static_cast<int64_t>(k) * kThreads + threadIdx.x;  // coalesced
    if (p >= hw) break;
    const opmath_t x0 = Io<T>::load(x[base + p]), x1 = Io<T>::load(x[base + hw + p]),
                   x2 = Io<T>::load(x[base + 2 * hw + p]);
    const opmath_t gray = x0 * w0 + x1 * w1 + x2 * w2;
    const opmath_t d0 = x0 - gray, d1 = x1 - gray, d2 = x2 - gray;
    const opmath_t s = d0 + d1 + d2;
    acc += d0 * d0 + d1 * d1 + d2 * d2;
    grad[base + p] = Io<T>::store(coef * (d0 - w0 * s));
    grad[base + hw + p] = Io<T>::store(coef * (d1 - w1 * s));
    grad[base + 2 * hw + p] = Io<T>::store(coef * (d2 - w2 * s));
  }
  const opmath_t total = rmmd::block_sum<kThreads>(acc);
  if (threadIdx.x == 0) partial[b * gridDim.x + chunk] = static_cast<double>(total);
}

template <typename T>
cudaError_t launch_typed(const ImageRewardParams& p, cudaStream_t stream) {
  using opmath_t = typename Io<T>::opmath_t;
  const int64_t hw = p.height * p.width, D = 3 * hw;
  const int64_t chunks = chunks_per_sample(hw);
  if (chunks > 0x7fffffff || p.batch > 65535) return cudaErrorInvalidValue;  // grid.x / grid.y limits
  double* partial = static_cast<double*>(p.workspace);
  const opmath_t coef = static_cast<opmath_t>(-2.0 / static_cast<double>(D));
  grayscale_kernel<T><<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(p.batch)), kThreads, 0, stream>>>(
      static_cast<T*>(p.grad), partial, static_cast<const T*>(p.x), hw, coef);
  const int blocks = static_cast<int>((p.batch + kThreads - 1) / kThreads);
  rmmd::finish_reward_values<opmath_t>
      <<<blocks, kThreads, 0, stream>>>(static_cast<opmath_t*>(p.value), partial, p.batch, chunks, D);
  return cudaGetLastError();
}

}  // namespace

int64_t rmmd_grayscale_reward_workspace_bytes(const ImageRewardParams& params) {
  return params.batch * chunks_per_sample(params.height * params.width) * static_cast<int64_t>(sizeof(double));
}

cudaError_t rmmd_launch_grayscale_reward(const ImageRewardParams& params, cudaStream_t stream) {
  if (params.batch <= 0 || params.channels != 3 || params.height <= 0 || params.width <= 0) {
    return cudaErrorInvalidValue;
  }
  return rmmd_dispatch_dtype(params.dtype, [&](auto tag) { return launch_typed<decltype(tag)>(params, stream); });
}
