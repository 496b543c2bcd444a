// (sample, chunk) task layout shared by the CPU kernels with per-sample reductions (K5, K6).
//
// Work is split into tasks of at most kChunk elements that never cross a sample boundary, so both few
// large samples (weather states, B = 1..8) and many small ones spread over all threads; each task
// writes its own partial sums, combined per sample in a fixed order, so results do not depend on the
// thread count.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace rmmd {

// 16K elements x 3-5 streams is 200-300 KB of fp32 traffic per task: well above parallel_for's overhead.
constexpr int64_t kChunk = 16384;
// Sums of kInner products stay in opmath registers; their relative error is ~kInner * 2^-24 worst case.
constexpr int64_t kInner = 1024;

struct SampleChunks {
  int64_t batch, per_sample, chunks;  // B, D, chunks per sample

  static SampleChunks make(int64_t batch, int64_t per_sample) {
    return SampleChunks{batch, per_sample, std::max<int64_t>(1, (per_sample + kChunk - 1) / kChunk)};
  }
  int64_t tasks() const { return batch * chunks; }
  int64_t sample(int64_t task) const { return task / chunks; }
  int64_t begin(int64_t task) const { return (task / chunks) * per_sample + (task % chunks) * kChunk; }
  int64_t end(int64_t task) const { return std::min((task / chunks + 1) * per_sample, begin(task) + kChunk); }
};

// K partial sums per (sample, chunk) task, in double.
template <std::size_t K>
using TaskSums = std::vector<std::array<double, K>>;

// The reduction skeleton shared by the kernels with per-sample sums: in parallel over tasks, calls
// `block(task, i0, i1)` on each kInner-element block [i0, i1) of the task, in order; `block` writes its
// element-wise outputs and returns the K sums of the block in opmath (its loop vectorises with
// `omp simd reduction`), which are added in double into the task's partials. Returns tasks() partials.
template <std::size_t K, typename Block>
TaskSums<K> chunked_sums(const SampleChunks& L, Block&& block) {
  TaskSums<K> partial(L.tasks(), std::array<double, K>{});
  // At least ~kChunk elements per thread: with small samples (2-D toys, D = 2) a grain of one task
  // would wake the whole pool for a few bytes each, which costs 20-50 ms on a loaded machine; inputs
  // under kChunk elements now run inline on the calling thread.
  const int64_t grain = std::max<int64_t>(1, kChunk / std::clamp<int64_t>(L.per_sample, 1, kChunk));
  at::parallel_for(0, L.tasks(), grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      std::array<double, K> total{};
      for (int64_t i0 = L.begin(t); i0 < L.end(t); i0 += kInner) {
        const auto sums = block(t, i0, std::min(L.end(t), i0 + kInner));
        for (std::size_t k = 0; k < K; ++k) total[k] += static_cast<double>(sums[k]);
      }
      partial[t] = total;
    }
  });
  return partial;
}

// Per-sample totals: each sample's chunk partials summed in chunk order, so results do not depend on
// the thread count. Returns batch entries.
template <std::size_t K>
TaskSums<K> per_sample_sums(const SampleChunks& L, const TaskSums<K>& partial) {
  TaskSums<K> out(L.batch, std::array<double, K>{});
  for (int64_t b = 0; b < L.batch; ++b) {
    for (int64_t c = 0; c < L.chunks; ++c) {
      for (std::size_t k = 0; k < K; ++k) out[b][k] += partial[b * L.chunks + c][k];
    }
  }
  return out;
}

}  // namespace rmmd
