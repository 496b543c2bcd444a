// Philox-4x32-10 counter-based RNG and the uniform / Box-Muller transforms of Triton's `tl.randn`.
//
// Torch-free and header-only, so the ATen CPU kernels (csrc/cpu/) and the torch-free CUDA kernels
// (csrc/cuda/) draw the *same* stream as `rmmd_core/ops/reference.py::philox_randn_ref` and as a
// Triton kernel calling `tl.randn(seed, offset)` with 64-bit offsets (method.md §e: noise generated in
// kernel instead of read from memory). We deliberately avoid cuRAND: its Philox state layout differs
// from Triton's, and one stream across all backends is what lets their outputs be compared.
//
// Stream definition (element with logical flat index i, call offset `offset`, seed `seed`):
//   counter  = offset + i                        (uint64; offset, i < 2^63 so it never wraps)
//   key      = (k0, k1) = (seed & 0xffffffff, seed >> 32)
//   (r0, r1, r2, r3) = Philox4x32-10((counter_lo, counter_hi, 0, 0), key)
//   u_k      = uint_to_uniform(r_k)              for k = 0, 1
//   n[i]     = sqrt(-2 log max(1e-7, u0)) * cos(2 pi u1)
// Triton's randint4x puts the high 32 bits of an int64 offset into c1, so this equals tl.randn for any
// int64 offset block (and for int32 offsets, where c1 = 0, whenever offset + i < 2^32).
//
// Constants and operation order are copied from triton/language/random.py (triton 3.9.0, MIT licence:
// philox_impl, uint_to_uniform_float, pair_uniform_to_normal). Any change there changes the stream, and
// tests/test_posterior_step_op.py compares against the installed triton under TRITON_INTERPRET=1.
//
// The integer part (Philox, uint -> float) is bit-exact on every backend. logf / cosf are libm (host)
// or CUDA's accurate device functions, so normals agree to a few float32 ULP, not bitwise; do not
// build this with -ffast-math / --use_fast_math, which would change them by far more.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define RMMD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RMMD_HOST_DEVICE inline
#endif

namespace rmmd {
namespace philox {

// Weyl key increments and round multipliers of Philox-4x32 (Salmon et al., SC'11; Random123).
constexpr uint32_t kKeyA = 0x9E3779B9u;
constexpr uint32_t kKeyB = 0xBB67AE85u;
constexpr uint32_t kRoundA = 0xD2511F53u;
constexpr uint32_t kRoundB = 0xCD9E8D57u;
constexpr int kRounds = 10;

// Largest float32 scale with (2^31 - 1) * scale < 1 after rounding, so uniforms lie in [0, 1).
constexpr float kUniformScale = 4.6566127342e-10f;
// Triton writes these as Python floats that become float32 constants in the kernel.
constexpr float kTwoPi = 6.283185307179586f;
constexpr float kMinUniform = 1.0e-7f;  // clamps log(0); bounds |n| by sqrt(-2 ln 1e-7) ~= 5.68

struct Uint4 {
  uint32_t x, y, z, w;
};

RMMD_HOST_DEVICE uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Ten Philox rounds; the key is bumped after every round, exactly as triton's philox_impl.
RMMD_HOST_DEVICE Uint4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                     uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kRounds; ++round) {
    const uint32_t n0 = mulhi32(kRoundB, c2) ^ c1 ^ k0;
    const uint32_t n2 = mulhi32(kRoundA, c0) ^ c3 ^ k1;
    const uint32_t n1 = kRoundB * c2;
    const uint32_t n3 = kRoundA * c0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return Uint4{c0, c1, c2, c3};
}

// triton's uint_to_uniform_float for 32-bit inputs: reinterpret as int32, fold negatives with ~x
// (so the value lies in [0, 2^31 - 1]), convert with round-to-nearest, scale in float32.
RMMD_HOST_DEVICE float uint_to_uniform(uint32_t x) {
  const uint32_t folded = (x & 0x80000000u) ? ~x : x;
  return static_cast<float>(static_cast<int32_t>(folded)) * kUniformScale;
}

// First output of triton's pair_uniform_to_normal (Box-Muller); the sine half is discarded, as in
// tl.randn.
RMMD_HOST_DEVICE float box_muller_first(float u1, float u2) {
  u1 = fmaxf(kMinUniform, u1);
  const float theta = kTwoPi * u2;
  const float radius = sqrtf(-2.0f * logf(u1));
  return radius * cosf(theta);
}

// Standard normal for one 64-bit counter (= offset + logical element index).
RMMD_HOST_DEVICE float randn(uint64_t seed, uint64_t counter) {
  const Uint4 r = philox4x32_10(static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u,
                                0u, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return box_muller_first(uint_to_uniform(r.x), uint_to_uniform(r.y));
}

}  // namespace philox
}  // namespace rmmd
