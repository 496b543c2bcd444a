// Fused SIMD loops of the CPU affine step with in-kernel noise (csrc/cpu/posterior_step_cpu.cpp):
//
//   out[j] = a * z[j] + c * x[j] + g * n(counter0 + j)        (posterior_step, denoise_step, renoise)
//   x0[j]  = xa * z[j] + xc * x[j]                            (denoise_step with want_x0)
//
// for float32, bfloat16 and float16 data, AVX2 (8 lanes) and AVX-512 (16 lanes), with the normals of
// csrc/cpu/randn_simd.h. Torch-free (raw pointers, an element-kind template parameter) and compiled with
// function target attributes, so posterior_step_cpu.cpp picks an ISA at run time.
//
// Why fused: the normals never leave registers; z and x are loaded once for both outputs; bf16 / fp16 are
// widened and rounded with vector instructions (the generic C++ loop converts them one element at a time,
// and at baseline x86-64 GCC keeps even the float32 combine loop at SSE width). Coefficients arrive as
// float32 values in registers, never re-read through a pointer.
//
// Numerics: math in float32 with the reference's operation order and roundings, (a z + c x) + g n and
// xa z + xc x, no FMA contraction: the non-noise part is bit-identical to the reference (a test relies on
// gamma = 0 samples being exactly A z + C x), and FMAs would save 3 of ~100 vector ops per block. Rounding to bf16 is
// round-to-nearest-even with NaN -> 0x7FC0, exactly c10::BFloat16's; to fp16 the hardware's RNE
// conversion, exactly c10::Half's. Tails: AVX-512 masks the loads and stores; AVX2 runs the last partial
// block on a zero-padded copy, so every element takes the same vector arithmetic.
#pragma once

#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "randn_simd.h"

#if defined(RMMD_HAVE_X86_SIMD_PATHS)

namespace rmmd {
namespace simd {

enum class Elem { kF32, kBF16, kF16 };

// Makes v opaque to the optimiser: GCC's intrinsics are plain vector arithmetic and -ffp-contract=fast
// (GCC's default) would fuse a product into a following add; the reference rounds the product first.
#define RMMD_ROUNDED(expr)       \
  __extension__({                \
    auto rmmd_v_ = (expr);       \
    __asm__("" : "+v"(rmmd_v_)); \
    rmmd_v_;                     \
  })

template <Elem E>
constexpr int64_t elem_bytes() {
  return E == Elem::kF32 ? 4 : 2;
}

// ---------------------------------------------------------------------------------------------------
// AVX2 loads / stores of 8 elements
// ---------------------------------------------------------------------------------------------------

template <Elem E>
RMMD_AVX2 inline __m256 load8(const void* p) {
  if constexpr (E == Elem::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(p));
  } else if constexpr (E == Elem::kBF16) {
    const __m128i h = _mm_loadu_si128(static_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p)));
  }
}

template <Elem E>
RMMD_AVX2 inline void store8(void* p, __m256 v) {
  if constexpr (E == Elem::kF32) {
    _mm256_storeu_ps(static_cast<float*>(p), v);
  } else if constexpr (E == Elem::kBF16) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7FFF),
                                          _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1)));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, bias), 16);
    r = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC0)),
                                             _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    // Values are <= 0xFFFF, so unsigned saturation is exact; _mm_packus keeps the order.
    _mm_storeu_si128(static_cast<__m128i*>(p),
                     _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
  } else {
    _mm_storeu_si128(static_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

// One block of 8 (pointers already offset) with its normals n.
template <bool Noise, bool WithX0, Elem E>
RMMD_AVX2 inline void step_block8(const void* z, const void* x, void* out, void* x0, __m256 a, __m256 c, __m256 g,
                                  __m256 xa, __m256 xc, __m256 n) {
  const __m256 zv = load8<E>(z), xv = load8<E>(x);
  __m256 o = _mm256_add_ps(RMMD_ROUNDED(_mm256_mul_ps(a, zv)), RMMD_ROUNDED(_mm256_mul_ps(c, xv)));
  if constexpr (Noise) o = _mm256_add_ps(o, RMMD_ROUNDED(_mm256_mul_ps(g, n)));
  store8<E>(out, o);
  if constexpr (WithX0) store8<E>(x0, _mm256_add_ps(RMMD_ROUNDED(_mm256_mul_ps(xa, zv)), RMMD_ROUNDED(_mm256_mul_ps(xc, xv))));
}

// Main loop: Blocks blocks of 8 per iteration, their Philox chains interleaved (randn_blocks_avx2).
template <bool Noise, bool WithX0, Elem E, int Blocks = 2>
RMMD_AVX2 void step_run_avx2(const void* z, const void* x, void* out, int64_t count, float a, float c, float g,
                             const PhiloxKeys& keys, uint64_t counter0, void* x0, float xa, float xc) {
  constexpr int64_t kB = elem_bytes<E>();
  const char* zp = static_cast<const char*>(z);
  const char* xp = static_cast<const char*>(x);
  char* op = static_cast<char*>(out);
  char* x0p = static_cast<char*>(x0);
  const __m256 av = _mm256_set1_ps(a), cv = _mm256_set1_ps(c), gv = _mm256_set1_ps(g);
  const __m256 xav = _mm256_set1_ps(xa), xcv = _mm256_set1_ps(xc);
  auto body = [&](auto blocks_tag, int64_t j) RMMD_AVX2 {
    constexpr int kBlocks = decltype(blocks_tag)::value;
    __m256 n[kBlocks];
    if constexpr (Noise) randn_blocks_avx2<kBlocks>(keys, counter0 + static_cast<uint64_t>(j), n);
    for (int k = 0; k < kBlocks; ++k) {
      const int64_t e = (j + 8 * k) * kB;
      step_block8<Noise, WithX0, E>(zp + e, xp + e, op + e, WithX0 ? x0p + e : nullptr, av, cv, gv, xav, xcv,
                                    Noise ? n[k] : av);
    }
  };
  int64_t j = 0;
  for (; j + 8 * Blocks <= count; j += 8 * Blocks) body(std::integral_constant<int, Blocks>(), j);
  for (; j + 8 <= count; j += 8) body(std::integral_constant<int, 1>(), j);
  if (j < count) {
    // Partial block on zero-padded copies: the same vector arithmetic as the body.
    const size_t bytes = static_cast<size_t>((count - j) * kB);
    alignas(32) char zb[32] = {}, xb[32] = {}, ob[32], x0b[32];
    memcpy(zb, zp + j * kB, bytes);
    memcpy(xb, xp + j * kB, bytes);
    __m256 n = av;
    if constexpr (Noise) randn_blocks_avx2<1>(keys, counter0 + static_cast<uint64_t>(j), &n);
    step_block8<Noise, WithX0, E>(zb, xb, ob, x0b, av, cv, gv, xav, xcv, n);
    memcpy(op + j * kB, ob, bytes);
    if constexpr (WithX0) memcpy(x0p + j * kB, x0b, bytes);
  }
}

// ---------------------------------------------------------------------------------------------------
// AVX-512 loads / stores of 16 elements (masked variants for the tail)
// ---------------------------------------------------------------------------------------------------

template <Elem E>
RMMD_AVX512 inline __m512 load16(const void* p, __mmask16 m) {
  if constexpr (E == Elem::kF32) {
    return _mm512_maskz_loadu_ps(m, p);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, p);
    if constexpr (E == Elem::kBF16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
      return _mm512_cvtph_ps(h);
    }
  }
}

template <Elem E>
RMMD_AVX512 inline void store16(void* p, __m512 v, __mmask16 m) {
  if constexpr (E == Elem::kF32) {
    _mm512_mask_storeu_ps(p, m, v);
  } else {
    __m256i h;
    if constexpr (E == Elem::kBF16) {
      const __m512i bits = _mm512_castps_si512(v);
      const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7FFF),
                                            _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1)));
      __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, bias), 16);
      r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
      h = _mm512_cvtepi32_epi16(r);
    } else {
      h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    _mm256_mask_storeu_epi16(p, m, h);
  }
}

template <bool Noise, bool WithX0, Elem E>
RMMD_AVX512 inline void step_block16(const void* z, const void* x, void* out, void* x0, __m512 a, __m512 c, __m512 g,
                                     __m512 xa, __m512 xc, __m512 n, __mmask16 m) {
  const __m512 zv = load16<E>(z, m), xv = load16<E>(x, m);
  __m512 o = _mm512_add_ps(RMMD_ROUNDED(_mm512_mul_ps(a, zv)), RMMD_ROUNDED(_mm512_mul_ps(c, xv)));
  if constexpr (Noise) o = _mm512_add_ps(o, RMMD_ROUNDED(_mm512_mul_ps(g, n)));
  store16<E>(out, o, m);
  if constexpr (WithX0) {
    store16<E>(x0, _mm512_add_ps(RMMD_ROUNDED(_mm512_mul_ps(xa, zv)), RMMD_ROUNDED(_mm512_mul_ps(xc, xv))), m);
  }
}

// Main loop: Blocks blocks of 16 per iteration, their Philox chains interleaved (randn_blocks_avx512);
// then single blocks, then one masked block.
template <bool Noise, bool WithX0, Elem E, int Blocks = 2>
RMMD_AVX512 void step_run_avx512(const void* z, const void* x, void* out, int64_t count, float a, float c, float g,
                                 const PhiloxKeys& keys, uint64_t counter0, void* x0, float xa, float xc) {
  constexpr int64_t kB = elem_bytes<E>();
  const char* zp = static_cast<const char*>(z);
  const char* xp = static_cast<const char*>(x);
  char* op = static_cast<char*>(out);
  char* x0p = static_cast<char*>(x0);
  const __m512 av = _mm512_set1_ps(a), cv = _mm512_set1_ps(c), gv = _mm512_set1_ps(g);
  const __m512 xav = _mm512_set1_ps(xa), xcv = _mm512_set1_ps(xc);
  auto body = [&](auto blocks_tag, int64_t j, __mmask16 last_mask) RMMD_AVX512 {
    constexpr int kBlocks = decltype(blocks_tag)::value;
    __m512 n[kBlocks];
    if constexpr (Noise) randn_blocks_avx512<kBlocks>(keys, counter0 + static_cast<uint64_t>(j), n);
    for (int k = 0; k < kBlocks; ++k) {
      const int64_t e = (j + 16 * k) * kB;
      step_block16<Noise, WithX0, E>(zp + e, xp + e, op + e, WithX0 ? x0p + e : nullptr, av, cv, gv, xav, xcv,
                                     Noise ? n[k] : av, k == kBlocks - 1 ? last_mask : __mmask16(0xFFFF));
    }
  };
  int64_t j = 0;
  for (; j + 16 * Blocks <= count; j += 16 * Blocks) body(std::integral_constant<int, Blocks>(), j, 0xFFFF);
  for (; j + 16 <= count; j += 16) body(std::integral_constant<int, 1>(), j, 0xFFFF);
  if (j < count) {
    body(std::integral_constant<int, 1>(), j, static_cast<__mmask16>((1u << (count - j)) - 1u));
  }
}

}  // namespace simd
}  // namespace rmmd

#undef RMMD_ROUNDED

#endif  // RMMD_HAVE_X86_SIMD_PATHS
