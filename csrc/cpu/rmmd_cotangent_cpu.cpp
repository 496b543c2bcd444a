// ATen CPU kernel of rmmd_core::rmmd_cotangent, the RMMD cotangent assembly (method.md §c.6 step 7, §e K5):
//
//   w_eff[b] = w[b] / (mabs(x0[b] - m_ref[b]) + eps)  with the DMD normaliser (§d.4), else w[b]
//   g[b, j]  = scale * ( w_eff[b] (m_stu - m_ref) - lam g_R + 2 lam_reg (x0 - a) )[b, j]
//   stats[b] = [ (1/D) <x0, w_eff (m_stu - m_ref)>, (1/D) ||x0 - a||^2,
//                ||scale w_eff (m_stu - m_ref)||^2, ||scale lam g_R||^2, ||2 scale lam_reg (x0 - a)||^2, w_eff ]
//
// One pass over the five inputs writes g and accumulates the per-sample sums the statistics need; the
// DMD normaliser needs its per-sample reduction first, so it adds one read pass over x0 and m_ref, done
// a wave of samples at a time so that the second pass finds them in cache.
// Backward (rmmd_core/ops/rmmd_cotangent.py) is plain PyTorch: the engine never differentiates this op.
//
// Parallelism: (sample, chunk) tasks (sample_chunks.h); results do not depend on the thread count.
// Numerics: loads upcast to opmath (float32; float64 for double data), products and the sums
// of one kInner block in opmath (vectorised with `omp simd`), blocks combined in double; g rounded once.
#include "rmmd_cotangent_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <array>
#include <vector>

#include "fresh_output.h"
#include "isa_clones.h"
#include "opmath_io.h"
#include "sample_chunks.h"

namespace rmmd {
namespace {

using Layout = SampleChunks;

// With the DMD normaliser, samples are processed in waves of about this many bytes of x0 + m_ref.
constexpr int64_t kWaveBytes = int64_t{4} << 20;

// The element loops are free functions over one block with restrict pointers and every scalar passed by
// value: written inline in the chunked_sums lambda (pointers and scalars captured by reference), GCC could
// not prove the stores to `out` leave them unchanged, reloaded them every element and left the loop
// scalar (movss / mulss), 2.3 ns per element per core, several times the memory time.

// Pass 1 of the DMD normaliser: sum_j |x0 - m_ref| over one block of n elements.
template <typename scalar_t, typename opmath_t>
RMMD_ISA_CLONES opmath_t abs_block(const scalar_t* __restrict__ x0, const scalar_t* __restrict__ m_ref, int64_t n) {
  using Io = OpIo<scalar_t>;
  opmath_t acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    acc += std::abs(Io::load(x0, i) - Io::load(m_ref, i));
  }
  return acc;
}

template <typename scalar_t, typename opmath_t>
TaskSums<1> abs_partials(const Layout& L, const scalar_t* x0, const scalar_t* m_ref) {
  return chunked_sums<1>(L, [x0, m_ref](int64_t, int64_t i0, int64_t i1) {
    return std::array<opmath_t, 1>{abs_block<scalar_t, opmath_t>(x0 + i0, m_ref + i0, i1 - i0)};
  });
}

// Pass 2 on one block: g and the four sums (x0 . w_eff d, sum d^2, sum g_R^2, sum e^2) with
// d = m_stu - m_ref, e = x0 - a. HAS_R / HAS_A are compile-time so absent inputs cost nothing in the loop.
template <typename scalar_t, typename opmath_t, bool HAS_R, bool HAS_A>
RMMD_ISA_CLONES std::array<opmath_t, 4> assemble_block(const scalar_t* __restrict__ x0, const scalar_t* __restrict__ m_stu,
                                              const scalar_t* __restrict__ m_ref, const scalar_t* __restrict__ g_r,
                                              const scalar_t* __restrict__ anchor, scalar_t* __restrict__ out,
                                              int64_t n, opmath_t we, opmath_t lam_s, opmath_t reg_s, opmath_t scale) {
  using Io = OpIo<scalar_t>;
  opmath_t s_xd = 0, s_dd = 0, s_rr = 0, s_ee = 0;
#pragma omp simd reduction(+ : s_xd, s_dd, s_rr, s_ee)
  for (int64_t i = 0; i < n; ++i) {
    const opmath_t x = Io::load(x0, i);
    const opmath_t d = Io::load(m_stu, i) - Io::load(m_ref, i);
    const opmath_t g_mm = we * d;
    // Same association as the reference: ((w d) scale - (scale lam) r) + (2 scale lam_reg) e.
    opmath_t g = g_mm * scale;
    s_xd += x * g_mm;
    s_dd += d * d;
    if constexpr (HAS_R) {
      const opmath_t r = Io::load(g_r, i);
      g -= lam_s * r;
      s_rr += r * r;
    }
    if constexpr (HAS_A) {
      const opmath_t e = x - Io::load(anchor, i);
      g += reg_s * e;
      s_ee += e * e;
    }
    Io::store(out, i, g);
  }
  return {s_xd, s_dd, s_rr, s_ee};
}

template <typename scalar_t, typename opmath_t, bool HAS_R, bool HAS_A>
TaskSums<4> assemble(const Layout& L, const scalar_t* x0, const scalar_t* m_stu, const scalar_t* m_ref,
                     const scalar_t* g_r, const scalar_t* anchor, const opmath_t* w_eff, opmath_t lam_s,
                     opmath_t reg_s, opmath_t scale, scalar_t* out) {
  return chunked_sums<4>(L, [=, &L](int64_t t, int64_t i0, int64_t i1) {
    return assemble_block<scalar_t, opmath_t, HAS_R, HAS_A>(
        x0 + i0, m_stu + i0, m_ref + i0, HAS_R ? g_r + i0 : nullptr, HAS_A ? anchor + i0 : nullptr, out + i0,
        i1 - i0, w_eff[L.sample(t)], lam_s, reg_s, scale);
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rmmd_cotangent_cpu_kernel(const at::Tensor& x0_in, const at::Tensor& m_stu_in,
                                                             const at::Tensor& m_ref_in,
                                                             const std::optional<at::Tensor>& g_R,
                                                             const std::optional<at::Tensor>& anchor,
                                                             const at::Tensor& w, double lam, double lam_reg,
                                                             double scale, bool dmd, double dmd_eps) {
  // The kernel indexes flat memory: one copy for strided inputs, none for contiguous ones.
  const at::Tensor x0 = x0_in.contiguous();
  const at::Tensor m_stu = m_stu_in.contiguous();
  const at::Tensor m_ref = m_ref_in.contiguous();
  const bool has_r = g_R.has_value();
  const bool has_a = anchor.has_value();
  const at::Tensor r = has_r ? g_R->contiguous() : at::Tensor();
  const at::Tensor a = has_a ? anchor->contiguous() : at::Tensor();

  const int64_t batch = x0.size(0);
  const int64_t numel = x0.numel();
  const int64_t D = batch > 0 ? numel / batch : 0;
  at::Tensor out = empty_output_like(x0);
  const at::ScalarType stats_dtype = x0.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor stats = at::zeros({batch, 6}, x0.options().dtype(stats_dtype));
  if (batch == 0) {
    return {out, stats};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "rmmd_core::rmmd_cotangent_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* x_ptr = x0.const_data_ptr<scalar_t>();
    const scalar_t* ms_ptr = m_stu.const_data_ptr<scalar_t>();
    const scalar_t* mr_ptr = m_ref.const_data_ptr<scalar_t>();
    const scalar_t* r_ptr = has_r ? r.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* a_ptr = has_a ? a.const_data_ptr<scalar_t>() : nullptr;
    opmath_t* st = stats.mutable_data_ptr<opmath_t>();

    // Per-sample weights, read in opmath (computed in float64 by the caller, method.md Project defaults).
    const at::Tensor w_op = w.to(stats_dtype).contiguous();
    std::vector<opmath_t> w_eff(w_op.const_data_ptr<opmath_t>(), w_op.const_data_ptr<opmath_t>() + batch);
    // Term coefficients are products of doubles rounded once to opmath, like the reference's.
    const opmath_t lam_o = static_cast<opmath_t>(lam * scale);
    const opmath_t two_reg = static_cast<opmath_t>(2.0 * lam_reg * scale);
    const opmath_t scale_o = static_cast<opmath_t>(scale);
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    TaskSums<4> sums(batch, std::array<double, 4>{});  // stays zero when numel == 0
    // Samples go in waves; with the DMD normaliser a wave's x0 and m_ref fit in kWaveBytes, so the
    // assemble pass re-reads them from cache rather than memory (~6 N instead of 8 N bytes moved when a
    // sample is small enough). Sums are per sample in a fixed order: the waves do not change results.
    const int64_t sample_bytes = 2 * D * static_cast<int64_t>(sizeof(scalar_t));
    const int64_t wave = dmd ? std::clamp<int64_t>(kWaveBytes / std::max<int64_t>(1, sample_bytes), 1, batch) : batch;
    for (int64_t b0 = 0; numel > 0 && b0 < batch; b0 += wave) {
      const int64_t nb = std::min(wave, batch - b0);
      const Layout Lw = Layout::make(nb, D);
      const int64_t off = b0 * D;
      const scalar_t* xw = x_ptr + off;
      const scalar_t* mrw = mr_ptr + off;
      if (dmd) {
        const TaskSums<1> abs_sums = per_sample_sums(Lw, abs_partials<scalar_t, opmath_t>(Lw, xw, mrw));
        for (int64_t b = 0; b < nb; ++b) {
          // mabs and the division in opmath, as the reference: w / (mean|x0 - m_ref| + eps)
          const opmath_t mabs = static_cast<opmath_t>(abs_sums[b][0] / static_cast<double>(D));
          w_eff[b0 + b] = w_eff[b0 + b] / (mabs + static_cast<opmath_t>(dmd_eps));
        }
      }
      const scalar_t* msw = ms_ptr + off;
      const scalar_t* rw = has_r ? r_ptr + off : nullptr;
      const scalar_t* aw = has_a ? a_ptr + off : nullptr;
      const opmath_t* ww = w_eff.data() + b0;
      scalar_t* ow = out_ptr + off;
      TaskSums<4> part;
      if (has_r && has_a) {
        part = assemble<scalar_t, opmath_t, true, true>(Lw, xw, msw, mrw, rw, aw, ww, lam_o, two_reg, scale_o, ow);
      } else if (has_r) {
        part = assemble<scalar_t, opmath_t, true, false>(Lw, xw, msw, mrw, rw, aw, ww, lam_o, two_reg, scale_o, ow);
      } else if (has_a) {
        part = assemble<scalar_t, opmath_t, false, true>(Lw, xw, msw, mrw, rw, aw, ww, lam_o, two_reg, scale_o, ow);
      } else {
        part = assemble<scalar_t, opmath_t, false, false>(Lw, xw, msw, mrw, rw, aw, ww, lam_o, two_reg, scale_o, ow);
      }
      const TaskSums<4> wave_sums = per_sample_sums(Lw, part);
      std::copy(wave_sums.begin(), wave_sums.end(), sums.begin() + b0);
    }
    const double inv_d = D > 0 ? 1.0 / static_cast<double>(D) : 0.0;
    for (int64_t b = 0; b < batch; ++b) {
      const std::array<double, 4>& s = sums[b];
      const double we = static_cast<double>(w_eff[b]);
      const double sc = scale;
      st[b * 6 + 0] = static_cast<opmath_t>(s[0] * inv_d);
      st[b * 6 + 1] = static_cast<opmath_t>(has_a ? s[3] * inv_d : 0.0);
      st[b * 6 + 2] = static_cast<opmath_t>(sc * sc * we * we * s[1]);
      st[b * 6 + 3] = static_cast<opmath_t>(has_r ? sc * sc * lam * lam * s[2] : 0.0);
      st[b * 6 + 4] = static_cast<opmath_t>(has_a ? 4.0 * sc * sc * lam_reg * lam_reg * s[3] : 0.0);
      st[b * 6 + 5] = w_eff[b];
    }
  });
  return {out, stats};
}

}  // namespace rmmd
