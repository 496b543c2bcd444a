// CUDA kernels of the fair ensemble CRPS and the forecast statistics, method.md §c.7 and §e K4c, K10
// (interface and math in crps.cuh). Torch-free: CUDA headers and our own only.
//
// One thread per element. Its M members live in a register array for M <= 32 (kernels templated on the
// bucket MAXM in {4, 8, 16, 32}, loops fully unrolled so the arrays stay in registers); ranks are
// counted with one compare per member pair (M(M-1)/2), no sort and no M x M tensor. Above 32 members the
// same count re-reads members from global memory (L1 / L2 hits): O(M^2) compares, O(1) registers. (A
// 64-member register bucket tripled nvcc time, 11 s -> 32 s per arch, for a gain not measured yet.)
// M = 2 has its own closed-form kernel.
//
// Launch sequence (one stream, no host synchronisation): element kernel, grid (chunks, B or V), writes
// grad and one partial sum per block (deterministic, no atomics); then a finalize kernel, one thread per
// sample / variable, sums the block partials in a fixed order (double).
#include "crps.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "block_sum.cuh"
#include "io.cuh"

namespace {

using rmmd::Io;

constexpr int kThreads = 256;  // elements per block
constexpr int kWarps = kThreads / 32;
constexpr int kFields = 5;  // forecast statistics per variable

int64_t chunks_for(int64_t elements) { return (elements + kThreads - 1) / kThreads; }

template <typename opmath_t>
__device__ __forceinline__ opmath_t sign_of(opmath_t v) {
  return static_cast<opmath_t>((v > opmath_t(0)) - (v < opmath_t(0)));
}

template <typename opmath_t>
__device__ __forceinline__ opmath_t abs_of(opmath_t v) {
  return v < opmath_t(0) ? -v : v;
}

// Calls f(i, x_i, c_i) for every member i < M of element e, c_i = 2 rank_i - M - 1 (stable ranks).
template <int MAXM, typename T, typename F>
__device__ __forceinline__ void for_each_ranked(const T* __restrict__ ens, int64_t N, int64_t e, int M, F&& f) {
  using opmath_t = typename Io<T>::opmath_t;
  const opmath_t offset = static_cast<opmath_t>(1 - M);
  if constexpr (MAXM > 0) {
    opmath_t x[MAXM], cnt[MAXM];
#pragma unroll
    for (int i = 0; i < MAXM; ++i) {
      x[i] = i < M ? Io<T>::load(ens[static_cast<int64_t>(i) * N + e]) : opmath_t(0);
      cnt[i] = opmath_t(0);
    }
    // cnt_i = #{j : x_j < x_i} + #{j < i : x_j == x_i}: for j < i, x_j <= x_i puts j first, else i.
#pragma unroll
    for (int i = 1; i < MAXM; ++i) {
#pragma unroll
      for (int j = 0; j < i; ++j) {
        if (i < M) {
          const opmath_t before = x[j] <= x[i] ? opmath_t(1) : opmath_t(0);
          cnt[i] += before;
          cnt[j] += opmath_t(1) - before;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < MAXM; ++i) {
      if (i < M) f(i, x[i], opmath_t(2) * cnt[i] + offset);
    }
  } else {
    for (int i = 0; i < M; ++i) {
      const opmath_t xi = Io<T>::load(ens[static_cast<int64_t>(i) * N + e]);
      opmath_t cnt = opmath_t(0);
      for (int j = 0; j < M; ++j) {
        const opmath_t xj = Io<T>::load(ens[static_cast<int64_t>(j) * N + e]);
        cnt += (xj < xi || (xj == xi && j < i)) ? opmath_t(1) : opmath_t(0);
      }
      f(i, xi, opmath_t(2) * cnt + offset);
    }
  }
}

template <typename T, int MAXM, bool WITH_GRAD>
__global__ void __launch_bounds__(kThreads)
    crps_kernel(double* __restrict__ partial, T* __restrict__ grad, const T* __restrict__ ens,
                const T* __restrict__ target, const double* __restrict__ weight, int64_t weight_stride,
                const double* __restrict__ inv_norm, const uint8_t* __restrict__ mask, int M, int64_t per_sample,
                int64_t N) {
  using opmath_t = typename Io<T>::opmath_t;
  __shared__ opmath_t shared[kWarps];
  const int64_t b = blockIdx.y, chunk = blockIdx.x;
  const int64_t j = chunk * kThreads + threadIdx.x;
  opmath_t value = opmath_t(0);
  if (j < per_sample) {
    const int64_t e = b * per_sample + j;
    const bool on = mask == nullptr || mask[e] != 0;
    const opmath_t wn = on ? static_cast<opmath_t>(weight[j * weight_stride] * inv_norm[b]) : opmath_t(0);
    // A zero-weight element contributes nothing; y = 0 keeps a masked NaN target out of the math.
    const opmath_t y = wn != opmath_t(0) ? Io<T>::load(target[e]) : opmath_t(0);
    const opmath_t m = static_cast<opmath_t>(M), pairs = static_cast<opmath_t>(M) * static_cast<opmath_t>(M - 1);
    if constexpr (MAXM == 2) {
      const opmath_t x1 = Io<T>::load(ens[e]), x2 = Io<T>::load(ens[N + e]);
      const opmath_t half = opmath_t(0.5);
      value = (half * (abs_of(x1 - y) + abs_of(x2 - y)) - half * abs_of(x1 - x2)) * wn;
      if constexpr (WITH_GRAD) {
        grad[e] = Io<T>::store((half * sign_of(x1 - y) - half * sign_of(x1 - x2)) * wn);
        grad[N + e] = Io<T>::store((half * sign_of(x2 - y) - half * sign_of(x2 - x1)) * wn);
      }
    } else {
      opmath_t skill = opmath_t(0), lin = opmath_t(0);
      for_each_ranked<MAXM>(ens, N, e, M, [&](int i, opmath_t xi, opmath_t c) {
        skill += abs_of(xi - y);
        lin += c * xi;
        if constexpr (WITH_GRAD) {
          grad[static_cast<int64_t>(i) * N + e] = Io<T>::store((sign_of(xi - y) / m - c / pairs) * wn);
        }
      });
      value = (skill / m - lin / pairs) * wn;
    }
  }
  const opmath_t total = rmmd::block_sum_shared<kWarps>(value, shared);
  if (threadIdx.x == 0) partial[b * gridDim.x + chunk] = static_cast<double>(total);
}

template <typename opmath_t>
__global__ void crps_finalize_kernel(opmath_t* __restrict__ crps, const double* __restrict__ partial, int64_t batch,
                                     int64_t chunks) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  double s = 0.0;
  for (int64_t c = 0; c < chunks; ++c) s += partial[b * chunks + c];
  crps[b] = static_cast<opmath_t>(s);
}

template <typename T, int MAXM>
__global__ void __launch_bounds__(kThreads)
    stats_kernel(double* __restrict__ partial, const T* __restrict__ ens, const T* __restrict__ target,
                 const double* __restrict__ weight, int64_t weight_stride, const uint8_t* __restrict__ mask, int M,
                 int64_t per_sample,
                 int64_t N, int64_t variables, int64_t inner, int64_t plane) {
  using opmath_t = typename Io<T>::opmath_t;
  __shared__ opmath_t shared[kWarps];
  const int64_t v = blockIdx.y, chunk = blockIdx.x;
  const int64_t p = chunk * kThreads + threadIdx.x;
  opmath_t f[kFields] = {opmath_t(0), opmath_t(0), opmath_t(0), opmath_t(0), opmath_t(0)};
  if (p < plane) {
    const int64_t e = (p / inner) * variables * inner + v * inner + p % inner;
    const bool on = mask == nullptr || mask[e] != 0;
    const opmath_t w = on ? static_cast<opmath_t>(weight[(e % per_sample) * weight_stride]) : opmath_t(0);
    const opmath_t y = w != opmath_t(0) ? Io<T>::load(target[e]) : opmath_t(0);
    const opmath_t m = static_cast<opmath_t>(M), pairs = static_cast<opmath_t>(M) * static_cast<opmath_t>(M - 1);
    opmath_t skill = opmath_t(0), lin = opmath_t(0), sum = opmath_t(0);
    for_each_ranked<MAXM>(ens, N, e, M, [&](int, opmath_t xi, opmath_t c) {
      skill += abs_of(xi - y);
      lin += c * xi;
      sum += xi;
    });
    const opmath_t mean = sum / m;
    opmath_t sq = opmath_t(0);
    for (int i = 0; i < M; ++i) {  // two-pass variance (cache hits): no cancellation for large means
      const opmath_t d = Io<T>::load(ens[static_cast<int64_t>(i) * N + e]) - mean;
      sq += d * d;
    }
    const opmath_t err = mean - y;
    f[0] = w * (skill / m);
    f[1] = w * (lin / pairs);
    f[2] = w * (err * err);
    f[3] = w * (sq / static_cast<opmath_t>(M - 1));
    f[4] = w;
  }
  double* out = partial + (v * gridDim.x + chunk) * kFields;
  for (int k = 0; k < kFields; ++k) {
    const opmath_t total = rmmd::block_sum_shared<kWarps>(f[k], shared);
    if (threadIdx.x == 0) out[k] = static_cast<double>(total);
  }
}

__global__ void stats_finalize_kernel(double* __restrict__ out, const double* __restrict__ partial, int64_t variables,
                                      int64_t chunks) {
  const int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= variables) return;
  double s[kFields] = {0.0, 0.0, 0.0, 0.0, 0.0};
  for (int64_t c = 0; c < chunks; ++c) {
    for (int k = 0; k < kFields; ++k) s[k] += partial[(v * chunks + c) * kFields + k];
  }
  for (int k = 0; k < kFields; ++k) out[v * kFields + k] = s[k];
}

template <int V>
struct Bucket {
  static constexpr int value = V;
};

// Calls launch(Bucket<MAXM>{}) with the register bucket for M: 2 (closed form), 4..32,
// or 0 (members re-read from global memory).
template <typename F>
cudaError_t dispatch_members(int64_t M, F&& launch) {
  if (M == 2) return launch(Bucket<2>{});
  if (M <= 4) return launch(Bucket<4>{});
  if (M <= 8) return launch(Bucket<8>{});
  if (M <= 16) return launch(Bucket<16>{});
  if (M <= 32) return launch(Bucket<32>{});
  return launch(Bucket<0>{});
}

template <typename T>
cudaError_t launch_crps_typed(const CrpsFairParams& p, cudaStream_t stream) {
  using opmath_t = typename Io<T>::opmath_t;
  const int64_t chunks = chunks_for(p.per_sample);
  if (chunks > 0x7fffffff || p.batch > 65535) return cudaErrorInvalidValue;  // grid.x / grid.y limits
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(p.batch));
  const int64_t N = p.batch * p.per_sample;
  double* partial = static_cast<double*>(p.workspace);
  const int M = static_cast<int>(p.members);
  const cudaError_t err = dispatch_members(p.members, [&](auto bucket) {
    constexpr int MAXM = decltype(bucket)::value;
    if (p.grad != nullptr) {
      crps_kernel<T, MAXM, true><<<grid, kThreads, 0, stream>>>(
          partial, static_cast<T*>(p.grad), static_cast<const T*>(p.ens), static_cast<const T*>(p.target), p.weight,
          p.weight_stride, p.inv_norm, p.mask, M, p.per_sample, N);
    } else {
      crps_kernel<T, MAXM, false><<<grid, kThreads, 0, stream>>>(
          partial, nullptr, static_cast<const T*>(p.ens), static_cast<const T*>(p.target), p.weight,
          p.weight_stride, p.inv_norm, p.mask, M, p.per_sample, N);
    }
    return cudaGetLastError();
  });
  if (err != cudaSuccess) return err;
  const int blocks = static_cast<int>((p.batch + kThreads - 1) / kThreads);
  crps_finalize_kernel<opmath_t><<<blocks, kThreads, 0, stream>>>(static_cast<opmath_t*>(p.crps), partial, p.batch,
                                                                  chunks);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_stats_typed(const ForecastStatsParams& p, cudaStream_t stream) {
  const int64_t plane = p.numel / p.variables;
  const int64_t chunks = chunks_for(plane);
  if (chunks > 0x7fffffff || p.variables > 65535) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(p.variables));
  double* partial = static_cast<double*>(p.workspace);
  const int M = static_cast<int>(p.members);
  const cudaError_t err = dispatch_members(p.members, [&](auto bucket) {
    // M = 2 takes the generic rank path here (the statistics have no closed-form kernel of their own).
    constexpr int MAXM = decltype(bucket)::value == 2 ? 4 : decltype(bucket)::value;
    stats_kernel<T, MAXM><<<grid, kThreads, 0, stream>>>(partial, static_cast<const T*>(p.ens),
                                                         static_cast<const T*>(p.target), p.weight, p.weight_stride,
                                                         p.mask, M,
                                                         p.per_sample, p.numel, p.variables, p.inner, plane);
    return cudaGetLastError();
  });
  if (err != cudaSuccess) return err;
  const int blocks = static_cast<int>((p.variables + kThreads - 1) / kThreads);
  stats_finalize_kernel<<<blocks, kThreads, 0, stream>>>(p.out, partial, p.variables, chunks);
  return cudaGetLastError();
}

}  // namespace

int64_t crps_fair_workspace_bytes(const CrpsFairParams& params) {
  return params.batch * chunks_for(params.per_sample) * static_cast<int64_t>(sizeof(double));
}

int64_t forecast_stats_workspace_bytes(const ForecastStatsParams& params) {
  return params.variables * chunks_for(params.numel / params.variables) * kFields *
         static_cast<int64_t>(sizeof(double));
}

cudaError_t rmmd_launch_crps_fair(const CrpsFairParams& params, cudaStream_t stream) {
  if (params.members < 2 || params.members > 0x7fffffff || params.batch <= 0 || params.per_sample <= 0) {
    return cudaErrorInvalidValue;
  }
  return rmmd_dispatch_dtype(params.dtype, [&](auto tag) { return launch_crps_typed<decltype(tag)>(params, stream); });
}

cudaError_t rmmd_launch_forecast_stats(const ForecastStatsParams& params, cudaStream_t stream) {
  if (params.members < 2 || params.members > 0x7fffffff || params.numel <= 0 || params.per_sample <= 0 ||
      params.variables <= 0 || params.inner <= 0 || params.numel % (params.variables * params.inner) != 0) {
    return cudaErrorInvalidValue;
  }
  return rmmd_dispatch_dtype(params.dtype, [&](auto tag) { return launch_stats_typed<decltype(tag)>(params, stream); });
}
