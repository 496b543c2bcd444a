// (sample, chunk) task layout shared by the CPU kernels with per-sample reductions (K5, K6).
//
// Work is split into tasks of at most kChunk elements that never cross a sample boundary, so both few
// large samples (weather states, B = 1..8) and many small ones spread over all threads; each task
// writes its own partial sums, combined per sample in a fixed order, so results do not depend on the
// thread count.
#pragma once

#include <algorithm>
#include <cstdint>

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

}  // namespace rmmd
