// ATen CPU kernel of rmmd_core::ema_update, the multi-tensor EMA (method.md §e K9):
//
//   ema[i] <- beta ema[i] + (1 - beta) params[i]     evaluated as lerp(ema, p, w = 1 - beta):
//             e + w (p - e) if |w| < 0.5, else p - (p - e)(1 - w)      (torch.lerp's two-sided form)
//
// All tensors are cut into chunks of at most kChunk elements and one parallel_for runs over the whole
// chunk table, so a model with many small tensors (biases, norms) still fills every thread in one pass.
// Each chunk dispatches on its own (EMA dtype, param dtype) pair. Math in opmath of the EMA (float32;
// float64 for a float64 EMA); params converted on load; one rounding into the EMA.
#include "ema_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "isa_clones.h"
#include "opmath_io.h"
#include "tensor_chunks.h"

namespace rmmd {
namespace {

template <typename ema_t, typename param_t>
RMMD_ISA_CLONES void ema_chunk(ema_t* __restrict__ e, const param_t* __restrict__ p, int64_t begin, int64_t end, double beta) {
  using opmath_t = at::opmath_type<ema_t>;
  const opmath_t w = static_cast<opmath_t>(1.0 - beta);
  if (std::abs(w) < opmath_t(0.5)) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const opmath_t ev = OpIo<ema_t>::load(e, i);
      OpIo<ema_t>::store(e, i, ev + w * (static_cast<opmath_t>(OpIo<param_t>::load(p, i)) - ev));
    }
  } else {
    const opmath_t one_minus_w = opmath_t(1) - w;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const opmath_t ev = OpIo<ema_t>::load(e, i);
      const opmath_t pv = static_cast<opmath_t>(OpIo<param_t>::load(p, i));
      OpIo<ema_t>::store(e, i, pv - (pv - ev) * one_minus_w);
    }
  }
}

}  // namespace

void ema_update_cpu_kernel(at::TensorList ema, at::TensorList params, double beta) {
  const int64_t n = static_cast<int64_t>(ema.size());
  // Flat indexing: strided params are read through one contiguous copy; a strided EMA is updated in a
  // contiguous temporary and copied back below.
  std::vector<at::Tensor> e_work(n), p_work(n);
  for (int64_t i = 0; i < n; ++i) {
    e_work[i] = ema[i].contiguous();
    p_work[i] = params[i].contiguous();
  }
  int64_t grain = 1;
  const std::vector<TensorChunk> chunks =
      tensor_chunks(n, [&](int64_t i) { return e_work[i].numel(); }, kChunk, &grain);
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  at::parallel_for(0, n_chunks, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const TensorChunk& ch = chunks[c];
      const at::Tensor& e = e_work[ch.tensor];
      const at::Tensor& p = p_work[ch.tensor];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.scalar_type(), "rmmd_core::ema_update_cpu", [&] {
        using ema_t = scalar_t;
        ema_t* e_ptr = e.mutable_data_ptr<ema_t>();
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "rmmd_core::ema_update_cpu", [&] {
          ema_chunk<ema_t, scalar_t>(e_ptr, p.const_data_ptr<scalar_t>(), ch.begin, ch.end, beta);
        });
      });
    }
  });
  for (int64_t i = 0; i < n; ++i) {
    if (!e_work[i].is_same(ema[i])) ema[i].copy_(e_work[i]);
  }
}

}  // namespace rmmd
