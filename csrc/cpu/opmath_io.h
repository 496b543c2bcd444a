// Element loads in opmath and rounded stores for the CPU kernels' vectorised loops.
//
//   OpIo<scalar_t>::load(p, i)     = p[i] as opmath (float for float / bf16 / fp16, double for double)
//   OpIo<scalar_t>::store(p, i, v) : p[i] = v rounded to scalar_t (round to nearest even)
//
// Why not static_cast: c10's float -> bfloat16 conversion branches on NaN (`if (std::isnan(v))`), and that
// branch keeps GCC from vectorising any loop that stores bf16: the rmmd_cotangent loop ran scalar at
// 4 ns per element per core, 0.4x torch.compile. The bf16 specialisation below gives the same bits as c10
// (round to nearest even; every NaN becomes the quiet NaN 0x7FC0) with a select instead of a branch.
// float, double and fp16 keep c10's conversions (fp16's is already branch-free).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>

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

}  // namespace rmmd
