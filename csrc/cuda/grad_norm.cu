// CUDA kernels of the multi-tensor gradient-clipping ops (interface in grad_norm.cuh). Torch-free.
//
// Multi-tensor-apply as ema_update.cu: the host cuts every tensor into kChunk-element chunks and fills a
// chunk table (up to kMaxTensors tensors and kMaxChunks chunks) passed by value in the kernel's parameter
// space; one block per chunk, a handful of launches for a whole model. The norm's blocks each write one
// double partial (a fixed-shape block reduction); a one-block finish kernel adds them in a fixed order and
// takes the square root, so the result depends on neither the grid nor the scheduling.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "block_sum.cuh"
#include "chunk_table.cuh"
#include "grad_norm.cuh"
#include "io.cuh"

namespace {

using rmmd::Io;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kChunk = 16384;  // elements per block: 32 per thread
constexpr int kMaxTensors = 48;
constexpr int kMaxChunks = 256;
constexpr int kFinishThreads = 256;

struct ChunkTable {
  void* data[kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t tensor[kMaxChunks];  // slot in the arrays above
  int32_t chunk[kMaxChunks];   // chunk index inside that tensor
  int64_t first;               // index of this table's first chunk in the group (partials offset)
};
static_assert(sizeof(ChunkTable) + 32 <= 4096, "the chunk table must fit the 4 KB kernel-parameter limit");

__device__ __forceinline__ void chunk_range(const ChunkTable& table, int slot, int64_t* begin, int64_t* end) {
  *begin = static_cast<int64_t>(table.chunk[blockIdx.x]) * kChunk;
  *end = *begin + kChunk < table.numel[slot] ? *begin + kChunk : table.numel[slot];
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sumsq_kernel(ChunkTable table, double* __restrict__ partials) {
  __shared__ double shared[kWarps];
  const int slot = table.tensor[blockIdx.x];
  const T* __restrict__ g = static_cast<const T*>(table.data[slot]);
  int64_t begin, end;
  chunk_range(table, slot, &begin, &end);
  double acc = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {  // coalesced
    const double v = static_cast<double>(Io<T>::load(g[i]));
    acc += v * v;
  }
  const double total = rmmd::block_sum_shared<kWarps>(acc, shared);
  if (threadIdx.x == 0) partials[table.first + blockIdx.x] = total;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) scale_kernel(ChunkTable table, const double* __restrict__ coef) {
  using opmath_t = typename Io<T>::opmath_t;
  const opmath_t c = static_cast<opmath_t>(*coef);  // to the math type first, as torch's mul reads a scalar
  const int slot = table.tensor[blockIdx.x];
  T* __restrict__ g = static_cast<T*>(table.data[slot]);
  int64_t begin, end;
  chunk_range(table, slot, &begin, &end);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) g[i] = Io<T>::store(Io<T>::load(g[i]) * c);
}

template <typename Out>
__global__ void __launch_bounds__(kFinishThreads) finish_kernel(const double* __restrict__ partials, int64_t n,
                                                                Out* __restrict__ out) {
  __shared__ double shared[kFinishThreads / 32];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kFinishThreads) acc += partials[i];  // fixed per-thread order
  const double total = rmmd::block_sum_shared<kFinishThreads / 32>(acc, shared);
  if (threadIdx.x == 0) *out = static_cast<Out>(sqrt(total));  // inf stays inf, NaN stays NaN
}

// Fills chunk tables over `tensors` and calls launch(table, n_chunks) for each full / final one, with
// `table.first` the index of its first chunk among all of them (the partials offset).
template <typename Launch>
cudaError_t for_each_table(const GradTensor* tensors, int64_t n_tensors, Launch&& launch) {
  ChunkTable table{};
  int64_t done = 0;  // chunks launched so far
  return rmmd::pack_chunk_tables(
      table, n_tensors, kChunk, kMaxTensors, kMaxChunks, [&](int64_t t) { return tensors[t].numel; },
      [&](int s, int64_t t) {
        table.data[s] = tensors[t].data;
        table.numel[s] = tensors[t].numel;
      },
      [&](int n_chunks) {
        table.first = done;
        const cudaError_t err = launch(table, n_chunks);
        done += n_chunks;
        return err;
      });
}

}  // namespace

int64_t rmmd_grad_norm_chunks(int64_t numel) { return numel > 0 ? (numel + kChunk - 1) / kChunk : 0; }

cudaError_t rmmd_launch_grad_norm_partials(const GradNormParams& params, cudaStream_t stream) {
  if (params.n_tensors < 0 || (params.n_tensors > 0 && (params.tensors == nullptr || params.partials == nullptr)) ||
      params.first_partial < 0) {
    return cudaErrorInvalidValue;
  }
  double* partials = params.partials + params.first_partial;
  return rmmd_dispatch_dtype(params.dtype, [&](auto tag) {
    using T = decltype(tag);
    return for_each_table(params.tensors, params.n_tensors, [&](const ChunkTable& table, int n_chunks) {
      sumsq_kernel<T><<<n_chunks, kThreads, 0, stream>>>(table, partials);
      return cudaGetLastError();
    });
  });
}

cudaError_t rmmd_launch_grad_norm_finish(const double* partials, int64_t n_partials, void* out, RmmdDType out_dtype,
                                         cudaStream_t stream) {
  if (n_partials < 0 || (n_partials > 0 && partials == nullptr) || out == nullptr) return cudaErrorInvalidValue;
  if (out_dtype == RmmdDType::kFloat32) {
    finish_kernel<float><<<1, kFinishThreads, 0, stream>>>(partials, n_partials, static_cast<float*>(out));
  } else if (out_dtype == RmmdDType::kFloat64) {
    finish_kernel<double><<<1, kFinishThreads, 0, stream>>>(partials, n_partials, static_cast<double*>(out));
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t rmmd_launch_grad_scale(const GradScaleParams& params, cudaStream_t stream) {
  if (params.n_tensors < 0 || (params.n_tensors > 0 && params.tensors == nullptr) || params.coef == nullptr) {
    return cudaErrorInvalidValue;
  }
  return rmmd_dispatch_dtype(params.dtype, [&](auto tag) {
    using T = decltype(tag);
    return for_each_table(params.tensors, params.n_tensors, [&](const ChunkTable& table, int n_chunks) {
      scale_kernel<T><<<n_chunks, kThreads, 0, stream>>>(table, params.coef);
      return cudaGetLastError();
    });
  });
}
