// CUDA kernel of the fused optimiser update rmmd_core::adam_update (interface and math in adam_update.cuh; the
// truth is rmmd_core/ops/adam_reference.py). Torch-free.
//
// Multi-tensor-apply as ema_update.cu: the host cuts every tensor into kChunk-element chunks and fills a chunk
// table (up to kMaxTensors tensors and kMaxChunks chunks) that travels *by value* in the kernel's parameter space
// (< 4 KB, the classic limit); one block per chunk, so a whole model costs a handful of launches per dtype pair.
// A tensor longer than one table continues in the next one (rmmd::pack_chunk_tables).
//
// Bit-exactness: every operation of the reference is one IEEE round-to-nearest intrinsic (__fadd_rn, __dmul_rn,
// __fdiv_rn, __fsqrt_rn, ...), which nvcc never contracts into an FMA nor replaces by an approximation, whatever
// the -fmad / -prec-div / -use_fast_math flags; scalars are rounded to the math type once, on the host, exactly as
// the reference's _scalar does (including 1 - w of the lerp's large-weight branch, computed in double first).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "adam_update.cuh"
#include "chunk_table.cuh"
#include "io.cuh"

namespace {

using rmmd::Io;

constexpr int kThreads = 512;
constexpr int kIlp = 4;            // elements per thread in flight (loads of all kIlp issued before any math)
constexpr int64_t kChunk = 16384;  // elements per block: 32 per thread, 8 ILP rounds
// Per tensor 5 pointers + numel = 48 B, per chunk 8 B: 32 * 48 + 256 * 8 = 3584 B, plus the scalars (< 128 B).
// 32 slots cover the ~8 tensors a table of 256 full chunks holds of big weights, and 32 small ones (biases, norms).
constexpr int kMaxTensors = 32;
constexpr int kMaxChunks = 256;
static_assert(kChunk % (kThreads * kIlp) == 0, "a chunk is a whole number of ILP rounds");

struct ChunkTable {
  void* param[kMaxTensors];
  void* grad[kMaxTensors];
  void* exp_avg[kMaxTensors];
  void* exp_avg_sq[kMaxTensors];
  void* ema[kMaxTensors];  // null when the group has no EMA
  int64_t numel[kMaxTensors];
  int32_t tensor[kMaxChunks];  // slot in the arrays above
  int32_t chunk[kMaxChunks];   // chunk index inside that tensor
};

// Adam's scalars in the param math type M, each rounded once (host side); flags are uniform per launch.
template <typename M>
struct AdamArgs {
  M neg_step_size;    // -step_size
  M w1;               // 1 - beta1 (lerp weight of m towards g)
  M w1_complement;    // 1 - w1 (lerp's large-weight branch), computed in double then rounded
  M beta2;
  M one_minus_beta2;  // 1 - beta2
  M bias_correction2_sqrt;
  M eps;
  M weight_decay;
  M grad_scale;
  int32_t scale_grads;  // grad_scale != 1 (the double value)
  int32_t decay;        // weight_decay != 0 (the double value)
  int32_t m_small;      // |w1| < 0.5: lerp's e + w (x - e) branch
};

// The EMA's scalars in its math type EM.
template <typename EM>
struct EmaArgs {
  EM w;             // 1 - ema_decay
  EM w_complement;  // 1 - w, computed in double then rounded
  int32_t small;    // |w| < 0.5
};

static_assert(sizeof(ChunkTable) + sizeof(AdamArgs<double>) + sizeof(EmaArgs<double>) + 32 <= 4096,
              "the chunk table and scalars must fit the 4 KB kernel-parameter limit");

// IEEE round-to-nearest operations, never fused nor approximated.
__device__ __forceinline__ float rn_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float rn_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float rn_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float rn_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float rn_sqrt(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double rn_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double rn_sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double rn_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double rn_div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double rn_sqrt(double a) { return __dsqrt_rn(a); }

// torch.lerp's two-sided form (the reference's _lerp): start + w (end - start) if |w| < 0.5, else
// end - (end - start) (1 - w).
template <typename M>
__device__ __forceinline__ M lerp_rn(M start, M end, M w, M w_complement, bool small) {
  const M diff = rn_sub(end, start);
  return small ? rn_add(start, rn_mul(w, diff)) : rn_sub(end, rn_mul(diff, w_complement));
}

// P: param / grad / moment element type; E: EMA element type (unused when !kHasEma).
template <typename P, typename E, bool kHasEma>
__global__ void __launch_bounds__(kThreads)
    adam_kernel(ChunkTable table, AdamArgs<typename Io<P>::opmath_t> a, EmaArgs<typename Io<E>::opmath_t> ea) {
  using M = typename Io<P>::opmath_t;
  using EM = typename Io<E>::opmath_t;
  const int slot = table.tensor[blockIdx.x];
  P* __restrict__ param = static_cast<P*>(table.param[slot]);
  P* __restrict__ grad = static_cast<P*>(table.grad[slot]);
  P* __restrict__ exp_avg = static_cast<P*>(table.exp_avg[slot]);
  P* __restrict__ exp_avg_sq = static_cast<P*>(table.exp_avg_sq[slot]);
  E* __restrict__ ema = static_cast<E*>(table.ema[slot]);
  const int64_t numel = table.numel[slot];
  const int64_t begin = static_cast<int64_t>(table.chunk[blockIdx.x]) * kChunk;
  const int64_t end = begin + kChunk < numel ? begin + kChunk : numel;
  const bool scale_grads = a.scale_grads != 0;
  const bool decay = a.decay != 0;
  const bool m_small = a.m_small != 0;
  const bool ema_small = ea.small != 0;

  for (int64_t base = begin + threadIdx.x; base < end; base += static_cast<int64_t>(kThreads) * kIlp) {
    M g[kIlp], p[kIlp], m[kIlp], v[kIlp];
    EM e[kIlp];
#pragma unroll
    for (int k = 0; k < kIlp; ++k) {  // loads first (coalesced: consecutive threads, consecutive elements)
      const int64_t i = base + static_cast<int64_t>(k) * kThreads;
      g[k] = p[k] = m[k] = v[k] = M(0);
      e[k] = EM(0);
      if (i < end) {
        g[k] = Io<P>::load(grad[i]);
        p[k] = Io<P>::load(param[i]);
        m[k] = Io<P>::load(exp_avg[i]);
        v[k] = Io<P>::load(exp_avg_sq[i]);
        if constexpr (kHasEma) e[k] = Io<E>::load(ema[i]);
      }
    }
#pragma unroll
    for (int k = 0; k < kIlp; ++k) {
      const int64_t i = base + static_cast<int64_t>(k) * kThreads;
      if (i >= end) continue;
      M gk = g[k];
      if (scale_grads) {  // the clip: rounded to the grad dtype, written back, and that value used below
        const P g_stored = Io<P>::store(rn_mul(gk, a.grad_scale));
        grad[i] = g_stored;
        gk = Io<P>::load(g_stored);
      }
      if (decay) gk = rn_add(gk, rn_mul(a.weight_decay, p[k]));
      const M m_new = lerp_rn(m[k], gk, a.w1, a.w1_complement, m_small);
      const M v_new = rn_add(rn_mul(v[k], a.beta2), rn_mul(rn_mul(a.one_minus_beta2, gk), gk));
      const P m_stored = Io<P>::store(m_new);
      const P v_stored = Io<P>::store(v_new);
      exp_avg[i] = m_stored;
      exp_avg_sq[i] = v_stored;
      const M denom = rn_add(rn_div(rn_sqrt(Io<P>::load(v_stored)), a.bias_correction2_sqrt), a.eps);
      const P p_stored = Io<P>::store(rn_add(p[k], rn_div(rn_mul(a.neg_step_size, Io<P>::load(m_stored)), denom)));
      param[i] = p_stored;
      if constexpr (kHasEma) {
        const EM pe = static_cast<EM>(Io<P>::load(p_stored));  // the stored param, in the EMA's math type
        ema[i] = Io<E>::store(lerp_rn(e[k], pe, ea.w, ea.w_complement, ema_small));
      }
    }
  }
}

template <typename M>
AdamArgs<M> make_adam_args(const AdamUpdateParams& p) {
  AdamArgs<M> a{};
  a.neg_step_size = static_cast<M>(-p.step_size);
  a.w1 = static_cast<M>(1.0 - p.beta1);
  a.w1_complement = static_cast<M>(1.0 - static_cast<double>(a.w1));
  a.beta2 = static_cast<M>(p.beta2);
  a.one_minus_beta2 = static_cast<M>(1.0 - p.beta2);
  a.bias_correction2_sqrt = static_cast<M>(p.bias_correction2_sqrt);
  a.eps = static_cast<M>(p.eps);
  a.weight_decay = static_cast<M>(p.weight_decay);
  a.grad_scale = static_cast<M>(p.grad_scale);
  a.scale_grads = p.grad_scale != 1.0 ? 1 : 0;
  a.decay = p.weight_decay != 0.0 ? 1 : 0;
  a.m_small = fabs(static_cast<double>(a.w1)) < 0.5 ? 1 : 0;
  return a;
}

template <typename EM>
EmaArgs<EM> make_ema_args(const AdamUpdateParams& p) {
  EmaArgs<EM> e{};
  e.w = static_cast<EM>(1.0 - p.ema_decay);
  e.w_complement = static_cast<EM>(1.0 - static_cast<double>(e.w));
  e.small = fabs(static_cast<double>(e.w)) < 0.5 ? 1 : 0;
  return e;
}

template <typename P, typename E, bool kHasEma>
cudaError_t launch_typed(const AdamUpdateParams& p, cudaStream_t stream) {
  const AdamArgs<typename Io<P>::opmath_t> a = make_adam_args<typename Io<P>::opmath_t>(p);
  const EmaArgs<typename Io<E>::opmath_t> ea = make_ema_args<typename Io<E>::opmath_t>(p);
  ChunkTable table{};
  return rmmd::pack_chunk_tables(
      table, p.n_tensors, kChunk, kMaxTensors, kMaxChunks, [&](int64_t t) { return p.tensors[t].numel; },
      [&](int s, int64_t t) {
        const AdamTensor& x = p.tensors[t];
        table.param[s] = x.param;
        table.grad[s] = x.grad;
        table.exp_avg[s] = x.exp_avg;
        table.exp_avg_sq[s] = x.exp_avg_sq;
        table.ema[s] = kHasEma ? x.ema : nullptr;
        table.numel[s] = x.numel;
      },
      [&](int n_chunks) {
        adam_kernel<P, E, kHasEma><<<n_chunks, kThreads, 0, stream>>>(table, a, ea);
        return cudaGetLastError();
      });
}

bool finite(double x) { return isfinite(x) != 0; }

// The ranges of rmmd::check_adam_update_args (csrc/bindings/adam_update_checks.h), and non-null buffers.
bool valid(const AdamUpdateParams& p) {
  if (p.n_tensors < 0 || (p.n_tensors > 0 && p.tensors == nullptr)) return false;
  if (!(p.step_size >= 0.0 && finite(p.step_size)) || !(p.beta1 >= 0.0 && p.beta1 < 1.0) ||
      !(p.beta2 >= 0.0 && p.beta2 < 1.0) || !(p.eps >= 0.0 && finite(p.eps)) ||
      !(p.bias_correction2_sqrt > 0.0 && finite(p.bias_correction2_sqrt)) ||
      !(p.weight_decay >= 0.0 && finite(p.weight_decay)) || !(p.grad_scale > 0.0 && finite(p.grad_scale))) {
    return false;
  }
  if (p.has_ema && !(p.ema_decay >= 0.0 && p.ema_decay <= 1.0)) return false;
  for (int64_t t = 0; t < p.n_tensors; ++t) {
    const AdamTensor& x = p.tensors[t];
    if (x.numel < 0) return false;
    if (x.numel == 0) continue;
    if (x.param == nullptr || x.grad == nullptr || x.exp_avg == nullptr || x.exp_avg_sq == nullptr ||
        (p.has_ema && x.ema == nullptr)) {
      return false;
    }
  }
  return true;
}

}  // namespace

cudaError_t rmmd_launch_adam_update(const AdamUpdateParams& params, cudaStream_t stream) {
  if (!valid(params)) return cudaErrorInvalidValue;
  return rmmd_dispatch_dtype(params.param_dtype, [&](auto param_tag) {
    using P = decltype(param_tag);
    if (!params.has_ema) return launch_typed<P, float, false>(params, stream);
    return rmmd_dispatch_dtype(params.ema_dtype, [&](auto ema_tag) {
      return launch_typed<P, decltype(ema_tag), true>(params, stream);
    });
  });
}
