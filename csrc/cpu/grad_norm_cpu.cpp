// ATen CPU kernels of the multi-tensor gradient-clipping ops (rmmd_core::grad_norm, rmmd_core::grad_scale):
//
//   grad_norm:    ||g|| = sqrt(sum_i sum_j g_i[j]^2)        squares summed in double
//   grad_scale_:  g_i[j] <- g_i[j] * coef                   float math (double for double), one rounding
//
// Both cut every tensor into chunks of at most kChunk elements and run one parallel_for over the whole
// chunk table (as ema_cpu.cpp does), so a model with many small tensors still costs one pass. For the norm
// each chunk writes its own double partial and the partials are added in chunk order afterwards, and a
// chunk's own sum uses kLanes fixed accumulators (element j goes to lane j % kLanes), so the result does
// not depend on the thread count or on how parallel_for splits the table.
#include "grad_norm_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "isa_clones.h"
#include "opmath_io.h"
#include "tensor_chunks.h"

namespace rmmd {
namespace {

// 8 doubles: one AVX-512 register, two AVX2 ones; the order of the additions is the same on every ISA.
constexpr int64_t kLanes = 8;

template <typename scalar_t>
RMMD_ISA_CLONES double sumsq_chunk(const scalar_t* __restrict__ p, int64_t begin, int64_t end) {
  double acc[kLanes] = {};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
#pragma omp simd
    for (int64_t k = 0; k < kLanes; ++k) {
      const double v = static_cast<double>(OpIo<scalar_t>::load(p, i + k));
      acc[k] += v * v;
    }
  }
  for (int64_t k = 0; i < end; ++i, ++k) {
    const double v = static_cast<double>(OpIo<scalar_t>::load(p, i));
    acc[k] += v * v;
  }
  double total = 0.0;
  for (int64_t k = 0; k < kLanes; ++k) total += acc[k];
  return total;
}

template <typename scalar_t>
RMMD_ISA_CLONES void scale_chunk(scalar_t* __restrict__ p, int64_t begin, int64_t end, double coef) {
  using opmath_t = at::opmath_type<scalar_t>;
  // coef in the tensor's math type first (as torch's mul reads a CPU scalar), then one rounding per element
  const opmath_t c = static_cast<opmath_t>(coef);
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) OpIo<scalar_t>::store(p, i, OpIo<scalar_t>::load(p, i) * c);
}

// Elements per parallel_for task at least: both ops stream at ~0.3 ns per fp32 element per core, so a task
// is >= ~40 us of work, well above waking the thread pool. Measured on 2 busy cores with 65K elements in
// 100 tensors: one grain of kChunk (4 tasks) cost 0.4-4 ms per call in the pool's barrier, inline 20 us
// (torch._foreach_mul_ 45 us, get_total_norm 230 us); a small model's gradients thus run inline.
constexpr int64_t kTaskElements = 8 * kChunk;

// The chunk table of `work` and a parallel_for grain giving each task >= ~kTaskElements elements on average.
std::vector<TensorChunk> chunk_table(const std::vector<at::Tensor>& work, int64_t* grain) {
  return tensor_chunks(static_cast<int64_t>(work.size()), [&](int64_t i) { return work[i].numel(); }, kTaskElements,
                       grain);
}

}  // namespace

at::Tensor grad_norm_cpu_kernel(at::TensorList tensors) {
  bool any_double = false;
  std::vector<at::Tensor> work(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    work[i] = tensors[i].contiguous();  // strided views are read through one contiguous copy
    any_double |= tensors[i].scalar_type() == at::kDouble;
  }
  int64_t grain = 1;
  const std::vector<TensorChunk> chunks = chunk_table(work, &grain);
  std::vector<double> partial(chunks.size(), 0.0);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const TensorChunk& ch = chunks[c];
      const at::Tensor& t = work[ch.tensor];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "rmmd_core::grad_norm_cpu", [&] {
        partial[c] = sumsq_chunk<scalar_t>(t.const_data_ptr<scalar_t>(), ch.begin, ch.end);
      });
    }
  });
  double total = 0.0;
  for (const double v : partial) total += v;  // chunk order: independent of the thread count
  const double norm = std::sqrt(total);        // inf stays inf, NaN stays NaN
  at::Tensor out = at::empty({}, at::TensorOptions().dtype(any_double ? at::kDouble : at::kFloat));
  if (any_double) {
    *out.mutable_data_ptr<double>() = norm;
  } else {
    *out.mutable_data_ptr<float>() = static_cast<float>(norm);
  }
  return out;
}

void grad_scale_cpu_kernel(at::TensorList tensors, double coef) {
  std::vector<at::Tensor> work(tensors.size());
  // a strided tensor is scaled in a contiguous temporary and copied back below
  for (size_t i = 0; i < tensors.size(); ++i) work[i] = tensors[i].contiguous();
  int64_t grain = 1;
  const std::vector<TensorChunk> chunks = chunk_table(work, &grain);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const TensorChunk& ch = chunks[c];
      const at::Tensor& t = work[ch.tensor];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "rmmd_core::grad_scale_cpu", [&] {
        scale_chunk<scalar_t>(t.mutable_data_ptr<scalar_t>(), ch.begin, ch.end, coef);
      });
    }
  });
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!work[i].is_same(tensors[i])) tensors[i].copy_(work[i]);
  }
}

}  // namespace rmmd
