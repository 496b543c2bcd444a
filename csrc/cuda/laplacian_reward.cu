// CUDA kernel of the Laplacian-smoothness reward and its gradient, method.md §e K4b (interface in
// image_rewards.cuh). Torch-free. One pass with a halo of 2: each block owns a kTileH x kTileW tile of one
// (b, c) plane, stages the (kTileH + 4) x (kTileW + 4) input window (clamped reads = replicate borders)
// in shared memory, computes the residual r = x - avg4(x) on the (kTileH + 2) x (kTileW + 2) window, then
// grad = -(2/D) (r - avg4(r)) on the tile, whose avg4 reads r at clamped positions (the replicate-border
// adjoint: avg4 is symmetric). Per-tile partial sums of r^2 are combined per sample in a fixed order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "image_reward_sums.cuh"
#include "image_rewards.cuh"
#include "io.cuh"

namespace {

using rmmd::Io;

constexpr int kThreads = 256;
constexpr int kTileW = 32, kTileH = 16;
constexpr int kXW = kTileW + 4, kXH = kTileH + 4;  // input window, halo 2
constexpr int kRW = kTileW + 2, kRH = kTileH + 2;  // residual window, halo 1

__device__ __forceinline__ int64_t clamp_index(int64_t i, int64_t n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

template <typename T>
__global__ void __launch_bounds__(kThreads)
    laplacian_kernel(T* __restrict__ grad, double* __restrict__ partial, const T* __restrict__ x, int64_t height,
                     int64_t width, int64_t tiles_x, int64_t tiles_per_plane, typename Io<T>::opmath_t coef) {
  using opmath_t = typename Io<T>::opmath_t;
  __shared__ opmath_t xs[kXH][kXW];
  __shared__ opmath_t rs[kRH][kRW];
  const int64_t plane = blockIdx.x / tiles_per_plane, tile = blockIdx.x % tiles_per_plane;
  const int64_t row0 = (tile / tiles_x) * kTileH, col0 = (tile % tiles_x) * kTileW;
  const T* xp = x + plane * height * width;
  T* gp = grad + plane * height * width;
  const opmath_t quarter = static_cast<opmath_t>(0.25);

  // Input window rows row0-2 .. row0+kTileH+1 (clamped), cols alike.
  for (int k = threadIdx.x; k < kXH * kXW; k += kThreads) {
    const int wi = k / kXW, wj = k % kXW;
    xs[wi][wj] = Io<T>::load(xp[clamp_index(row0 - 2 + wi, height) * width + clamp_index(col0 - 2 + wj, width)]);
  }
  __syncthreads();
  // Residual at image position (row0 - 1 + ri, col0 - 1 + rj). Its neighbours are clamped in *image*
  // coordinates; clamping maps back into the window because clamped positions of the window's own rows
  // and columns are window positions too (the window stores clamped reads).
  for (int k = threadIdx.x; k < kRH * kRW; k += kThreads) {
    const int ri = k / kRW, rj = k % kRW;
    const int64_t i = row0 - 1 + ri, j = col0 - 1 + rj;
    const int64_t ic = clamp_index(i, height), jc = clamp_index(j, width);
    // window index of image row / col r: r - (row0 - 2)
    const int mi = static_cast<int>(ic - (row0 - 2)), mj = static_cast<int>(jc - (col0 - 2));
    const int up = static_cast<int>(clamp_index(ic - 1, height) - (row0 - 2));
    const int dn = static_cast<int>(clamp_index(ic + 1, height) - (row0 - 2));
    const int lf = static_cast<int>(clamp_index(jc - 1, width) - (col0 - 2));
    const int rt = static_cast<int>(clamp_index(jc + 1, width) - (col0 - 2));
    rs[ri][rj] = xs[mi][mj] - quarter * (((xs[up][mj] + xs[dn][mj]) + xs[mi][lf]) + xs[mi][rt]);
  }
  __syncthreads();
  opmath_t acc = 0;
  for (int k = threadIdx.x; k < kTileH * kTileW; k += kThreads) {
    const int ti = k / kTileW, tj = k % kTileW;
    const int64_t i = row0 + ti, j = col0 + tj;
    if (i >= height || j >= width) continue;
    // residual-window index of image row / col r: r - (row0 - 1)
    const int mi = ti + 1, mj = tj + 1;
    const int up = static_cast<int>(clamp_index(i - 1, height) - (row0 - 1));
    const int dn = static_cast<int>(clamp_index(i + 1, height) - (row0 - 1));
    const int lf = static_cast<int>(clamp_index(j - 1, width) - (col0 - 1));
    const int rt = static_cast<int>(clamp_index(j + 1, width) - (col0 - 1));
    const opmath_t r = rs[mi][mj];
    acc += r * r;
    gp[i * width + j] = Io<T>::store(coef * (r - quarter * (((rs[up][mj] + rs[dn][mj]) + rs[mi][lf]) + rs[mi][rt])));
  }
  const opmath_t total = rmmd::block_sum<kThreads>(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = static_cast<double>(total);
}

struct Tiling {
  int64_t tiles_x, tiles_per_plane;
};

Tiling tiling(const ImageRewardParams& p) {
  const int64_t tx = (p.width + kTileW - 1) / kTileW, ty = (p.height + kTileH - 1) / kTileH;
  return {tx, tx * ty};
}

template <typename T>
cudaError_t launch_typed(const ImageRewardParams& p, cudaStream_t stream) {
  using opmath_t = typename Io<T>::opmath_t;
  const Tiling t = tiling(p);
  const int64_t blocks = p.batch * p.channels * t.tiles_per_plane;  // sample b owns a contiguous range
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const int64_t D = p.channels * p.height * p.width;
  double* partial = static_cast<double*>(p.workspace);
  const opmath_t coef = static_cast<opmath_t>(-2.0 / static_cast<double>(D));
  laplacian_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<T*>(p.grad), partial, static_cast<const T*>(p.x), p.height, p.width, t.tiles_x, t.tiles_per_plane,
      coef);
  const int finish_blocks = static_cast<int>((p.batch + kThreads - 1) / kThreads);
  rmmd::finish_reward_values<opmath_t><<<finish_blocks, kThreads, 0, stream>>>(
      static_cast<opmath_t*>(p.value), partial, p.batch, p.channels * t.tiles_per_plane, D);
  return cudaGetLastError();
}

}  // namespace

int64_t rmmd_laplacian_reward_workspace_bytes(const ImageRewardParams& params) {
  return params.batch * params.channels * tiling(params).tiles_per_plane * static_cast<int64_t>(sizeof(double));
}

cudaError_t rmmd_launch_laplacian_reward(const ImageRewardParams& params, cudaStream_t stream) {
  if (params.batch <= 0 || params.channels <= 0 || params.height <= 0 || params.width <= 0) {
    return cudaErrorInvalidValue;
  }
  return rmmd_dispatch_dtype(params.dtype, [&](auto tag) { return launch_typed<decltype(tag)>(params, stream); });
}
