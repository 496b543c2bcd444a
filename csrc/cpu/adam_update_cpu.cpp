// ATen CPU kernel of rmmd_core::adam_update: clip scale + Adam (+ L2 weight decay) + EMA in one pass.
// Per element, in the param's math type T (float; double for double params), each scalar rounded to T once
// (the truth: rmmd_core/ops/adam_reference.py):
//
//   g = grad;  if scaled: g = round(g * grad_scale), written back to grad
//   g = g + weight_decay p                                   (selected only when weight_decay != 0)
//   m = lerp(m, g, 1 - beta1);  v = v beta2 + ((1 - beta2) g) g;  both rounded and stored
//   p = p + ((-step_size) m) / (sqrt(v) / bias_correction2_sqrt + eps)
//   ema = lerp(ema, p, 1 - ema_decay)                        (in the EMA's math type; when there is an EMA)
//
// lerp is torch's two-sided form (e + w (x - e) if |w| < 0.5, else x - (x - e)(1 - w)). setup.py builds
// with -ffp-contract=off, so each operation rounds as written and fp32 / fp64 results equal the reference
// bit for bit. One parallel_for runs over the chunk table of all tensors (tensor_chunks.h); each chunk
// dispatches on its own (param, EMA) dtype pair.
#include "adam_update_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>
#include <vector>

#include "isa_clones.h"
#include "opmath_io.h"
#include "tensor_chunks.h"

namespace rmmd {
namespace {

// The scalars in math type T, rounded once; which side of each lerp is taken.
template <typename T>
struct AdamCoefs {
  T scale, wd, w1, one_minus_w1, beta2, c2, bc2, eps, neg_step;
  bool use_wd, small1;

  explicit AdamCoefs(const AdamScalars& s)
      : scale(static_cast<T>(s.grad_scale)), wd(static_cast<T>(s.weight_decay)), w1(static_cast<T>(1.0 - s.beta1)),
        one_minus_w1(T(1) - w1), beta2(static_cast<T>(s.beta2)), c2(static_cast<T>(1.0 - s.beta2)),
        bc2(static_cast<T>(s.bias_correction2_sqrt)), eps(static_cast<T>(s.eps)),
        neg_step(static_cast<T>(-s.step_size)), use_wd(s.weight_decay != 0.0), small1(std::abs(w1) < T(0.5)) {}
};

// kScale: grad_scale != 1 (the scaled gradient is stored); E = void: no EMA.
template <typename P, typename E, bool kScale>
RMMD_ISA_CLONES void adam_chunk(P* __restrict__ p, P* __restrict__ g, P* __restrict__ m, P* __restrict__ v,
                                E* __restrict__ e, int64_t begin, int64_t end, const AdamScalars& s) {
  using T = at::opmath_type<P>;
  const AdamCoefs<T> c(s);
  constexpr bool kEma = !std::is_void_v<E>;
  using EO = std::conditional_t<kEma, at::opmath_type<std::conditional_t<kEma, E, float>>, float>;
  const EO we = static_cast<EO>(1.0 - s.ema_decay);
  const EO one_minus_we = EO(1) - we;
  const bool small_e = std::abs(we) < EO(0.5);
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    T gv = OpIo<P>::load(g, i);
    if constexpr (kScale) {
      OpIo<P>::store(g, i, gv * c.scale);
      gv = OpIo<P>::load(g, i);
    }
    const T pv = OpIo<P>::load(p, i);
    const T gw = gv + c.wd * pv;
    gv = c.use_wd ? gw : gv;
    const T mv = OpIo<P>::load(m, i);
    const T m_small = mv + c.w1 * (gv - mv);
    const T m_large = gv - (gv - mv) * c.one_minus_w1;
    OpIo<P>::store(m, i, c.small1 ? m_small : m_large);
    const T vv = OpIo<P>::load(v, i);
    OpIo<P>::store(v, i, vv * c.beta2 + (c.c2 * gv) * gv);
    const T denom = std::sqrt(OpIo<P>::load(v, i)) / c.bc2 + c.eps;
    OpIo<P>::store(p, i, pv + (c.neg_step * OpIo<P>::load(m, i)) / denom);
    if constexpr (kEma) {
      const EO pe = static_cast<EO>(OpIo<P>::load(p, i));
      const EO ev = OpIo<E>::load(e, i);
      const EO e_small = ev + we * (pe - ev);
      const EO e_large = pe - (pe - ev) * one_minus_we;
      OpIo<E>::store(e, i, small_e ? e_small : e_large);
    }
  }
}

template <typename P, typename E>
void run_chunk(const at::Tensor* t, int64_t begin, int64_t end, const AdamScalars& s) {
  P* p = t[0].mutable_data_ptr<P>();
  P* g = t[1].mutable_data_ptr<P>();
  P* m = t[2].mutable_data_ptr<P>();
  P* v = t[3].mutable_data_ptr<P>();
  E* e = nullptr;
  if constexpr (!std::is_void_v<E>) e = t[4].mutable_data_ptr<E>();
  if (s.grad_scale != 1.0) {
    adam_chunk<P, E, true>(p, g, m, v, e, begin, end, s);
  } else {
    adam_chunk<P, E, false>(p, g, m, v, e, begin, end, s);
  }
}

}  // namespace

void adam_update_cpu_kernel(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                            at::TensorList exp_avg_sqs, at::TensorList ema, const AdamScalars& s) {
  const int64_t n = static_cast<int64_t>(params.size());
  const bool has_ema = !ema.empty();
  const int n_lists = has_ema ? 5 : 4;
  // Flat indexing: strided tensors are updated in contiguous temporaries and copied back below (grads only
  // when they were scaled).
  std::vector<std::array<at::Tensor, 5>> work(n);
  for (int64_t i = 0; i < n; ++i) {
    work[i][0] = params[i].contiguous();
    work[i][1] = grads[i].contiguous();
    work[i][2] = exp_avgs[i].contiguous();
    work[i][3] = exp_avg_sqs[i].contiguous();
    if (has_ema) work[i][4] = ema[i].contiguous();
  }
  int64_t grain = 1;
  const std::vector<TensorChunk> chunks =
      tensor_chunks(n, [&](int64_t i) { return work[i][0].numel(); }, kChunk, &grain);
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  at::parallel_for(0, n_chunks, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const TensorChunk& ch = chunks[c];
      const at::Tensor* t = work[ch.tensor].data();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t[0].scalar_type(), "rmmd_core::adam_update_cpu", [&] {
        using param_t = scalar_t;
        if (!has_ema) {
          run_chunk<param_t, void>(t, ch.begin, ch.end, s);
          return;
        }
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t[4].scalar_type(), "rmmd_core::adam_update_cpu",
                                        [&] { run_chunk<param_t, scalar_t>(t, ch.begin, ch.end, s); });
      });
    }
  });
  const at::TensorList lists[5] = {params, grads, exp_avgs, exp_avg_sqs, ema};
  for (int64_t i = 0; i < n; ++i) {
    for (int k = 0; k < n_lists; ++k) {
      if (k == 1 && s.grad_scale == 1.0) continue;  // grads are only read
      if (!work[i][k].is_same(lists[k][i])) lists[k][i].copy_(work[i][k]);
    }
  }
}

}  // namespace rmmd
