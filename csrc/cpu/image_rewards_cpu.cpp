// ATen CPU kernels of the closed-form image rewards with their gradients (method.md §e K4a, K4b):
//
//   K4a  d_c = x_c - (0.299 x_0 + 0.587 x_1 + 0.114 x_2)           value = -(1/D) sum d^2
//        grad_k = -(2/D) (d_k - w_k sum_c d_c)                      (D = 3 H W)
//   K4b  r = x - P x, P = mean of the 4 neighbours, replicate borders   value = -(1/D) sum r^2
//        grad = -(2/D) (r - P r)                                    (P is symmetric: its own adjoint)
//
// One pass over x each, one write of grad. K4a tasks are (sample, pixel chunk) pieces; K4b tasks are
// (plane, row band) pieces that recompute the residual on one halo row each side of the band, so every
// task is independent. Per-task sums are combined in a fixed order (thread-count independent).
// Numerics: opmath (float32; float64 for double data) math and per-kInner-block sums, blocks combined in
// double; grad rounded once. The association of each sum follows rmmd_core/ops/reward_reference.py.
#include "image_rewards_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "fresh_output.h"
#include "isa_clones.h"
#include "opmath_io.h"
#include "sample_chunks.h"

namespace rmmd {
namespace {

constexpr double kLuma[3] = {0.299, 0.587, 0.114};  // ITU-R BT.601, as LUMA in reward_reference.py

// One block of n pixels of one sample: writes the three gradient planes, returns sum_c (x_c - gray)^2.
// A free function with restrict pointers and by-value scalars so that GCC vectorises it (the same loop
// inline in a by-reference lambda reloads the captured weights every pixel and stays scalar).
template <typename scalar_t, typename opmath_t>
RMMD_ISA_CLONES opmath_t grayscale_block(const scalar_t* __restrict__ xr, const scalar_t* __restrict__ xg,
                                const scalar_t* __restrict__ xb, scalar_t* __restrict__ gr,
                                scalar_t* __restrict__ gg, scalar_t* __restrict__ gb, int64_t n, opmath_t w0,
                                opmath_t w1, opmath_t w2, opmath_t coef) {
  using Io = OpIo<scalar_t>;
  opmath_t acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t p = 0; p < n; ++p) {
    const opmath_t a = Io::load(xr, p), c = Io::load(xg, p), e = Io::load(xb, p);
    const opmath_t gray = a * w0 + c * w1 + e * w2;
    const opmath_t d0 = a - gray, d1 = c - gray, d2 = e - gray;
    const opmath_t s = d0 + d1 + d2;
    acc += d0 * d0 + d1 * d1 + d2 * d2;
    Io::store(gr, p, coef * (d0 - w0 * s));
    Io::store(gg, p, coef * (d1 - w1 * s));
    Io::store(gb, p, coef * (d2 - w2 * s));
  }
  return acc;
}

template <typename scalar_t, typename opmath_t>
void grayscale_tasks(const SampleChunks& L, int64_t hw, const scalar_t* x, scalar_t* g, opmath_t coef,
                     std::vector<double>& partial) {
  const opmath_t w0 = static_cast<opmath_t>(kLuma[0]), w1 = static_cast<opmath_t>(kLuma[1]),
                 w2 = static_cast<opmath_t>(kLuma[2]);
  // Small samples make small tasks: group them so each thread gets >= ~kChunk pixels (tiny inputs run
  // inline instead of waking the thread pool, which costs more than the work on a busy machine).
  const int64_t grain = std::max<int64_t>(1, kChunk / std::min(hw, kChunk));
  at::parallel_for(0, L.tasks(), grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = L.sample(t);
      const int64_t sample_base = b * 3 * hw;
      const int64_t p_begin = L.begin(t) - b * hw, p_end = L.end(t) - b * hw;  // pixel range in the sample
      const scalar_t* xr = x + sample_base;
      scalar_t* gr = g + sample_base;
      double total = 0.0;
      for (int64_t i0 = p_begin; i0 < p_end; i0 += kInner) {
        const int64_t n = std::min(p_end, i0 + kInner) - i0;
        total += static_cast<double>(grayscale_block<scalar_t, opmath_t>(
            xr + i0, xr + hw + i0, xr + 2 * hw + i0, gr + i0, gr + hw + i0, gr + 2 * hw + i0, n, w0, w1, w2, coef));
      }
      partial[t] = total;
    }
  });
}

// out[j] = mid[j] - P(mid)[j] on one row, with `up` / `down` the (clamped) neighbouring rows:
// P = ((up + down) + left) + right) / 4 in the reference's order; left / right clamp at the row ends.
template <typename in_t, typename opmath_t>
RMMD_ISA_CLONES void residual_row(const in_t* __restrict__ up, const in_t* __restrict__ mid, const in_t* __restrict__ down,
                         int64_t width, opmath_t* __restrict__ out) {
  auto at = [](const in_t* row, int64_t j) { return static_cast<opmath_t>(OpIo<in_t>::load(row, j)); };
  const opmath_t quarter = static_cast<opmath_t>(0.25);
  const int64_t last = width - 1;
  out[0] = at(mid, 0) - quarter * (((at(up, 0) + at(down, 0)) + at(mid, 0)) + at(mid, std::min<int64_t>(1, last)));
  if (width == 1) return;
#pragma omp simd
  for (int64_t j = 1; j < last; ++j) {
    out[j] = at(mid, j) - quarter * (((at(up, j) + at(down, j)) + at(mid, j - 1)) + at(mid, j + 1));
  }
  out[last] = at(mid, last) - quarter * (((at(up, last) + at(down, last)) + at(mid, last - 1)) + at(mid, last));
}

// One block of a gradient row: g = coef * grad_row, returns sum r^2 of the residual row (free function
// with restrict pointers so it vectorises; see grayscale_block).
template <typename scalar_t, typename opmath_t>
RMMD_ISA_CLONES opmath_t scaled_copy_sumsq(const opmath_t* __restrict__ r, const opmath_t* __restrict__ grad_row,
                                  scalar_t* __restrict__ g, int64_t n, opmath_t coef) {
  opmath_t acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) {
    acc += r[j] * r[j];
    OpIo<scalar_t>::store(g, j, coef * grad_row[j]);
  }
  return acc;
}

template <typename scalar_t, typename opmath_t>
void laplacian_tasks(int64_t planes, int64_t height, int64_t width, int64_t rows_per_task, const scalar_t* x,
                     scalar_t* g, opmath_t coef, std::vector<double>& partial) {
  const int64_t bands = (height + rows_per_task - 1) / rows_per_task;
  const int64_t grain = std::max<int64_t>(1, kChunk / (rows_per_task * width));  // >= ~kChunk elements per thread
  at::parallel_for(0, planes * bands, grain, [&](int64_t t0, int64_t t1) {
    // Residual rows [lo, hi] of the band plus one halo row each side (clamped), and one grad row.
    std::vector<opmath_t> r((rows_per_task + 2) * width);
    std::vector<opmath_t> grad_row(width);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t plane = t / bands, band = t % bands;
      const scalar_t* xp = x + plane * height * width;
      scalar_t* gp = g + plane * height * width;
      const int64_t row0 = band * rows_per_task, row1 = std::min(height, row0 + rows_per_task);
      const int64_t lo = std::max<int64_t>(row0 - 1, 0), hi = std::min(row1, height - 1);  // residual rows needed
      auto xrow = [&](int64_t i) { return xp + std::clamp<int64_t>(i, 0, height - 1) * width; };
      for (int64_t i = lo; i <= hi; ++i) {
        residual_row<scalar_t, opmath_t>(xrow(i - 1), xrow(i), xrow(i + 1), width, r.data() + (i - lo) * width);
      }
      auto rrow = [&](int64_t i) { return r.data() + (std::clamp<int64_t>(i, 0, height - 1) - lo) * width; };
      double total = 0.0;
      for (int64_t i = row0; i < row1; ++i) {
        const opmath_t* ri = rrow(i);
        residual_row<opmath_t, opmath_t>(rrow(i - 1), ri, rrow(i + 1), width, grad_row.data());
        scalar_t* gi = gp + i * width;
        for (int64_t j0 = 0; j0 < width; j0 += kInner) {
          const int64_t n = std::min(width, j0 + kInner) - j0;
          total += static_cast<double>(
              scaled_copy_sumsq<scalar_t, opmath_t>(ri + j0, grad_row.data() + j0, gi + j0, n, coef));
        }
      }
      partial[t] = total;
    }
  });
}

// value[b] = -(sum over the sample's tasks) / D, the sum rounded to opmath first (as the reference).
template <typename opmath_t>
void finish_values(const std::vector<double>& partial, int64_t batch, int64_t tasks_per_sample, int64_t D,
                   opmath_t* value) {
  for (int64_t b = 0; b < batch; ++b) {
    double s = 0.0;
    for (int64_t k = 0; k < tasks_per_sample; ++k) s += partial[b * tasks_per_sample + k];
    value[b] = -static_cast<opmath_t>(s) / static_cast<opmath_t>(D);
  }
}

struct Outputs {
  at::Tensor x, value, grad;
  bool empty;
};

Outputs make_outputs(const at::Tensor& x_in) {
  const at::Tensor x = x_in.contiguous();  // flat indexing: one copy for strided inputs
  const at::ScalarType opmath_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad = empty_output_like(x);
  at::Tensor value = at::zeros({x.size(0)}, x.options().dtype(opmath_dtype));
  return {x, value, grad, x.numel() == 0};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> grayscale_reward_cpu_kernel(const at::Tensor& x0) {
  Outputs out = make_outputs(x0);
  if (out.empty) return {out.value, out.grad};
  const int64_t batch = out.x.size(0), hw = out.x.size(2) * out.x.size(3), D = 3 * hw;
  const SampleChunks L = SampleChunks::make(batch, hw);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.x.scalar_type(), "rmmd_core::grayscale_reward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    std::vector<double> partial(L.tasks());
    const opmath_t coef = static_cast<opmath_t>(-2.0 / static_cast<double>(D));
    grayscale_tasks<scalar_t, opmath_t>(L, hw, out.x.const_data_ptr<scalar_t>(), out.grad.mutable_data_ptr<scalar_t>(),
                                        coef, partial);
    finish_values<opmath_t>(partial, batch, L.chunks, D, out.value.mutable_data_ptr<opmath_t>());
  });
  return {out.value, out.grad};
}

std::tuple<at::Tensor, at::Tensor> laplacian_reward_cpu_kernel(const at::Tensor& x0) {
  Outputs out = make_outputs(x0);
  if (out.empty) return {out.value, out.grad};
  const int64_t batch = out.x.size(0), channels = out.x.size(1), height = out.x.size(2), width = out.x.size(3);
  const int64_t D = channels * height * width;
  // Bands of ~kChunk elements (at least one row) so that small and large planes both spread over threads.
  const int64_t rows_per_task = std::max<int64_t>(1, std::min(height, kChunk / width));
  const int64_t bands = (height + rows_per_task - 1) / rows_per_task;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.x.scalar_type(), "rmmd_core::laplacian_reward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    std::vector<double> partial(batch * channels * bands);
    const opmath_t coef = static_cast<opmath_t>(-2.0 / static_cast<double>(D));
    laplacian_tasks<scalar_t, opmath_t>(batch * channels, height, width, rows_per_task,
                                        out.x.const_data_ptr<scalar_t>(), out.grad.mutable_data_ptr<scalar_t>(), coef,
                                        partial);
    finish_values<opmath_t>(partial, batch, channels * bands, D, out.value.mutable_data_ptr<opmath_t>());
  });
  return {out.value, out.grad};
}

}  // namespace rmmd
