// Chunk tables of the multi-tensor CPU kernels (ema_update, grad_norm / grad_scale, adam_update).
//
// Every tensor of a list is cut into chunks of at most kChunk elements and one parallel_for runs over the
// whole table, so a model with many small tensors (biases, norms) still fills every thread in one pass. Many
// small tensors make many small chunks: the grain groups them so each task gets >= ~task_elements elements on
// average (a small model's list then runs inline instead of waking the thread pool). Element-wise kernels
// give the same bits for any grain; reductions add their per-chunk partials in table order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "sample_chunks.h"  // kChunk

namespace rmmd {

struct TensorChunk {
  int64_t tensor, begin, end;  // elements [begin, end) of tensor `tensor`
};

// The chunks of tensors 0..n-1 (numel_of(i) elements each), in order, and the parallel_for grain (>= 1).
template <typename NumelOf>
std::vector<TensorChunk> tensor_chunks(int64_t n, NumelOf&& numel_of, int64_t task_elements, int64_t* grain) {
  std::vector<TensorChunk> chunks;
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t numel = numel_of(i);
    total += numel;
    for (int64_t b = 0; b < numel; b += kChunk) chunks.push_back({i, b, std::min(numel, b + kChunk)});
  }
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  *grain = total > 0 ? std::max<int64_t>(1, (task_elements * n_chunks + total - 1) / total) : 1;
  return chunks;
}

}  // namespace rmmd
