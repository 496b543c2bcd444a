// SIMD versions of the Philox randn stream of csrc/common/philox.h for the CPU kernels: AVX2 + FMA
// (8 normals per call) and AVX-512 F/BW/DQ/VL (16 per call). Torch-free; every function carries a
// function-level target attribute and the caller picks one at run time (noise_isa()), so the extension
// is still built for baseline x86-64 and loads on CPUs without AVX2 (they use the scalar path).
//
// Why: the noise is the whole cost of K1 on CPU. Per element it needs one full Philox4x32-10 (the stream
// must match tl.randn, so no cheaper generator and no sharing of one block between elements), a log, a
// sqrt and a cos. Scalar code runs at ~25 ns/element/core.
//
// Philox layout ("64-bit lanes"): each 32-bit Philox word lives in the low half of a 64-bit lane, the
// upper half is don't-care. _mm256/_mm512_mul_epu32 read only the low halves and return the full 64-bit
// product, whose low half *is* the next lo word and whose >> 32 is the hi word, so a round is 2 multiplies,
// 2 shifts and 2 three-way XORs per lane pair, with no blends to split products into hi / lo vectors (the
// previous 32-bit-lane version needed 20 vector ops per 8 elements per round, this one 6 per 4 elements, or
// 6 per 8 with AVX-512 ternlog). Counters are 64-bit adds, so the carry into c1 is free. Round 1 uses
// c2 = c3 = 0 and round 10 computes only the two words Box-Muller reads. Elements are split even / odd over
// two vectors and merged with one in-lane shuffle at the end.
//
// Accuracy: the integer stages (Philox, uint -> uniform, the float32 2*pi*u product) are bit-identical
// to philox.h. logf is the Cephes polynomial (max error ~1 ULP on [1e-7, 1)), cosf a Cody-Waite
// reduction by pi/4 plus the Cephes sin/cos polynomials (max abs error ~1e-7 on [0, 2*pi)), sqrt is the
// correctly rounded instruction. Normals therefore agree with libm-based code to a few float32 ULP, the
// same contract as between Triton on GPU, the Triton interpreter and the PyTorch reference;
// tests/test_posterior_step_op.py checks every path against the reference (RMMD_CORE_CPU_SIMD selects it).
// Polynomial coefficients: Cephes Math Library, Stephen L. Moshier (logf.c, sinf.c), public domain.
#pragma once

#include <stdint.h>

#include "../common/philox.h"

namespace rmmd {
namespace simd {

// Round keys of one seed: k0 + r * kKeyA, k1 + r * kKeyB for r = 0..9 (the same for every element, so
// they are computed once per call and broadcast from memory inside the rounds).
struct PhiloxKeys {
  uint32_t k0[philox::kRounds];
  uint32_t k1[philox::kRounds];
  explicit PhiloxKeys(uint64_t seed) {
    uint32_t a = static_cast<uint32_t>(seed), b = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < philox::kRounds; ++r) {
      k0[r] = a;
      k1[r] = b;
      a += philox::kKeyA;
      b += philox::kKeyB;
    }
  }
};

}  // namespace simd
}  // namespace rmmd

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RMMD_HAVE_X86_SIMD_PATHS 1
// Older name, still read by csrc/bindings/build_info_registration.cpp ("is a SIMD noise path compiled in").
#define RMMD_HAVE_AVX2_PATH 1

#include <immintrin.h>

namespace rmmd {
namespace simd {

#define RMMD_AVX2 __attribute__((target("avx2,fma,f16c")))
#define RMMD_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))

// ---------------------------------------------------------------------------------------------------
// AVX2 + FMA
// ---------------------------------------------------------------------------------------------------

// Philox4x32-10 on N vectors of 4 counters held in 64-bit lanes; returns r0, r1 in the low halves of the
// lanes. The N independent chains are interleaved round by round: a round is a multiply -> shift -> xor
// dependency chain, and N > 1 gives the out-of-order core independent work next to it.
template <int N>
RMMD_AVX2 inline void philox_q_avx2(const __m256i* ctr, const PhiloxKeys& keys, __m256i* r0, __m256i* r1) {
  const __m256i mul_a = _mm256_set1_epi64x(philox::kRoundA);
  const __m256i mul_b = _mm256_set1_epi64x(philox::kRoundB);
  __m256i c0[N], c1[N], c2[N], c3[N];
  // Round 1 on (c0, c1, 0, 0): mulhi(B, 0) = 0 and B * 0 = 0.
  for (int v = 0; v < N; ++v) {
    const __m256i prod_a = _mm256_mul_epu32(ctr[v], mul_a);
    c0[v] = _mm256_xor_si256(_mm256_srli_epi64(ctr[v], 32), _mm256_set1_epi32(static_cast<int>(keys.k0[0])));
    c1[v] = _mm256_setzero_si256();
    c2[v] = _mm256_xor_si256(_mm256_srli_epi64(prod_a, 32), _mm256_set1_epi32(static_cast<int>(keys.k1[0])));
    c3[v] = prod_a;
  }
  for (int r = 1; r < philox::kRounds - 1; ++r) {
    const __m256i k0 = _mm256_set1_epi32(static_cast<int>(keys.k0[r]));
    const __m256i k1 = _mm256_set1_epi32(static_cast<int>(keys.k1[r]));
    for (int v = 0; v < N; ++v) {
      const __m256i prod_b = _mm256_mul_epu32(c2[v], mul_b);
      const __m256i prod_a = _mm256_mul_epu32(c0[v], mul_a);
      c0[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(prod_b, 32), c1[v]), k0);
      c2[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(prod_a, 32), c3[v]), k1);
      c1[v] = prod_b;
      c3[v] = prod_a;
    }
  }
  // Round 10: only (r0, r1) feed Box-Muller.
  const __m256i k0 = _mm256_set1_epi32(static_cast<int>(keys.k0[philox::kRounds - 1]));
  for (int v = 0; v < N; ++v) {
    const __m256i prod_b = _mm256_mul_epu32(c2[v], mul_b);
    r0[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(prod_b, 32), c1[v]), k0);
    r1[v] = prod_b;
  }
}

// philox::uint_to_uniform on 8 lanes: x ^ (x >> 31) (arithmetic) is ~x for "negative" x.
RMMD_AVX2 inline __m256 uint_to_uniform_avx2(__m256i x) {
  const __m256i folded = _mm256_xor_si256(x, _mm256_srai_epi32(x, 31));
  return _mm256_mul_ps(_mm256_cvtepi32_ps(folded), _mm256_set1_ps(philox::kUniformScale));
}

// Natural log for x in [1e-7, 1) (positive normal floats; no special cases needed).
RMMD_AVX2 inline __m256 log_avx2(__m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  // x = m * 2^e with m in [1, 2); then fold m into [sqrt(1/2), sqrt(2)) so f = m - 1 is small.
  __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127));
  __m256 m = _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)), _mm256_set1_epi32(0x3F800000)));
  const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356237f), _CMP_GT_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
  e = _mm256_sub_epi32(e, _mm256_castps_si256(big));  // big lanes are all-ones == -1
  const __m256 fe = _mm256_cvtepi32_ps(e);
  const __m256 f = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));  // exact (Sterbenz)
  const __m256 z = _mm256_mul_ps(f, f);
  __m256 p = _mm256_set1_ps(7.0376836292e-2f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-1.1514610310e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.1676998740e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-1.2420140846e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.4249322787e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-1.6668057665e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.0000714765e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-2.4999993993e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(3.3333331174e-1f));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, z), f);
  // ln 2 = 0.693359375 - 2.12194440e-4, split so e * ln2_hi is exact.
  y = _mm256_fmadd_ps(fe, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fmadd_ps(z, _mm256_set1_ps(-0.5f), y);
  return _mm256_fmadd_ps(fe, _mm256_set1_ps(0.693359375f), _mm256_add_ps(f, y));
}

// cos(x) for x in [0, 2*pi]: octant j = round-to-even-octant(x * 4/pi), Cody-Waite reduction by pi/4 in
// three parts (exact products thanks to FMA), then the sin or cos polynomial of the reduced argument.
RMMD_AVX2 inline __m256 cos_avx2(__m256 x) {
  __m256i j = _mm256_cvttps_epi32(_mm256_mul_ps(x, _mm256_set1_ps(1.27323954473516f)));  // 4/pi
  j = _mm256_and_si256(_mm256_add_epi32(j, _mm256_set1_epi32(1)), _mm256_set1_epi32(~1));  // even octant
  const __m256 y = _mm256_cvtepi32_ps(j);
  __m256 r = _mm256_fnmadd_ps(y, _mm256_set1_ps(0.78515625f), x);
  r = _mm256_fnmadd_ps(y, _mm256_set1_ps(2.4187564849853515625e-4f), r);
  r = _mm256_fnmadd_ps(y, _mm256_set1_ps(3.77489497744594108e-8f), r);  // |r| <= pi/4
  // j in {0, 2, 4, 6, 8}: cos(x) = cos(r), -sin(r), -cos(r), sin(r), cos(r).
  const __m256i q = _mm256_and_si256(j, _mm256_set1_epi32(7));
  const __m256 use_sin = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(q, _mm256_set1_epi32(2)),
                                                                _mm256_set1_epi32(2)));
  const __m256i negate = _mm256_slli_epi32(
      _mm256_xor_si256(_mm256_srli_epi32(q, 2), _mm256_srli_epi32(_mm256_and_si256(q, _mm256_set1_epi32(2)), 1)),
      31);  // sign flips for octants 2 (-sin) and 4 (-cos)
  const __m256 z = _mm256_mul_ps(r, r);
  __m256 s = _mm256_set1_ps(-1.9515295891e-4f);
  s = _mm256_fmadd_ps(s, z, _mm256_set1_ps(8.3321608736e-3f));
  s = _mm256_fmadd_ps(s, z, _mm256_set1_ps(-1.6666654611e-1f));
  s = _mm256_fmadd_ps(_mm256_mul_ps(s, z), r, r);
  __m256 c = _mm256_set1_ps(2.443315711809948e-5f);
  c = _mm256_fmadd_ps(c, z, _mm256_set1_ps(-1.388731625493765e-3f));
  c = _mm256_fmadd_ps(c, z, _mm256_set1_ps(4.166664568298827e-2f));
  c = _mm256_fmadd_ps(_mm256_mul_ps(c, z), z, _mm256_fnmadd_ps(_mm256_set1_ps(0.5f), z, _mm256_set1_ps(1.0f)));
  return _mm256_xor_ps(_mm256_blendv_ps(c, s, use_sin), _mm256_castsi256_ps(negate));
}

// Box-Muller on packed 32-bit Philox outputs (philox::box_muller_first of the two uniforms).
RMMD_AVX2 inline __m256 box_muller_avx2(__m256i r0, __m256i r1) {
  const __m256 u0 = _mm256_max_ps(_mm256_set1_ps(philox::kMinUniform), uint_to_uniform_avx2(r0));
  const __m256 theta = _mm256_mul_ps(_mm256_set1_ps(philox::kTwoPi), uint_to_uniform_avx2(r1));
  const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), log_avx2(u0)));
  return _mm256_mul_ps(radius, cos_avx2(theta));
}

// Merges the low halves of the 64-bit lanes of `even` (elements 0, 2, 4, 6) and `odd` (1, 3, 5, 7).
RMMD_AVX2 inline __m256i interleave_lo_avx2(__m256i even, __m256i odd) {
  return _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// philox::randn(seed, counter0 + l) for l < 8 * Blocks, to a few float32 ULP; out[k] holds l = 8k..8k+7.
// Counters are 64-bit adds (carries are free); even elements go to one vector, odd ones to the next.
template <int Blocks>
RMMD_AVX2 inline void randn_blocks_avx2(const PhiloxKeys& keys, uint64_t counter0, __m256 * out) {
  __m256i ctr[2 * Blocks], r0[2 * Blocks], r1[2 * Blocks];
  const __m256i base = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<long long>(counter0)),
                                        _mm256_setr_epi64x(0, 2, 4, 6));
  for (int v = 0; v < 2 * Blocks; ++v) {
    ctr[v] = _mm256_add_epi64(base, _mm256_set1_epi64x(8 * (v / 2) + v % 2));
  }
  philox_q_avx2<2 * Blocks>(ctr, keys, r0, r1);
  for (int k = 0; k < Blocks; ++k) {
    out[k] = box_muller_avx2(interleave_lo_avx2(r0[2 * k], r0[2 * k + 1]), interleave_lo_avx2(r1[2 * k], r1[2 * k + 1]));
  }
}

// out[l] = philox::randn(seed, counter0 + l) (to a few ULP) for l < 8 * blocks.
RMMD_AVX2 inline void randn_avx2(const PhiloxKeys& keys, uint64_t counter0, int64_t blocks, float* out) {
  for (int64_t blk = 0; blk < blocks; ++blk) {
    __m256 n;
    randn_blocks_avx2<1>(keys, counter0 + static_cast<uint64_t>(8 * blk), &n);
    _mm256_storeu_ps(out + 8 * blk, n);
  }
}

// ---------------------------------------------------------------------------------------------------
// AVX-512 (F, BW, DQ, VL)
// ---------------------------------------------------------------------------------------------------

// Three-way XOR in one instruction (truth table 0x96 = a ^ b ^ c).
RMMD_AVX512 inline __m512i xor3_512(__m512i a, __m512i b, __m512i c) {
  return _mm512_ternarylogic_epi32(a, b, c, 0x96);
}

// philox_q_avx2 on N vectors of 8 counters; the three-way XORs are one ternlog each.
template <int N>
RMMD_AVX512 inline void philox_q_avx512(const __m512i* ctr, const PhiloxKeys& keys, __m512i* r0, __m512i* r1) {
  const __m512i mul_a = _mm512_set1_epi64(philox::kRoundA);
  const __m512i mul_b = _mm512_set1_epi64(philox::kRoundB);
  __m512i c0[N], c1[N], c2[N], c3[N];
  for (int v = 0; v < N; ++v) {
    const __m512i prod_a = _mm512_mul_epu32(ctr[v], mul_a);
    c0[v] = _mm512_xor_si512(_mm512_srli_epi64(ctr[v], 32), _mm512_set1_epi32(static_cast<int>(keys.k0[0])));
    c1[v] = _mm512_setzero_si512();
    c2[v] = _mm512_xor_si512(_mm512_srli_epi64(prod_a, 32), _mm512_set1_epi32(static_cast<int>(keys.k1[0])));
    c3[v] = prod_a;
  }
  for (int r = 1; r < philox::kRounds - 1; ++r) {
    const __m512i k0 = _mm512_set1_epi32(static_cast<int>(keys.k0[r]));
    const __m512i k1 = _mm512_set1_epi32(static_cast<int>(keys.k1[r]));
    for (int v = 0; v < N; ++v) {
      const __m512i prod_b = _mm512_mul_epu32(c2[v], mul_b);
      const __m512i prod_a = _mm512_mul_epu32(c0[v], mul_a);
      c0[v] = xor3_512(_mm512_srli_epi64(prod_b, 32), c1[v], k0);
      c2[v] = xor3_512(_mm512_srli_epi64(prod_a, 32), c3[v], k1);
      c1[v] = prod_b;
      c3[v] = prod_a;
    }
  }
  const __m512i k0 = _mm512_set1_epi32(static_cast<int>(keys.k0[philox::kRounds - 1]));
  for (int v = 0; v < N; ++v) {
    const __m512i prod_b = _mm512_mul_epu32(c2[v], mul_b);
    r0[v] = xor3_512(_mm512_srli_epi64(prod_b, 32), c1[v], k0);
    r1[v] = prod_b;
  }
}

RMMD_AVX512 inline __m512 uint_to_uniform_avx512(__m512i x) {
  const __m512i folded = _mm512_xor_si512(x, _mm512_srai_epi32(x, 31));
  return _mm512_mul_ps(_mm512_cvtepi32_ps(folded), _mm512_set1_ps(philox::kUniformScale));
}

// log_avx2 on 16 lanes (same polynomial, same operation order).
RMMD_AVX512 inline __m512 log_avx512(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  __m512i e = _mm512_sub_epi32(_mm512_srli_epi32(bits, 23), _mm512_set1_epi32(127));
  __m512 m = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(bits, _mm512_set1_epi32(0x007FFFFF),
                                                           _mm512_set1_epi32(0x3F800000), 0xEA));  // (a & b) | c
  const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356237f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_epi32(e, big, e, _mm512_set1_epi32(1));
  const __m512 fe = _mm512_cvtepi32_ps(e);
  const __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  const __m512 z = _mm512_mul_ps(f, f);
  __m512 p = _mm512_set1_ps(7.0376836292e-2f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.1514610310e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.1676998740e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.2420140846e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.4249322787e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.6668057665e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.0000714765e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-2.4999993993e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(3.3333331174e-1f));
  __m512 y = _mm512_mul_ps(_mm512_mul_ps(p, z), f);
  y = _mm512_fmadd_ps(fe, _mm512_set1_ps(-2.12194440e-4f), y);
  y = _mm512_fmadd_ps(z, _mm512_set1_ps(-0.5f), y);
  return _mm512_fmadd_ps(fe, _mm512_set1_ps(0.693359375f), _mm512_add_ps(f, y));
}

// cos_avx2 on 16 lanes (same reduction and polynomials).
RMMD_AVX512 inline __m512 cos_avx512(__m512 x) {
  __m512i j = _mm512_cvttps_epi32(_mm512_mul_ps(x, _mm512_set1_ps(1.27323954473516f)));
  j = _mm512_and_si512(_mm512_add_epi32(j, _mm512_set1_epi32(1)), _mm512_set1_epi32(~1));
  const __m512 y = _mm512_cvtepi32_ps(j);
  __m512 r = _mm512_fnmadd_ps(y, _mm512_set1_ps(0.78515625f), x);
  r = _mm512_fnmadd_ps(y, _mm512_set1_ps(2.4187564849853515625e-4f), r);
  r = _mm512_fnmadd_ps(y, _mm512_set1_ps(3.77489497744594108e-8f), r);
  // j in {0, 2, 4, 6, 8}: bit 1 picks sin, and the sign flips where bit 2 != bit 1 (octants 2 and 4).
  const __mmask16 use_sin = _mm512_test_epi32_mask(j, _mm512_set1_epi32(2));
  const __m512i negate = _mm512_slli_epi32(_mm512_xor_si512(_mm512_srli_epi32(j, 2), _mm512_srli_epi32(j, 1)), 31);
  const __m512 z = _mm512_mul_ps(r, r);
  __m512 s = _mm512_set1_ps(-1.9515295891e-4f);
  s = _mm512_fmadd_ps(s, z, _mm512_set1_ps(8.3321608736e-3f));
  s = _mm512_fmadd_ps(s, z, _mm512_set1_ps(-1.6666654611e-1f));
  s = _mm512_fmadd_ps(_mm512_mul_ps(s, z), r, r);
  __m512 c = _mm512_set1_ps(2.443315711809948e-5f);
  c = _mm512_fmadd_ps(c, z, _mm512_set1_ps(-1.388731625493765e-3f));
  c = _mm512_fmadd_ps(c, z, _mm512_set1_ps(4.166664568298827e-2f));
  c = _mm512_fmadd_ps(_mm512_mul_ps(c, z), z, _mm512_fnmadd_ps(_mm512_set1_ps(0.5f), z, _mm512_set1_ps(1.0f)));
  return _mm512_castsi512_ps(
      _mm512_xor_si512(_mm512_castps_si512(_mm512_mask_blend_ps(use_sin, c, s)), negate));
}

RMMD_AVX512 inline __m512 box_muller_avx512(__m512i r0, __m512i r1) {
  const __m512 u0 = _mm512_max_ps(_mm512_set1_ps(philox::kMinUniform), uint_to_uniform_avx512(r0));
  const __m512 theta = _mm512_mul_ps(_mm512_set1_ps(philox::kTwoPi), uint_to_uniform_avx512(r1));
  const __m512 radius = _mm512_sqrt_ps(_mm512_mul_ps(_mm512_set1_ps(-2.0f), log_avx512(u0)));
  return _mm512_mul_ps(radius, cos_avx512(theta));
}

// Low halves of the 64-bit lanes of `even` into the even 32-bit lanes, of `odd` into the odd ones.
RMMD_AVX512 inline __m512i interleave_lo_avx512(__m512i even, __m512i odd) {
  return _mm512_mask_shuffle_epi32(even, 0xAAAA, odd, _MM_PERM_CDAB);
}

// philox::randn(seed, counter0 + l) for l < 16 * Blocks, to a few float32 ULP; out[k] holds l = 16k..16k+15.
template <int Blocks>
RMMD_AVX512 inline void randn_blocks_avx512(const PhiloxKeys& keys, uint64_t counter0, __m512* out) {
  __m512i ctr[2 * Blocks], r0[2 * Blocks], r1[2 * Blocks];
  const __m512i base = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(counter0)),
                                        _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14));
  for (int v = 0; v < 2 * Blocks; ++v) {
    ctr[v] = _mm512_add_epi64(base, _mm512_set1_epi64(16 * (v / 2) + v % 2));
  }
  philox_q_avx512<2 * Blocks>(ctr, keys, r0, r1);
  for (int k = 0; k < Blocks; ++k) {
    out[k] = box_muller_avx512(interleave_lo_avx512(r0[2 * k], r0[2 * k + 1]),
                               interleave_lo_avx512(r1[2 * k], r1[2 * k + 1]));
  }
}

RMMD_AVX512 inline __m512 randn16_avx512(const PhiloxKeys& keys, uint64_t counter0) {
  __m512 n;
  randn_blocks_avx512<1>(keys, counter0, &n);
  return n;
}

// out[l] = philox::randn(seed, counter0 + l) (to a few ULP) for l < count (masked tail, no scalar code).
RMMD_AVX512 inline void randn_avx512(const PhiloxKeys& keys, uint64_t counter0, int64_t count, float* out) {
  int64_t l = 0;
  for (; l + 16 <= count; l += 16) {
    _mm512_storeu_ps(out + l, randn16_avx512(keys, counter0 + static_cast<uint64_t>(l)));
  }
  if (l < count) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (count - l)) - 1u);
    _mm512_mask_storeu_ps(out + l, tail, randn16_avx512(keys, counter0 + static_cast<uint64_t>(l)));
  }
}

inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
}

inline bool cpu_has_avx512() {
  static const bool has = cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512vl");
  return has;
}

// Older name, still called by csrc/bindings/build_info_registration.cpp.
inline bool cpu_has_avx2_fma() { return cpu_has_avx2(); }

}  // namespace simd
}  // namespace rmmd

#endif  // x86-64 with GCC or Clang
