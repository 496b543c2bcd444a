// CUDA kernels of the RMMD cotangent assembly, method.md §c.6 step 7 and §e K5 (interface and math in
// rmmd_cotangent.cuh). Torch-free: CUDA headers and our own only.
//
// Launch sequence (all on one stream, no host synchronisation):
//   1. dmd only: abs_partial_kernel, grid (chunks, B): per-(sample, chunk) sums of |x0 - m_ref|;
//   2. weight_kernel, one thread per sample: w_eff[b] (into stats[b, 5]);
//   3. assemble_kernel, grid (chunks, B): writes g, and per-(sample, chunk) sums x0.d, d.d, gR.gR, e.e;
//   4. stats_kernel, one thread per sample: combines the chunk sums (double) into stats[b, 0..4].
// Per-(sample, chunk) partials instead of atomics keep the result deterministic; a chunk is
// kThreads * kItems elements, so an ImageNet-64 sample (D = 12288) is 6 blocks and a 5.3M-value weather
// state ~2600 (method.md §e practical notes: multi-CTA partial sums plus a tiny second kernel).
// Backward: not a kernel (rmmd_core/ops/rmmd_cotangent.py); the engine never differentiates this op.
#include "rmmd_cotangent.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "block_sum.cuh"
#include "io.cuh"

namespace {

using rmmd::Io;

constexpr int kThreads = 256;
constexpr int kItems = 8;  // elements per thread per block: 2048 per block
constexpr int64_t kChunk = static_cast<int64_t>(kThreads) * kItems;
constexpr int kWarps = kThreads / 32;
constexpr int kSums = 4;

int64_t chunks_per_sample(int64_t per_sample) { return (per_sample + kChunk - 1) / kChunk; }

template <typename T>
__global__ void __launch_bounds__(kThreads)
    abs_partial_kernel(double* __restrict__ partial, const T* __restrict__ x0, const T* __restrict__ m_ref,
                       int64_t per_sample) {
  using opmath_t = typename Io<T>::opmath_t;
  __shared__ opmath_t shared[kWarps];
  const int64_t b = blockIdx.y, chunk = blockIdx.x;
  const int64_t base = b * per_sample;
  opmath_t acc = 0;
  for (int k = 0; k < kItems; ++k) {
    const int64_t j = chunk * kChunk + static_cast<int64_t>(k) * kThreads + threadIdx.x;  // coalesced
    if (j < per_sample) {
      const opmath_t v = Io<T>::load(x0[base + j]) - Io<T>::load(m_ref[base + j]);
      acc += v < opmath_t(0) ? -v : v;
    }
  }
  const opmath_t total = rmmd::block_sum_shared<kWarps>(acc, shared);
  if (threadIdx.x == 0) partial[b * gridDim.x + chunk] = static_cast<double>(total);
}

template <typename opmath_t>
__global__ void weight_kernel(opmath_t* __restrict__ stats, const opmath_t* __restrict__ w,
                              const double* __restrict__ partial, int64_t batch, int64_t chunks, int64_t per_sample,
                              bool dmd, opmath_t dmd_eps) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  opmath_t w_eff = w[b];
  if (dmd) {
    double s = 0.0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[b * chunks + c];
    // mean and division in opmath, as the reference: w / (mabs + eps)
    const opmath_t mabs = static_cast<opmath_t>(s / static_cast<double>(per_sample));
    w_eff = w_eff / (mabs + dmd_eps);
  }
  stats[b * 6 + 5] = w_eff;
}

template <typename T, bool HAS_R, bool HAS_A>
__global__ void __launch_bounds__(kThreads)
    assemble_kernel(T* __restrict__ g, double* __restrict__ partial, const T* __restrict__ x0,
                    const T* __restrict__ m_stu, const T* __restrict__ m_ref, const T* __restrict__ g_r,
                    const T* __restrict__ anchor, const typename Io<T>::opmath_t* __restrict__ stats,
                    int64_t per_sample, typename Io<T>::opmath_t lam_s, typename Io<T>::opmath_t reg_s,
                    typename Io<T>::opmath_t scale) {
  using opmath_t = typename Io<T>::opmath_t;
  __shared__ opmath_t shared[kWarps];
  const int64_t b = blockIdx.y, chunk = blockIdx.x;
  const int64_t base = b * per_sample;
  const opmath_t we = stats[b * 6 + 5];
  opmath_t s_xd = 0, s_dd = 0, s_rr = 0, s_ee = 0;
  for (int k = 0; k < kItems; ++k) {
    const int64_t j = chunk * kChunk + static_cast<int64_t>(k) * kThreads + threadIdx.x;
    if (j >= per_sample) break;
    const int64_t i = base + j;
    const opmath_t x = Io<T>::load(x0[i]);
    const opmath_t d = Io<T>::load(m_stu[i]) - Io<T>::load(m_ref[i]);
    const opmath_t g_mm = we * d;
    opmath_t value = g_mm * scale;  // ((w d) scale - (scale lam) r) + (2 scale lam_reg) e, as the reference
    s_xd += x * g_mm;
    s_dd += d * d;
    if (HAS_R) {
      const opmath_t r = Io<T>::load(g_r[i]);
      value -= lam_s * r;
      s_rr += r * r;
    }
    if (HAS_A) {
      const opmath_t e = x - Io<T>::load(anchor[i]);
      value += reg_s * e;
      s_ee += e * e;
    }
    g[i] = Io<T>::store(value);
  }
  const opmath_t sums[kSums] = {s_xd, s_dd, s_rr, s_ee};
  double* out = partial + (b * gridDim.x + chunk) * kSums;
  for (int k = 0; k < kSums; ++k) {
    const opmath_t total = rmmd::block_sum_shared<kWarps>(sums[k], shared);
    if (threadIdx.x == 0) out[k] = static_cast<double>(total);
  }
}

template <typename opmath_t>
__global__ void stats_kernel(opmath_t* __restrict__ stats, const double* __restrict__ partial, int64_t batch,
                             int64_t chunks, int64_t per_sample, bool has_r, bool has_a, double lam, double lam_reg,
                             double scale) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  double s[kSums] = {0.0, 0.0, 0.0, 0.0};
  for (int64_t c = 0; c < chunks; ++c) {
    for (int k = 0; k < kSums; ++k) s[k] += partial[(b * chunks + c) * kSums + k];
  }
  const double inv_d = 1.0 / static_cast<double>(per_sample);
  const double we = static_cast<double>(stats[b * 6 + 5]);
  stats[b * 6 + 0] = static_cast<opmath_t>(s[0] * inv_d);
  stats[b * 6 + 1] = static_cast<opmath_t>(has_a ? s[3] * inv_d : 0.0);
  stats[b * 6 + 2] = static_cast<opmath_t>(scale * scale * we * we * s[1]);
  stats[b * 6 + 3] = static_cast<opmath_t>(has_r ? scale * scale * lam * lam * s[2] : 0.0);
  stats[b * 6 + 4] = static_cast<opmath_t>(has_a ? 4.0 * scale * scale * lam_reg * lam_reg * s[3] : 0.0);
}

template <typename T, bool HAS_R, bool HAS_A>
void launch_assemble(const RmmdCotangentParams& p, dim3 grid, double* partial, cudaStream_t stream) {
  using opmath_t = typename Io<T>::opmath_t;
  assemble_kernel<T, HAS_R, HAS_A><<<grid, kThreads, 0, stream>>>(
      static_cast<T*>(p.g), partial, static_cast<const T*>(p.x0), static_cast<const T*>(p.m_stu),
      static_cast<const T*>(p.m_ref), static_cast<const T*>(p.g_r), static_cast<const T*>(p.anchor),
      static_cast<const opmath_t*>(p.stats), p.per_sample, static_cast<opmath_t>(p.lam * p.scale),
      static_cast<opmath_t>(2.0 * p.lam_reg * p.scale), static_cast<opmath_t>(p.scale));
}

template <typename T>
cudaError_t launch_typed(const RmmdCotangentParams& p, cudaStream_t stream) {
  using opmath_t = typename Io<T>::opmath_t;
  const int64_t chunks = chunks_per_sample(p.per_sample);
  if (chunks > 0x7fffffff || p.batch > 65535) return cudaErrorInvalidValue;  // grid.x / grid.y limits
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(p.batch));
  double* partial = static_cast<double*>(p.workspace);
  opmath_t* stats = static_cast<opmath_t*>(p.stats);
  const int per_sample_blocks = static_cast<int>((p.batch + kThreads - 1) / kThreads);

  if (p.dmd) {
    abs_partial_kernel<T><<<grid, kThreads, 0, stream>>>(partial, static_cast<const T*>(p.x0),
                                                         static_cast<const T*>(p.m_ref), p.per_sample);
  }
  weight_kernel<opmath_t><<<per_sample_blocks, kThreads, 0, stream>>>(
      stats, static_cast<const opmath_t*>(p.w), partial, p.batch, chunks, p.per_sample, p.dmd,
      static_cast<opmath_t>(p.dmd_eps));
  const bool has_r = p.g_r != nullptr, has_a = p.anchor != nullptr;
  if (has_r && has_a) {
    launch_assemble<T, true, true>(p, grid, partial, stream);
  } else if (has_r) {
    launch_assemble<T, true, false>(p, grid, partial, stream);
  } else if (has_a) {
    launch_assemble<T, false, true>(p, grid, partial, stream);
  } else {
    launch_assemble<T, false, false>(p, grid, partial, stream);
  }
  stats_kernel<opmath_t><<<per_sample_blocks, kThreads, 0, stream>>>(stats, partial, p.batch, chunks, p.per_sample,
                                                                     has_r, has_a, p.lam, p.lam_reg, p.scale);
  return cudaGetLastError();
}

}  // namespace

int64_t rmmd_cotangent_workspace_bytes(const RmmdCotangentParams& params) {
  return params.batch * chunks_per_sample(params.per_sample) * kSums * static_cast<int64_t>(sizeof(double));
}

cudaError_t rmmd_launch_rmmd_cotangent(const RmmdCotangentParams& params, cudaStream_t stream) {
  if (params.batch <= 0 || params.per_sample <= 0) return cudaErrorInvalidValue;
  return rmmd_dispatch_dtype(params.dtype, [&](auto tag) { return launch_typed<decltype(tag)>(params, stream); });
}
