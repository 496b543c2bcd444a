// ATen CPU kernel of rmmd_core::aux_loss, the auxiliary loss with its output gradient (method.md §c.6
// step 8, §e K6):
//
//   loss[b] = w[b] (1/D) sum_j ((x0 - o)^2 + (m_ref - o)^2)[b, j]
//   grad    = (2 w[b] / (B D)) ((o - x0) + (o - m_ref))        = d(mean_b loss[b]) / do
//
// One pass: three reads, one write, one per-sample sum. Tasks are (sample, chunk) pieces
// (sample_chunks.h); per-task sums combined in a fixed order. Numerics: opmath (float32; float64 for
// double data) products and per-kInner-block sums, blocks combined in double; grad rounded once.
#include "aux_loss_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <array>

#include "fresh_output.h"
#include "isa_clones.h"
#include "opmath_io.h"
#include "sample_chunks.h"

namespace rmmd {
namespace {

// One block of n elements: writes the gradient, returns sum (o - x0)^2 + (o - m_ref)^2. A free function
// with restrict pointers and by-value scalars so GCC vectorises it (inline in a by-reference lambda it
// reloaded the captures every element and stayed scalar). Outside AT_DISPATCH because a `#pragma` cannot
// appear inside a macro argument.
template <typename scalar_t, typename opmath_t>
RMMD_ISA_CLONES opmath_t aux_loss_block(const scalar_t* __restrict__ o, const scalar_t* __restrict__ x0,
                               const scalar_t* __restrict__ m_ref, scalar_t* __restrict__ g, int64_t n,
                               opmath_t coef) {
  using Io = OpIo<scalar_t>;
  opmath_t acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const opmath_t ov = Io::load(o, i);
    const opmath_t e_x = ov - Io::load(x0, i);
    const opmath_t e_m = ov - Io::load(m_ref, i);
    acc += e_x * e_x + e_m * e_m;
    Io::store(g, i, coef * (e_x + e_m));
  }
  return acc;
}

template <typename scalar_t, typename opmath_t>
TaskSums<1> aux_loss_tasks(const SampleChunks& L, const scalar_t* o_ptr, const scalar_t* x_ptr, const scalar_t* m_ptr,
                           const opmath_t* w_ptr, double two_over_bd, scalar_t* g_ptr) {
  return chunked_sums<1>(L, [=, &L](int64_t t, int64_t i0, int64_t i1) {
    const opmath_t coef = static_cast<opmath_t>(two_over_bd) * w_ptr[L.sample(t)];
    return std::array<opmath_t, 1>{
        aux_loss_block<scalar_t, opmath_t>(o_ptr + i0, x_ptr + i0, m_ptr + i0, g_ptr + i0, i1 - i0, coef)};
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> aux_loss_cpu_kernel(const at::Tensor& o_in, const at::Tensor& x0_in,
                                                       const at::Tensor& m_ref_in, const at::Tensor& w) {
  // Flat indexing: one copy for strided inputs, none for contiguous ones.
  const at::Tensor o = o_in.contiguous();
  const at::Tensor x0 = x0_in.contiguous();
  const at::Tensor m_ref = m_ref_in.contiguous();
  const int64_t batch = o.size(0);
  const int64_t D = batch > 0 ? o.numel() / batch : 0;
  const at::ScalarType opmath_dtype = o.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad = empty_output_like(o);
  at::Tensor loss = at::zeros({batch}, o.options().dtype(opmath_dtype));
  if (batch == 0 || D == 0) {
    return {loss, grad};
  }
  const SampleChunks L = SampleChunks::make(batch, D);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.scalar_type(), "rmmd_core::aux_loss_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* o_ptr = o.const_data_ptr<scalar_t>();
    const scalar_t* x_ptr = x0.const_data_ptr<scalar_t>();
    const scalar_t* m_ptr = m_ref.const_data_ptr<scalar_t>();
    scalar_t* g_ptr = grad.mutable_data_ptr<scalar_t>();
    const at::Tensor w_op = w.to(opmath_dtype).contiguous();
    const opmath_t* w_ptr = w_op.const_data_ptr<opmath_t>();
    // 2 / (B D) in double, times w[b] in opmath: the reference's association.
    const double two_over_bd = 2.0 / (static_cast<double>(batch) * static_cast<double>(D));
    const TaskSums<1> sums =
        per_sample_sums(L, aux_loss_tasks<scalar_t, opmath_t>(L, o_ptr, x_ptr, m_ptr, w_ptr, two_over_bd, g_ptr));
    opmath_t* loss_ptr = loss.mutable_data_ptr<opmath_t>();
    for (int64_t b = 0; b < batch; ++b) {
      // w * (sum / D) with the sum rounded to opmath first, as the reference's w * sum / D.
      loss_ptr[b] = w_ptr[b] * static_cast<opmath_t>(sums[b][0]) / static_cast<opmath_t>(D);
    }
  });
  return {loss, grad};
}

}  // namespace rmmd
