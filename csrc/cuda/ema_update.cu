// CUDA kernel of the multi-tensor EMA, method.md §e K9 (interface in ema_update.cuh). Torch-free.
//
// Multi-tensor-apply: the host cuts every tensor into chunks of kChunk elements and fills a chunk table
// (up to kMaxTensors tensors and kMaxChunks chunks) that travels *by value* in the kernel's parameter
// space (< 4 KB, the classic limit); one block per chunk. A model with thousands of small tensors thus
// costs a handful of launches instead of one per tensor. Tensors longer than one table are split
// across tables; a tensor may appear in two consecutive tables.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "chunk_table.cuh"
#include "ema_update.cuh"
#include "io.cuh"

namespace {

using rmmd::Io;

constexpr int kThreads = 512;
constexpr int64_t kChunk = 16384;  // elements per block: 32 per thread, enough work per block
constexpr int kMaxTensors = 48;
constexpr int kMaxChunks = 256;

struct ChunkTable {
  void* ema[kMaxTensors];
  const void* param[kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t tensor[kMaxChunks];  // slot in the arrays above
  int32_t chunk[kMaxChunks];   // chunk index inside that tensor
};
static_assert(sizeof(ChunkTable) + 16 <= 4096, "the chunk table must fit the 4 KB kernel-parameter limit");

template <typename E, typename P>
__global__ void __launch_bounds__(kThreads) ema_kernel(ChunkTable table, typename Io<E>::opmath_t w) {
  using opmath_t = typename Io<E>::opmath_t;
  const int slot = table.tensor[blockIdx.x];
  E* __restrict__ e = static_cast<E*>(table.ema[slot]);
  const P* __restrict__ p = static_cast<const P*>(table.param[slot]);
  const int64_t begin = static_cast<int64_t>(table.chunk[blockIdx.x]) * kChunk;
  const int64_t end = begin + kChunk < table.numel[slot] ? begin + kChunk : table.numel[slot];
  const bool small = (w < opmath_t(0.5) && w > opmath_t(-0.5));
  const opmath_t one_minus_w = opmath_t(1) - w;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {  // coalesced
    const opmath_t ev = Io<E>::load(e[i]);
    const opmath_t pv = static_cast<opmath_t>(Io<P>::load(p[i]));
    e[i] = Io<E>::store(small ? ev + w * (pv - ev) : pv - (pv - ev) * one_minus_w);
  }
}

template <typename E, typename P>
cudaError_t launch_typed(const EmaUpdateParams& p, cudaStream_t stream) {
  using opmath_t = typename Io<E>::opmath_t;
  const opmath_t w = static_cast<opmath_t>(1.0 - p.beta);
  ChunkTable table{};
  return rmmd::pack_chunk_tables(
      table, p.n_tensors, kChunk, kMaxTensors, kMaxChunks, [&](int64_t t) { return p.tensors[t].numel; },
      [&](int s, int64_t t) {
        table.ema[s] = p.tensors[t].ema;
        table.param[s] = p.tensors[t].param;
        table.numel[s] = p.tensors[t].numel;
      },
      [&](int n_chunks) {
        ema_kernel<E, P><<<n_chunks, kThreads, 0, stream>>>(table, w);
        return cudaGetLastError();
      });
}

}  // namespace

cudaError_t rmmd_launch_ema_update(const EmaUpdateParams& params, cudaStream_t stream) {
  if (params.n_tensors < 0 || (params.n_tensors > 0 && params.tensors == nullptr) || !(params.beta >= 0.0) ||
      !(params.beta <= 1.0)) {
    return cudaErrorInvalidValue;
  }
  return rmmd_dispatch_dtype(params.ema_dtype, [&](auto ema_tag) {
    return rmmd_dispatch_dtype(params.param_dtype, [&](auto param_tag) {
      return launch_typed<decltype(ema_tag), decltype(param_tag)>(params, stream);
    });
  });
}
