// Multi-tensor-apply launch tables, shared by ema_update.cu and grad_norm.cu. Torch-free.
//
// The host cuts every tensor into `chunk`-element chunks and packs them into a table passed by value in the
// kernel's parameter space (one block per chunk): a model with thousands of small tensors costs a handful
// of launches instead of one per tensor. A tensor longer than what a table holds continues in the next
// one (it may appear in two consecutive tables).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace rmmd {

// Walks the chunks of tensors 0..n_tensors-1 in order and fills `table`, whose `int32_t tensor[]` (slot of
// each chunk) and `int32_t chunk[]` (chunk index inside its tensor) hold up to max_chunks entries:
// `slot(s, t)` stores tensor t's pointers and length in slot s (the op's own per-slot arrays, up to
// max_slots). A full table (max_slots tensors or max_chunks chunks) and the last one are run by
// `launch(n_chunks)`; a tensor continuing past a launch is re-slotted in slot 0. `numel_of(t)` gives
// tensor t's length (empty tensors are skipped). Returns the first launch error, or
// cudaErrorInvalidValue for a tensor of more than 2^31 - 1 chunks.
template <typename Table, typename NumelOf, typename Slot, typename Launch>
cudaError_t pack_chunk_tables(Table& table, int64_t n_tensors, int64_t chunk, int max_slots, int max_chunks,
                              NumelOf&& numel_of, Slot&& slot, Launch&& launch) {
  int n_slots = 0, n_chunks = 0;
  auto flush = [&]() -> cudaError_t {
    if (n_chunks == 0) return cudaSuccess;
    const cudaError_t err = launch(n_chunks);
    n_chunks = 0;
    return err;
  };
  for (int64_t t = 0; t < n_tensors; ++t) {
    const int64_t numel = numel_of(t);
    if (numel <= 0) continue;
    const int64_t chunks = (numel + chunk - 1) / chunk;
    if (chunks > 0x7fffffff) return cudaErrorInvalidValue;
    bool slotted = false;
    for (int64_t c = 0; c < chunks; ++c) {
      if (!slotted) {
        if (n_slots == max_slots) {  // table full of tensors: launch, keep nothing
          const cudaError_t err = flush();
          if (err != cudaSuccess) return err;
          n_slots = 0;
        }
        slot(n_slots, t);
        ++n_slots;
        slotted = true;
      }
      table.tensor[n_chunks] = n_slots - 1;
      table.chunk[n_chunks] = static_cast<int32_t>(c);
      ++n_chunks;
      if (n_chunks == max_chunks) {  // table full of chunks: launch; the current tensor keeps slot 0
        const cudaError_t err = flush();
        if (err != cudaSuccess) return err;
        slot(0, t);
        n_slots = 1;
      }
    }
  }
  return flush();
}

}  // namespace rmmd
