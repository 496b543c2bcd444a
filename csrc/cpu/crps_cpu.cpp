// ATen CPU kernels of the fair ensemble CRPS and the forecast statistics (method.md §c.7, §e K4c, K10).
//
// For members x_1..x_M of one element, target y and normalised weight wn (see rmmd_core/ops/crps.py):
//
//   c_i        = 2 rank_i - M - 1               rank_i: 1-based rank, ties by member index (stable sort)
//   crps       = wn ( (1/M) sum_i |x_i - y| - (1/(M(M-1))) sum_i c_i x_i )
//   grad_i     = wn ( sign(x_i - y) / M - c_i / (M(M-1)) )
//   M = 2:       crps = wn (½(|x1-y| + |x2-y|) - ½|x1-x2|),  grad_i = wn (½ sign(x_i-y) - ½ sign(x_i-x_j))
//
// Ranks without an M x M tensor and without a per-element sort: elements are processed in blocks of
// kBlock, the members of a block copied to an (M, kBlock) buffer (member-major, like ens), and the rank
// of every member counted by comparing it with every other member, kBlock elements per SIMD loop with no
// branches: M(M-1)/2 vector compare-and-adds per block. That beats an insertion sort per element (which
// mispredicts on every swap) for the M this op sees (2..64) and is O(M) memory per element; above
// kRankMax members a stable sort per element (O(M log M)) takes over.
//
// Parallelism: crps_fair runs (sample, chunk) tasks (sample_chunks.h), forecast_stats (variable, chunk)
// tasks over the target viewed as (outer, V, inner); each task writes its own partial sums, combined in
// a fixed order, so results do not depend on the thread count.
// Numerics: members upcast to opmath (float32; float64 for double data); per-block sums in opmath,
// blocks combined in double; crps and grad rounded once.
#include "crps_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <array>
#include <utility>
#include <vector>

#include "fresh_output.h"
#include "isa_clones.h"
#include "opmath_io.h"
#include "sample_chunks.h"

namespace rmmd {
namespace {

constexpr int64_t kBlock = 64;     // elements per SIMD block
constexpr int64_t kRankMax = 128;  // rank counting up to here; a stable sort per element beyond

// Per-task scratch: the (M, kBlock) member buffer, the rank coefficients and the sort's pairs.
template <typename T>
struct Scratch {
  std::vector<T> x, coef;
  std::vector<std::pair<T, int64_t>> pairs;
  explicit Scratch(int64_t M) : x(M * kBlock, T(0)), coef(M * kBlock, T(0)) {}
};

// The hot loops are compiled per ISA (isa_clones.h): plain SSE2 halves or quarters the width of every
// compare below.

template <typename T>
inline T sign_of(T v) {
  return static_cast<T>((v > T(0)) - (v < T(0)));
}

// coef[i * kBlock + k] = 2 rank_i - M - 1 for the block's members x (M, kBlock), M <= kRankMax.
// cnt_i = #{j : x_j < x_i} + #{j < i : x_j == x_i} (0-based stable rank), one compare per pair: for
// j < i, x_j <= x_i puts j before i, otherwise i before j.
template <typename T>
__attribute__((always_inline)) inline void count_ranks(const T* x, T* coef, int64_t M) {
  std::fill(coef, coef + M * kBlock, T(0));
  for (int64_t i = 1; i < M; ++i) {
    const T* xi = x + i * kBlock;
    T* ci = coef + i * kBlock;
    for (int64_t j = 0; j < i; ++j) {
      const T* xj = x + j * kBlock;
      T* cj = coef + j * kBlock;
#pragma omp simd
      for (int64_t k = 0; k < kBlock; ++k) {
        const T before = xj[k] <= xi[k] ? T(1) : T(0);
        ci[k] += before;
        cj[k] += T(1) - before;
      }
    }
  }
  const T offset = static_cast<T>(1 - M);
#pragma omp simd
  for (int64_t i = 0; i < M * kBlock; ++i) coef[i] = T(2) * coef[i] + offset;
}

// Block sum of wn * crps over k < n; with `grad`, overwrites coef with the gradient values.
template <typename T>
__attribute__((always_inline)) inline T crps_accumulate(const T* x, T* coef, const T* y, const T* wn, int64_t M,
                                                        int64_t n, bool grad) {
  const T m = static_cast<T>(M), pairs = static_cast<T>(M * (M - 1));
  T skill[kBlock], lin[kBlock];
  std::fill(skill, skill + kBlock, T(0));
  std::fill(lin, lin + kBlock, T(0));
  for (int64_t i = 0; i < M; ++i) {
    const T* xi = x + i * kBlock;
    T* ci = coef + i * kBlock;
#pragma omp simd
    for (int64_t k = 0; k < kBlock; ++k) {
      const T d = xi[k] - y[k];
      skill[k] += d < T(0) ? -d : d;
      lin[k] += ci[k] * xi[k];
    }
    if (grad) {  // same expression as the reference: (sign(x - y) / M - c / (M (M - 1))) * wn
#pragma omp simd
      for (int64_t k = 0; k < kBlock; ++k) ci[k] = (sign_of(xi[k] - y[k]) / m - ci[k] / pairs) * wn[k];
    }
  }
  T total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t k = 0; k < n; ++k) total += (skill[k] / m - lin[k] / pairs) * wn[k];
  return total;
}

// Block sums [w skill, w spread, w (xbar - y)^2, w var, w] over k < n.
template <typename T>
__attribute__((always_inline)) inline void stats_accumulate(const T* x, const T* coef, const T* y, const T* w,
                                                            int64_t M, int64_t n, T* out) {
  const T m = static_cast<T>(M), pairs = static_cast<T>(M * (M - 1)), dof = static_cast<T>(M - 1);
  T skill[kBlock], lin[kBlock], sum[kBlock], sq[kBlock], mean[kBlock];
  std::fill(skill, skill + kBlock, T(0));
  std::fill(lin, lin + kBlock, T(0));
  std::fill(sum, sum + kBlock, T(0));
  std::fill(sq, sq + kBlock, T(0));
  for (int64_t i = 0; i < M; ++i) {
    const T* xi = x + i * kBlock;
    const T* ci = coef + i * kBlock;
#pragma omp simd
    for (int64_t k = 0; k < kBlock; ++k) {
      const T d = xi[k] - y[k];
      skill[k] += d < T(0) ? -d : d;
      lin[k] += ci[k] * xi[k];
      sum[k] += xi[k];
    }
  }
#pragma omp simd
  for (int64_t k = 0; k < kBlock; ++k) mean[k] = sum[k] / m;
  for (int64_t i = 0; i < M; ++i) {  // two-pass variance: no cancellation for large means
    const T* xi = x + i * kBlock;
#pragma omp simd
    for (int64_t k = 0; k < kBlock; ++k) {
      const T d = xi[k] - mean[k];
      sq[k] += d * d;
    }
  }
  T a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, a4)
  for (int64_t k = 0; k < n; ++k) {
    const T e = mean[k] - y[k];
    a0 += w[k] * (skill[k] / m);
    a1 += w[k] * (lin[k] / pairs);
    a2 += w[k] * (e * e);
    a3 += w[k] * (sq[k] / dof);
    a4 += w[k];
  }
  out[0] = a0;
  out[1] = a1;
  out[2] = a2;
  out[3] = a3;
  out[4] = a4;
}

// ISA-cloned instances (float: fp32 / fp16 / bf16 data; double: fp64 data).
RMMD_ISA_CLONES void count_ranks_isa(const float* x, float* coef, int64_t M) { count_ranks(x, coef, M); }
RMMD_ISA_CLONES void count_ranks_isa(const double* x, double* coef, int64_t M) { count_ranks(x, coef, M); }
RMMD_ISA_CLONES float crps_accumulate_isa(const float* x, float* coef, const float* y, const float* wn, int64_t M,
                                          int64_t n, bool grad) {
  return crps_accumulate(x, coef, y, wn, M, n, grad);
}
RMMD_ISA_CLONES double crps_accumulate_isa(const double* x, double* coef, const double* y, const double* wn,
                                           int64_t M, int64_t n, bool grad) {
  return crps_accumulate(x, coef, y, wn, M, n, grad);
}
RMMD_ISA_CLONES void stats_accumulate_isa(const float* x, const float* coef, const float* y, const float* w,
                                          int64_t M, int64_t n, float* out) {
  stats_accumulate(x, coef, y, w, M, n, out);
}
RMMD_ISA_CLONES void stats_accumulate_isa(const double* x, const double* coef, const double* y, const double* w,
                                          int64_t M, int64_t n, double* out) {
  stats_accumulate(x, coef, y, w, M, n, out);
}

// coef[i * kBlock + k] = 2 rank_i - M - 1 for the elements k < n of the block in s.x.
template <typename T>
void rank_coefs(Scratch<T>& s, int64_t M, int64_t n) {
  if (M <= kRankMax) {
    count_ranks_isa(s.x.data(), s.coef.data(), M);
    return;
  }
  T* coef = s.coef.data();
  const T* x = s.x.data();
  s.pairs.resize(M);
  for (int64_t k = 0; k < n; ++k) {
    for (int64_t i = 0; i < M; ++i) s.pairs[i] = {x[i * kBlock + k], i};
    // stable_sort on the value alone: ties keep member order, like the reference's stable torch.sort.
    std::stable_sort(s.pairs.begin(), s.pairs.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (int64_t r = 0; r < M; ++r) coef[s.pairs[r].second * kBlock + k] = static_cast<T>(2 * r + 1 - M);
  }
}

template <typename scalar_t, typename T>
struct CrpsArgs {
  const scalar_t* ens;
  const scalar_t* target;
  const double* weight;
  int64_t weight_stride;  // 1, or 0 for a single weight shared by every element
  const double* inv_norm;
  const bool* mask;  // nullptr: no mask
  scalar_t* grad;    // nullptr: no gradient
  int64_t M, N, D;   // members, B * D, D
};

// The normalised weights and (masked-to-0) targets of elements [e0, e0 + n) of sample b.
template <typename scalar_t, typename T>
void load_weights(const CrpsArgs<scalar_t, T>& a, int64_t b, int64_t e0, int64_t n, T* wn, T* y) {
  const int64_t s0 = e0 - b * a.D;
  const double inv = a.inv_norm[b];
  for (int64_t k = 0; k < n; ++k) {
    const bool on = a.mask == nullptr || a.mask[e0 + k];
    wn[k] = on ? static_cast<T>(a.weight[(s0 + k) * a.weight_stride] * inv) : T(0);
    // A zero-weight element contributes nothing; y = 0 keeps a masked NaN target out of the math.
    y[k] = wn[k] != T(0) ? static_cast<T>(a.target[e0 + k]) : T(0);
  }
  std::fill(wn + n, wn + kBlock, T(0));  // the SIMD loops run over whole blocks
  std::fill(y + n, y + kBlock, T(0));
}

// Sum over elements [e0, e0 + n) of crps, writing grad; general M.
template <typename scalar_t, typename T>
T crps_block(const CrpsArgs<scalar_t, T>& a, Scratch<T>& s, int64_t b, int64_t e0, int64_t n) {
  T wn[kBlock], y[kBlock];
  load_weights(a, b, e0, n, wn, y);
  const int64_t M = a.M;
  for (int64_t i = 0; i < M; ++i) {
    const scalar_t* src = a.ens + i * a.N + e0;
    T* dst = s.x.data() + i * kBlock;
    for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<T>(OpIo<scalar_t>::load(src, k));
  }
  rank_coefs(s, M, n);
  const bool grad = a.grad != nullptr;
  const T total = crps_accumulate_isa(s.x.data(), s.coef.data(), y, wn, M, n, grad);
  if (grad) {
    for (int64_t i = 0; i < M; ++i) {
      const T* src = s.coef.data() + i * kBlock;
      scalar_t* dst = a.grad + i * a.N + e0;
      for (int64_t k = 0; k < n; ++k) OpIo<scalar_t>::store(dst, k, src[k]);
    }
  }
  return total;
}

// M = 2 closed form on one block: returns sum_k wn crps_k and, with GRAD, writes both members' gradients.
// A restrict-pointer function per ISA (isa_clones.h) with branch-free loads / stores (opmath_io.h), so it
// vectorises: with the gradient branch and c10's bf16 store inside, the loop ran scalar.
template <bool GRAD, typename scalar_t, typename T>
RMMD_ISA_CLONES T crps_m2_loop(const scalar_t* __restrict__ x1p, const scalar_t* __restrict__ x2p,
                               const T* __restrict__ y, const T* __restrict__ wn, scalar_t* __restrict__ g1,
                               scalar_t* __restrict__ g2, int64_t n) {
  using Io = OpIo<scalar_t>;
  const T half = T(0.5);
  T total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t k = 0; k < n; ++k) {
    const T x1 = static_cast<T>(Io::load(x1p, k)), x2 = static_cast<T>(Io::load(x2p, k));
    const T d1 = x1 - y[k], d2 = x2 - y[k], d12 = x1 - x2;
    const T val = half * (std::abs(d1) + std::abs(d2)) - half * std::abs(d12);
    total += val * wn[k];
    if constexpr (GRAD) {
      Io::store(g1, k, (half * sign_of(d1) - half * sign_of(d12)) * wn[k]);
      Io::store(g2, k, (half * sign_of(d2) - half * sign_of(-d12)) * wn[k]);
    }
  }
  return total;
}

template <typename scalar_t, typename T>
T crps_block_m2(const CrpsArgs<scalar_t, T>& a, int64_t b, int64_t e0, int64_t n) {
  T wn[kBlock], y[kBlock];
  load_weights(a, b, e0, n, wn, y);
  const scalar_t* x1p = a.ens + e0;
  const scalar_t* x2p = a.ens + a.N + e0;
  if (a.grad == nullptr) {
    return crps_m2_loop<false, scalar_t, T>(x1p, x2p, y, wn, nullptr, nullptr, n);
  }
  return crps_m2_loop<true, scalar_t, T>(x1p, x2p, y, wn, a.grad + e0, a.grad + a.N + e0, n);
}

template <typename scalar_t, typename T>
void crps_tasks(const CrpsArgs<scalar_t, T>& a, const SampleChunks& L, std::vector<double>& partial) {
  at::parallel_for(0, L.tasks(), 1, [&](int64_t t0, int64_t t1) {
    Scratch<T> s(a.M == 2 ? 0 : a.M);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = L.sample(t);
      double total = 0.0;
      for (int64_t e0 = L.begin(t); e0 < L.end(t); e0 += kBlock) {
        const int64_t n = std::min(kBlock, L.end(t) - e0);
        const T block = a.M == 2 ? crps_block_m2(a, b, e0, n) : crps_block(a, s, b, e0, n);
        total += static_cast<double>(block);
      }
      partial[t] = total;
    }
  });
}

// forecast_stats: (variable, chunk) tasks over the plane of P = outer * inner elements of each variable.
template <typename scalar_t, typename T>
void stats_tasks(const scalar_t* ens, const scalar_t* target, const double* weight, int64_t weight_stride,
                 const bool* mask, int64_t M,
                 int64_t N, int64_t D, int64_t V, int64_t inner, int64_t P, int64_t chunks,
                 std::vector<std::array<double, 5>>& partial) {
  at::parallel_for(0, V * chunks, 1, [&](int64_t t0, int64_t t1) {
    Scratch<T> s(M);
    int64_t idx[kBlock];
    T y[kBlock], w[kBlock];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t v = t / chunks;
      const int64_t p_begin = (t % chunks) * kChunk, p_end = std::min(P, p_begin + kChunk);
      std::array<double, 5> total{0.0, 0.0, 0.0, 0.0, 0.0};
      for (int64_t p0 = p_begin; p0 < p_end; p0 += kBlock) {
        const int64_t n = std::min(kBlock, p_end - p0);
        for (int64_t k = 0; k < n; ++k) {
          const int64_t p = p0 + k;
          const int64_t e = (p / inner) * V * inner + v * inner + p % inner;
          idx[k] = e;
          w[k] = (mask == nullptr || mask[e]) ? static_cast<T>(weight[(e % D) * weight_stride]) : T(0);
          y[k] = w[k] != T(0) ? static_cast<T>(target[e]) : T(0);
        }
        std::fill(w + n, w + kBlock, T(0));
        std::fill(y + n, y + kBlock, T(0));
        for (int64_t i = 0; i < M; ++i) {
          T* dst = s.x.data() + i * kBlock;
          for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<T>(ens[i * N + idx[k]]);
        }
        rank_coefs(s, M, n);
        T sums[5];
        stats_accumulate_isa(s.x.data(), s.coef.data(), y, w, M, n, sums);
        for (int f = 0; f < 5; ++f) total[f] += static_cast<double>(sums[f]);
      }
      partial[t] = total;
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> crps_fair_cpu_kernel(const at::Tensor& ens_in, const at::Tensor& target_in,
                                                        const at::Tensor& weight_in, const at::Tensor& inv_norm_in,
                                                        const std::optional<at::Tensor>& mask_in, bool with_grad) {
  // Flat indexing: strided inputs are copied once, contiguous ones not at all.
  const at::Tensor ens = ens_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor inv_norm = inv_norm_in.contiguous();
  const at::Tensor mask = mask_in.has_value() ? mask_in->contiguous() : at::Tensor();
  const int64_t M = ens.size(0), B = ens.size(1);
  const int64_t N = target.numel();
  const int64_t D = B > 0 ? N / B : 0;
  const at::ScalarType opmath = ens.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad = with_grad ? empty_output_like(ens)
                              : at::empty({0}, ens.options());
  at::Tensor crps = at::zeros({B}, ens.options().dtype(opmath));
  if (N == 0) {
    return {crps.to(ens.scalar_type()), grad};
  }
  const SampleChunks L = SampleChunks::make(B, D);
  std::vector<double> partial(L.tasks());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ens.scalar_type(), "rmmd_core::crps_fair_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    CrpsArgs<scalar_t, T> a{ens.const_data_ptr<scalar_t>(), target.const_data_ptr<scalar_t>(),
                            weight.const_data_ptr<double>(), weight.numel() == 1 ? 0 : 1,
                            inv_norm.const_data_ptr<double>(),
                            mask.defined() ? mask.const_data_ptr<bool>() : nullptr,
                            with_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr, M, N, D};
    crps_tasks(a, L, partial);
    T* out = crps.mutable_data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      double s = 0.0;
      for (int64_t c = 0; c < L.chunks; ++c) s += partial[b * L.chunks + c];
      out[b] = static_cast<T>(s);
    }
  });
  return {crps.to(ens.scalar_type()), grad};
}

at::Tensor forecast_stats_cpu_kernel(const at::Tensor& ens_in, const at::Tensor& target_in, const at::Tensor& weight_in,
                                     const std::optional<at::Tensor>& mask_in, int64_t variables, int64_t inner) {
  const at::Tensor ens = ens_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor mask = mask_in.has_value() ? mask_in->contiguous() : at::Tensor();
  const int64_t M = ens.size(0), B = ens.size(1);
  const int64_t N = target.numel();
  const int64_t D = B > 0 ? N / B : 0;
  at::Tensor out = at::zeros({variables, 5}, ens.options().dtype(at::kDouble));
  if (N == 0) {
    return out;
  }
  const int64_t P = N / variables;  // outer * inner elements per variable
  const int64_t chunks = std::max<int64_t>(1, (P + kChunk - 1) / kChunk);
  std::vector<std::array<double, 5>> partial(variables * chunks);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ens.scalar_type(), "rmmd_core::forecast_stats_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    stats_tasks<scalar_t, T>(ens.const_data_ptr<scalar_t>(), target.const_data_ptr<scalar_t>(),
                             weight.const_data_ptr<double>(), weight.numel() == 1 ? 0 : 1,
                             mask.defined() ? mask.const_data_ptr<bool>() : nullptr,
                             M, N, D, variables, inner, P, chunks, partial);
  });
  double* o = out.mutable_data_ptr<double>();
  for (int64_t v = 0; v < variables; ++v) {
    for (int64_t c = 0; c < chunks; ++c) {
      for (int f = 0; f < 5; ++f) o[v * 5 + f] += partial[v * chunks + c][f];
    }
  }
  return out;
}

}  // namespace rmmd
