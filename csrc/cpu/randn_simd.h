// AVX2 + FMA version of the Philox randn stream of csrc/common/philox.h, 8 lanes at a time, for the CPU
// kernels. Torch-free; compiled with a function-level target attribute and chosen at run time, so the
// extension still loads on CPUs without AVX2 (they use the scalar path).
//
// Why: the noise dominates K1 on CPU (10 Philox rounds + log + cos per element). Scalar code runs at
// ~25 ns/element/core, far from memory bandwidth and slower than Inductor's vectorised code for the
// reference. Here Philox uses _mm256_mul_epu32 (32x32->64 bit products on even/odd lanes) and log / cos
// are Cephes-style polynomials, so everything stays in registers.
//
// Accuracy: the integer stages (Philox, uint -> uniform, the float32 2*pi*u product) are bit-identical
// to philox.h. logf is the Cephes polynomial (max error ~1 ULP on [1e-7, 1)), cosf a Cody-Waite
// reduction by pi/4 plus the Cephes sin/cos polynomials (max abs error ~1e-7 on [0, 2*pi)). Normals
// therefore agree with libm-based code to a few float32 ULP, the same contract as between Triton on
// GPU, the Triton interpreter and the PyTorch reference; tests/test_posterior_step_op.py checks the
// kernel against the reference with and without this path (RMMD_CORE_CPU_SIMD=0).
// Polynomial coefficients: Cephes Math Library, Stephen L. Moshier (logf.c, sinf.c), public domain.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RMMD_HAVE_AVX2_PATH 1

#include <immintrin.h>
#include <stdint.h>

#include "../common/philox.h"

namespace rmmd {
namespace simd {

#define RMMD_AVX2 __attribute__((target("avx2,fma")))

// High and low 32 bits of k * x for 8 unsigned lanes.
RMMD_AVX2 inline void mul_hi_lo(__m256i k, __m256i x, __m256i* hi, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(x, k);                         // lanes 0, 2, 4, 6 (64-bit)
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), k);  // lanes 1, 3, 5, 7
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// philox::uint_to_uniform on 8 lanes: x ^ (x >> 31) (arithmetic) is ~x for "negative" x.
RMMD_AVX2 inline __m256 uint_to_uniform(__m256i x) {
  const __m256i folded = _mm256_xor_si256(x, _mm256_srai_epi32(x, 31));
  return _mm256_mul_ps(_mm256_cvtepi32_ps(folded), _mm256_set1_ps(philox::kUniformScale));
}

// Natural log for x in [1e-7, 1) (positive normal floats; no special cases needed).
RMMD_AVX2 inline __m256 log_ps(__m256 x) {
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
RMMD_AVX2 inline __m256 cos_ps(__m256 x) {
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

// out[l] = philox::randn(seed, counter0 + l) (to a few ULP) for l < 8 * blocks.
RMMD_AVX2 inline void randn_avx2(uint64_t seed, uint64_t counter0, int64_t blocks, float* out) {
  const __m256i key_a = _mm256_set1_epi32(static_cast<int32_t>(philox::kKeyA));
  const __m256i key_b = _mm256_set1_epi32(static_cast<int32_t>(philox::kKeyB));
  const __m256i round_a = _mm256_set1_epi64x(philox::kRoundA);  // mul_epu32 reads the low 32 bits
  const __m256i round_b = _mm256_set1_epi64x(philox::kRoundB);
  const __m256i k0_init = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(seed)));
  const __m256i k1_init = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(seed >> 32)));
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i sign = _mm256_set1_epi32(INT32_MIN);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const uint64_t base = counter0 + static_cast<uint64_t>(8 * blk);
    const __m256i lo_base = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(base)));
    __m256i c0 = _mm256_add_epi32(lo_base, iota);
    // Carry into the high word where the low word wrapped (unsigned c0 < lo_base).
    const __m256i carry = _mm256_cmpgt_epi32(_mm256_xor_si256(lo_base, sign), _mm256_xor_si256(c0, sign));
    __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(base >> 32))), carry);
    __m256i c2 = _mm256_setzero_si256();
    __m256i c3 = _mm256_setzero_si256();
    __m256i k0 = k0_init;
    __m256i k1 = k1_init;
    for (int round = 0; round < philox::kRounds; ++round) {
      __m256i hi_b, lo_b, hi_a, lo_a;
      mul_hi_lo(round_b, c2, &hi_b, &lo_b);
      mul_hi_lo(round_a, c0, &hi_a, &lo_a);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi_b, c1), k0);
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi_a, c3), k1);
      c1 = lo_b;
      c3 = lo_a;
      k0 = _mm256_add_epi32(k0, key_a);
      k1 = _mm256_add_epi32(k1, key_b);
    }
    const __m256 u0 = _mm256_max_ps(_mm256_set1_ps(philox::kMinUniform), uint_to_uniform(c0));
    const __m256 theta = _mm256_mul_ps(_mm256_set1_ps(philox::kTwoPi), uint_to_uniform(c1));
    const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), log_ps(u0)));
    _mm256_storeu_ps(out + 8 * blk, _mm256_mul_ps(radius, cos_ps(theta)));
  }
}

#undef RMMD_AVX2

inline bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

}  // namespace simd
}  // namespace rmmd

#endif  // x86-64 with GCC or Clang
