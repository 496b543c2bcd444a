// ATen CPU kernels of rmmd_core::posterior_step, the posterior / DDIM(eta) step (method.md §a.4, §e K1),
// and of rmmd_core::denoise_step, the same step on folded coefficients with an optional x0 output
// (rmmd_core/ops/denoise_reference.py explains the fold):
//
//   z_s[b, j] = A[b] * z_t[b, j] + C[b] * x_hat[b, j] + gamma[b] * n[b * D + j],
//   n[i]      = philox randn(seed, offset + i)      (csrc/common/philox.h, Triton's tl.randn stream)
//
// z_t, x_hat: (B, ...) with D = numel / B elements per sample; A, C, gamma: (B,).
// Backward (rmmd_core/ops/_library.py): dz_s/dz_t = A[b], dz_s/dx_hat = C[b]; none for the rest.
//
// Numerics: opmath is float32 for float/half/bfloat16 data and float64 for double data; the
// coefficients are converted to opmath once (method.md Project defaults: coefficients are computed in
// float64 on the side, element-wise work in fp32). The noise is float32 for every dtype, because that is
// the stream Triton's tl.randn defines. Results are rounded to the input dtype once, at the store.
//
// Noise and element-wise math: on x86-64 CPUs with AVX-512 (F/BW/DQ/VL) or AVX2 + FMA + F16C, float32 /
// bfloat16 / float16 data go through the fused loops of csrc/cpu/noise_step_simd.h (normals from
// csrc/cpu/randn_simd.h in registers, polynomial log / cos a few float32 ULP from libm, vector bf16 / fp16
// conversion); float64 data and other CPUs use the scalar csrc/common/philox.h stream and a generic loop.
// RMMD_CORE_CPU_SIMD = avx512 | avx2 | 0 forces a path (noise_isa()). Integer stages are bit-identical in all.
// Measured (one Zen 4 core): noise ~2.0 ns/element with AVX-512, ~3.5 with AVX2, ~33 scalar.
//
// Layout: non-contiguous z_t / x_hat are copied once by .contiguous() here (documented on the Python
// API); the output is always a fresh contiguous tensor of z_t's shape, as the fake kernel promises.
#include "posterior_step_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "../common/philox.h"
#include "fresh_output.h"
#include "noise_step_simd.h"
#include "randn_simd.h"

namespace rmmd {
namespace {

// Noise costs ~2 ns per element per core with AVX-512 (~25 ns scalar: 10 Philox rounds + log + cos), so
// 16K elements are 0.03-0.4 ms of work per task: above at::parallel_for's scheduling cost, small enough
// to balance a few cores.
constexpr int64_t kGrainSize = 16384;
// Generic path (float64 data, scalar ISA): noise for a tile goes to a stack buffer, then is combined
// with the data; 256 floats stay in L1.
constexpr int64_t kTile = 256;

enum class Isa { kScalar, kAvx2, kAvx512 };

// RMMD_CORE_CPU_SIMD picks the noise / combine code, read per call so tests can compare every path:
// unset, "1" or "auto": the fastest the CPU has (AVX-512 on Zen 4: measured faster than AVX2 there even
// though 512-bit ops are double-pumped); "avx2": AVX2 + FMA; "avx512": AVX-512 F/BW/DQ/VL; "0" or
// "scalar": the scalar libm path. A request the CPU cannot run falls back to the next narrower ISA.
Isa noise_isa() {
#if defined(RMMD_HAVE_X86_SIMD_PATHS)
  const char* env = std::getenv("RMMD_CORE_CPU_SIMD");
  const bool off = env != nullptr && (std::strcmp(env, "0") == 0 || std::strcmp(env, "scalar") == 0);
  const bool avx2_only = env != nullptr && std::strcmp(env, "avx2") == 0;
  if (off) return Isa::kScalar;
  if (!avx2_only && simd::cpu_has_avx512()) return Isa::kAvx512;
  if (simd::cpu_has_avx2()) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

// noise[l] = philox::randn(seed, counter0 + l) for l < count (count <= kTile).
void fill_noise(const simd::PhiloxKeys& keys, uint64_t seed, uint64_t counter0, int64_t count, Isa isa,
                float* noise) {
  int64_t done = 0;
#if defined(RMMD_HAVE_X86_SIMD_PATHS)
  if (isa == Isa::kAvx512) {
    simd::randn_avx512(keys, counter0, count, noise);
    done = count;
  } else if (isa == Isa::kAvx2) {
    simd::randn_avx2(keys, counter0, count / 8, noise);
    done = count - count % 8;
  }
#else
  (void)keys;
  (void)isa;
#endif
  // Tails and the scalar path. The counter is a uint64 sum; offset, index < 2^63 keep it below 2^64.
  for (int64_t l = done; l < count; ++l) {
    noise[l] = philox::randn(seed, counter0 + static_cast<uint64_t>(l));
  }
}

// One run of `count` elements that all belong to the same sample (so share a, c, g), generic C++:
// float64 data, and every dtype on the scalar ISA. `counter0` is offset + the logical index of the first
// element. WithX0 (denoise_step with want_x0) also writes x0 = xa * z + xc * x from the same loads.
// The coefficients are by-value locals, so the loops keep them in registers.
template <bool WithX0, typename scalar_t, typename opmath_t>
void step_run_generic(const scalar_t* z, const scalar_t* x, scalar_t* out, int64_t count, opmath_t a, opmath_t c,
                      opmath_t g, const simd::PhiloxKeys& keys, uint64_t seed, uint64_t counter0, Isa isa,
                      scalar_t* x0_out, opmath_t xa, opmath_t xc) {
  if (g == opmath_t(0)) {
    // Deterministic samples (eta = 0, or the final step into s = 0) skip noise generation entirely.
    for (int64_t j = 0; j < count; ++j) {
      const opmath_t zj = static_cast<opmath_t>(z[j]), xj = static_cast<opmath_t>(x[j]);
      out[j] = static_cast<scalar_t>(a * zj + c * xj);
      if constexpr (WithX0) x0_out[j] = static_cast<scalar_t>(xa * zj + xc * xj);
    }
    return;
  }
  float noise[kTile];
  for (int64_t j0 = 0; j0 < count; j0 += kTile) {
    const int64_t m = std::min(kTile, count - j0);
    fill_noise(keys, seed, counter0 + static_cast<uint64_t>(j0), m, isa, noise);
    for (int64_t l = 0; l < m; ++l) {
      const int64_t j = j0 + l;
      const opmath_t zj = static_cast<opmath_t>(z[j]), xj = static_cast<opmath_t>(x[j]);
      // Same association as the reference: (A z + C x) + gamma n.
      out[j] = static_cast<scalar_t>(a * zj + c * xj + g * static_cast<opmath_t>(noise[l]));
      if constexpr (WithX0) x0_out[j] = static_cast<scalar_t>(xa * zj + xc * xj);
    }
  }
}

#if defined(RMMD_HAVE_X86_SIMD_PATHS)
template <typename scalar_t>
constexpr bool kHasSimdRun = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, at::BFloat16> ||
                             std::is_same_v<scalar_t, at::Half>;

template <typename scalar_t>
constexpr simd::Elem simd_elem() {
  if constexpr (std::is_same_v<scalar_t, float>) return simd::Elem::kF32;
  else if constexpr (std::is_same_v<scalar_t, at::BFloat16>) return simd::Elem::kBF16;
  else return simd::Elem::kF16;
}

// The fused AVX2 / AVX-512 loops of noise_step_simd.h for one run (float32 opmath).
template <bool WithX0, typename scalar_t>
void step_run_simd(Isa isa, const scalar_t* z, const scalar_t* x, scalar_t* out, int64_t count, float a, float c,
                   float g, const simd::PhiloxKeys& keys, uint64_t counter0, scalar_t* x0, float xa, float xc) {
  constexpr simd::Elem E = simd_elem<scalar_t>();
  const bool noise = g != 0.0f;
  if (isa == Isa::kAvx512) {
    auto run = noise ? simd::step_run_avx512<true, WithX0, E> : simd::step_run_avx512<false, WithX0, E>;
    run(z, x, out, count, a, c, g, keys, counter0, x0, xa, xc);
  } else {
    auto run = noise ? simd::step_run_avx2<true, WithX0, E> : simd::step_run_avx2<false, WithX0, E>;
    run(z, x, out, count, a, c, g, keys, counter0, x0, xa, xc);
  }
}
#endif

// Shared body of posterior_step and denoise_step: z_s = A z + C x + gamma n, plus x0 = xa z + xc x when
// x0_out is defined. Each run reads z and x once for both outputs.
void affine_step(const at::Tensor& z_t, const at::Tensor& x_hat, const at::Tensor& A, const at::Tensor& C,
                 const at::Tensor& gamma, int64_t seed, int64_t offset, const at::Tensor& out,
                 const at::Tensor* xa_coef, const at::Tensor* xc_coef, const at::Tensor* x0_out) {
  // One copy for strided inputs; a no-op for the common contiguous case.
  const at::Tensor z = z_t.contiguous();
  const at::Tensor x = x_hat.contiguous();
  const int64_t numel = z.numel();
  if (numel == 0) {
    return;
  }
  const int64_t per_sample = numel / z.size(0);  // D; z.size(0) > 0 because numel > 0

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "rmmd_core::posterior_step_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto coef_dtype = c10::CppTypeToScalarType<opmath_t>::value;
    const at::Tensor a = A.to(coef_dtype).contiguous();
    const at::Tensor c = C.to(coef_dtype).contiguous();
    const at::Tensor g = gamma.to(coef_dtype).contiguous();
    const bool with_x0 = x0_out != nullptr;
    const at::Tensor xa = with_x0 ? xa_coef->to(coef_dtype).contiguous() : at::Tensor();
    const at::Tensor xc = with_x0 ? xc_coef->to(coef_dtype).contiguous() : at::Tensor();

    const scalar_t* z_ptr = z.const_data_ptr<scalar_t>();
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    scalar_t* x0_ptr = with_x0 ? x0_out->mutable_data_ptr<scalar_t>() : nullptr;
    const opmath_t* a_ptr = a.const_data_ptr<opmath_t>();
    const opmath_t* c_ptr = c.const_data_ptr<opmath_t>();
    const opmath_t* g_ptr = g.const_data_ptr<opmath_t>();
    const opmath_t* xa_ptr = with_x0 ? xa.const_data_ptr<opmath_t>() : nullptr;
    const opmath_t* xc_ptr = with_x0 ? xc.const_data_ptr<opmath_t>() : nullptr;
    const uint64_t seed_u = static_cast<uint64_t>(seed);
    const uint64_t offset_u = static_cast<uint64_t>(offset);
    const simd::PhiloxKeys keys(seed_u);
    const Isa isa = noise_isa();

    // Parallel over flat elements, not samples: B is often smaller than the core count (B = 1..8 at
    // 5.3M-value weather states), and D often smaller than a grain (toy problems).
    at::parallel_for(0, numel, kGrainSize, [&](int64_t begin, int64_t end) {
      int64_t i = begin;
      while (i < end) {
        const int64_t b = i / per_sample;
        const int64_t run_end = std::min(end, (b + 1) * per_sample);
        const uint64_t counter0 = offset_u + static_cast<uint64_t>(i);
        const opmath_t xa_b = with_x0 ? xa_ptr[b] : opmath_t(0), xc_b = with_x0 ? xc_ptr[b] : opmath_t(0);
        scalar_t* x0_run = with_x0 ? x0_ptr + i : nullptr;
#if defined(RMMD_HAVE_X86_SIMD_PATHS)
        if constexpr (kHasSimdRun<scalar_t>) {
          // Noise-free float32 runs stay on the generic loop: bandwidth-bound, and measured ~20% faster
          // there (4M elements, one thread: 1.8 vs 2.2 ms); for bf16 / fp16 the vector conversions win 2x.
          const bool simd_run = g_ptr[b] != opmath_t(0) || !std::is_same_v<scalar_t, float>;
          if (isa != Isa::kScalar && simd_run) {
            auto run = with_x0 ? step_run_simd<true, scalar_t> : step_run_simd<false, scalar_t>;
            run(isa, z_ptr + i, x_ptr + i, out_ptr + i, run_end - i, a_ptr[b], c_ptr[b], g_ptr[b], keys, counter0,
                x0_run, xa_b, xc_b);
            i = run_end;
            continue;
          }
        }
#endif
        auto run = with_x0 ? step_run_generic<true, scalar_t, opmath_t> : step_run_generic<false, scalar_t, opmath_t>;
        run(z_ptr + i, x_ptr + i, out_ptr + i, run_end - i, a_ptr[b], c_ptr[b], g_ptr[b], keys, seed_u, counter0, isa,
            x0_run, xa_b, xc_b);
        i = run_end;
      }
    });
  });
}

}  // namespace

at::Tensor posterior_step_cpu_kernel(const at::Tensor& z_t, const at::Tensor& x_hat, const at::Tensor& A,
                                     const at::Tensor& C, const at::Tensor& gamma, int64_t seed,
                                     int64_t offset) {
  at::Tensor out = empty_output_like(z_t);
  affine_step(z_t, x_hat, A, C, gamma, seed, offset, out, nullptr, nullptr, nullptr);
  return out;
}

const char* cpu_noise_path() {
  switch (noise_isa()) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

std::tuple<at::Tensor, at::Tensor> denoise_step_cpu_kernel(const at::Tensor& z_t, const at::Tensor& net_out,
                                                           const at::Tensor& P, const at::Tensor& Q,
                                                           const at::Tensor& gamma, const at::Tensor& a,
                                                           const at::Tensor& c, int64_t seed, int64_t offset,
                                                           bool want_x0) {
  at::Tensor z_s = empty_output_like(z_t);
  if (!want_x0) {
    affine_step(z_t, net_out, P, Q, gamma, seed, offset, z_s, nullptr, nullptr, nullptr);
    return {z_s, at::empty({0}, z_t.options())};
  }
  at::Tensor x0 = empty_output_like(z_t);
  affine_step(z_t, net_out, P, Q, gamma, seed, offset, z_s, &a, &c, &x0);
  return {z_s, x0};
}

}  // namespace rmmd
