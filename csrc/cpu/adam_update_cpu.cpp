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

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <cstdlib>
#include <cstring>

#include "randn_simd.h"  // simd::cpu_has_avx2(): AVX2 + FMA + F16C
#define RMMD_HAVE_F16C_ADAM 1
#endif

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

#if defined(RMMD_HAVE_F16C_ADAM)
// float16 parameters (with an fp16, fp32 or no EMA): adam_chunk's loop with the conversions done by F16C
// instructions, 8 values each, instead of opmath_io.h's integer emulation (about ten operations per
// conversion and ten conversions per element, which left the fp16 update compute-bound at ~2.5x the
// fp32 one). Same operations in the same order on the same float32 values, no FMA (each intrinsic rounds;
// -ffp-contract=off), IEEE division and sqrt: the bits of adam_chunk, which the tail still runs.
// vcvtps2ph rounds to nearest even like c10; only NaNs differ (it keeps payload bits, c10 gives the quiet
// NaN 0x7E00 with the sign), so NaN lanes are replaced by c10's value.

__attribute__((target("avx2,f16c"))) inline __m256 load_h8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

__attribute__((target("avx2,f16c"))) inline __m256 round_h8(__m256 x, uint16_t* p) {
  __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  if (__builtin_expect(_mm256_movemask_ps(nan) != 0, 0)) {  // rare: a branch instead of a blend per store
    const __m128i nan16 = _mm_packs_epi32(_mm256_castsi256_si128(_mm256_castps_si256(nan)),
                                          _mm256_extractf128_si256(_mm256_castps_si256(nan), 1));
    const __m128i quiet = _mm_or_si128(_mm_and_si128(h, _mm_set1_epi16(static_cast<short>(0x8000))),
                                       _mm_set1_epi16(0x7E00));
    h = _mm_blendv_epi8(h, quiet, nan16);
  }
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
  return _mm256_cvtph_ps(h);  // the stored value, as adam_chunk reloads it
}

__attribute__((target("avx2,f16c"))) inline __m256 select8(bool first, __m256 a, __m256 b) {
  return first ? a : b;
}

// E: void (no EMA), uint16_t (an fp16 EMA) or float (an fp32 EMA, stored unrounded as adam_chunk does).
template <bool kScale, typename E>
__attribute__((target("avx2,f16c"))) int64_t adam_chunk_f16c(uint16_t* p, uint16_t* g, uint16_t* m, uint16_t* v,
                                                             E* e, int64_t begin, int64_t end,
                                                             const AdamScalars& s) {
  const AdamCoefs<float> c(s);
  const __m256 scale = _mm256_set1_ps(c.scale), wd = _mm256_set1_ps(c.wd), w1 = _mm256_set1_ps(c.w1),
               omw1 = _mm256_set1_ps(c.one_minus_w1), beta2 = _mm256_set1_ps(c.beta2), c2 = _mm256_set1_ps(c.c2),
               bc2 = _mm256_set1_ps(c.bc2), eps = _mm256_set1_ps(c.eps), neg_step = _mm256_set1_ps(c.neg_step);
  const float we_s = static_cast<float>(1.0 - s.ema_decay);
  const __m256 we = _mm256_set1_ps(we_s), omwe = _mm256_set1_ps(1.0f - we_s);
  const bool small_e = std::abs(we_s) < 0.5f;
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    __m256 gv = load_h8(g + i);
    if constexpr (kScale) gv = round_h8(_mm256_mul_ps(gv, scale), g + i);
    const __m256 pv = load_h8(p + i);
    if (c.use_wd) gv = _mm256_add_ps(gv, _mm256_mul_ps(wd, pv));
    const __m256 mv = load_h8(m + i);
    const __m256 d = _mm256_sub_ps(gv, mv);
    const __m256 m_new = round_h8(select8(c.small1, _mm256_add_ps(mv, _mm256_mul_ps(w1, d)),
                                          _mm256_sub_ps(gv, _mm256_mul_ps(d, omw1))), m + i);
    const __m256 vv = load_h8(v + i);
    const __m256 v_new = round_h8(_mm256_add_ps(_mm256_mul_ps(vv, beta2), _mm256_mul_ps(_mm256_mul_ps(c2, gv), gv)),
                                  v + i);
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(v_new), bc2), eps);
    const __m256 p_new = round_h8(_mm256_add_ps(pv, _mm256_div_ps(_mm256_mul_ps(neg_step, m_new), denom)), p + i);
    if constexpr (!std::is_void_v<E>) {
      const __m256 ev = std::is_same_v<E, float> ? _mm256_loadu_ps(reinterpret_cast<const float*>(e + i))
                                                 : load_h8(reinterpret_cast<const uint16_t*>(e + i));
      const __m256 de = _mm256_sub_ps(p_new, ev);
      const __m256 e_new =
          select8(small_e, _mm256_add_ps(ev, _mm256_mul_ps(we, de)), _mm256_sub_ps(p_new, _mm256_mul_ps(de, omwe)));
      if constexpr (std::is_same_v<E, float>) {
        _mm256_storeu_ps(reinterpret_cast<float*>(e + i), e_new);
      } else {
        round_h8(e_new, reinterpret_cast<uint16_t*>(e + i));
      }
    }
  }
  return i;  // the tail [i, end) is left to adam_chunk
}

// Whether fp16 chunks take adam_chunk_f16c: the CPU has AVX2 + F16C and RMMD_CORE_CPU_SIMD (read per call,
// as the noise kernels do) is not "0" / "scalar", which selects the portable loop for comparison.
bool use_f16c() {
  const char* env = std::getenv("RMMD_CORE_CPU_SIMD");
  const bool off = env != nullptr && (std::strcmp(env, "0") == 0 || std::strcmp(env, "scalar") == 0);
  return !off && simd::cpu_has_avx2();
}
#endif

template <typename P, typename E>
void run_chunk(const at::Tensor* t, int64_t begin, int64_t end, const AdamScalars& s, bool f16c) {
  P* p = t[0].mutable_data_ptr<P>();
  P* g = t[1].mutable_data_ptr<P>();
  P* m = t[2].mutable_data_ptr<P>();
  P* v = t[3].mutable_data_ptr<P>();
  E* e = nullptr;
  if constexpr (!std::is_void_v<E>) e = t[4].mutable_data_ptr<E>();
#if defined(RMMD_HAVE_F16C_ADAM)
  if constexpr (std::is_same_v<P, c10::Half> &&
                (std::is_void_v<E> || std::is_same_v<E, c10::Half> || std::is_same_v<E, float>)) {
    if (f16c) {
      auto h = [](auto* x) { return reinterpret_cast<uint16_t*>(x); };
      // the EMA as the F16C loop takes it: fp16 as raw 16-bit values, float as is, none as a null void*
      using EK = std::conditional_t<std::is_same_v<E, c10::Half>, uint16_t, E>;
      EK* ek = reinterpret_cast<EK*>(e);
      begin = s.grad_scale != 1.0 ? adam_chunk_f16c<true, EK>(h(p), h(g), h(m), h(v), ek, begin, end, s)
                                  : adam_chunk_f16c<false, EK>(h(p), h(g), h(m), h(v), ek, begin, end, s);
    }
  }
#endif
  (void)f16c;
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
#if defined(RMMD_HAVE_F16C_ADAM)
  const bool f16c = use_f16c();
#else
  const bool f16c = false;
#endif
  at::parallel_for(0, n_chunks, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const TensorChunk& ch = chunks[c];
      const at::Tensor* t = work[ch.tensor].data();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t[0].scalar_type(), "rmmd_core::adam_update_cpu", [&] {
        using param_t = scalar_t;
        if (!has_ema) {
          run_chunk<param_t, void>(t, ch.begin, ch.end, s, f16c);
          return;
        }
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t[4].scalar_type(), "rmmd_core::adam_update_cpu",
                                        [&] { run_chunk<param_t, scalar_t>(t, ch.begin, ch.end, s, f16c); });
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
