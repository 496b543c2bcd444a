// Element loads in opmath and rounded stores for the CPU kernels' vectorised loops.
//
//   OpIo<scalar_t>::load(p, i)     = p[i] as opmath (float for float / bf16 / fp16, double for double)
//   OpIo<scalar_t>::store(p, i, v) : p[i] = v rounded to scalar_t (round to nearest even)
//
// Why not static_cast: c10's float -> bfloat16 conversion branches on NaN (`if (std::isnan(v))`), and that
// branch keeps GCC from vectorising any loop that stores bf16: the rmmd_cotangent loop ran scalar at
// 4 ns per element per core, 0.4x torch.compile. The bf16 specialisation below gives the same bits as c10
// (round to nearest even; every NaN becomes the quiet NaN 0x7FC0) with a select instead of a branch.
// fp16 the same way: c10's conversions left fp16 loops scalar (0.4x torch.compile), and GCC 12 does not
// vectorise _Float16 conversions either (one scalar vcvtph2ps per element); the integer / float-select
// versions below vectorise on every ISA and give c10's bits (round to nearest even, subnormals, overflow
// to inf, NaN -> 0x7E00 with the sign kept). float and double keep c10's conversions.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace rmmd {

template <typename scalar_t>
struct OpIo {
  using opmath_t = at::opmath_type<scalar_t>;
  static inline opmath_t load(const scalar_t* p, int64_t i) { return static_cast<opmath_t>(p[i]); }
  static inline void store(scalar_t* p, int64_t i, opmath_t v) { p[i] = static_cast<scalar_t>(v); }
};

template <>
struct OpIo<c10::BFloat16> {
  using opmath_t = float;
  // bf16 is the top half of a float32.
  static inline float load(const c10::BFloat16* p, int64_t i) {
    return __builtin_bit_cast(float, static_cast<uint32_t>(p[i].x) << 16);
  }
  static inline void store(c10::BFloat16* p, int64_t i, float v) {
    const uint32_t u = __builtin_bit_cast(uint32_t, v);
    // Round to nearest even: add 0x7FFF plus the lowest kept bit, then drop the low half.
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const bool is_nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
    p[i].x = static_cast<uint16_t>(is_nan ? 0x7FC0u : rounded);
  }
};

template <>
struct OpIo<c10::Half> {
  using opmath_t = float;
  // fp16 -> float without float arithmetic on subnormal inputs: normals (and inf / NaN) by moving the
  // exponent and rescaling by 2^-112; subnormals by the magic-number subtraction (m + 0.5 - 0.5 at 2^-24).
  static inline float load(const c10::Half* p, int64_t i) {
    const uint32_t h = p[i].x;
    const uint32_t sign = (h & 0x8000u) << 16;
    const uint32_t two_w = h << 17;  // exponent and mantissa at the top, sign dropped
    const float normal = __builtin_bit_cast(float, (two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float subnormal = __builtin_bit_cast(float, (two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t mag = two_w < (1u << 27) ? __builtin_bit_cast(uint32_t, subnormal)
                                            : __builtin_bit_cast(uint32_t, normal);
    return __builtin_bit_cast(float, sign | mag);
  }
  // float -> fp16, round to nearest even; all three cases computed and one selected (no branch).
  static inline void store(c10::Half* p, int64_t i, float v) {
    const uint32_t f = __builtin_bit_cast(uint32_t, v);
    const uint32_t sign = f & 0x80000000u;
    const uint32_t a = f ^ sign;
    const uint32_t big = a > 0x7F800000u ? 0x7E00u : 0x7C00u;  // NaN -> quiet NaN; >= 65536 and inf -> inf
    // |v| < 2^-14 (fp16 subnormal or zero): adding 0.5f rounds to a multiple of 2^-24 in hardware.
    const uint32_t small = __builtin_bit_cast(uint32_t, __builtin_bit_cast(float, a) + 0.5f) - (126u << 23);
    // Normal: rebias the exponent, add 0xFFF plus the lowest kept bit, drop 13 bits (a carry into the
    // exponent is the correct rounding, up to inf at 65520).
    const uint32_t normal = (a - (112u << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13;
    const uint32_t mag = a >= 0x47800000u ? big : (a < 0x38800000u ? small : normal);
    p[i].x = static_cast<uint16_t>((sign >> 16) | mag);
  }
};

}  // namespace rmmd
