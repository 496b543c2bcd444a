// Fresh, contiguous output tensors for the CPU kernels, backed by transparent huge pages when large.
//
// Why: a large output (above glibc's mmap threshold, 32 MB at most) comes back from the kernel as fresh
// pages, and the first write to each 4 KiB page faults. Measured on this project's 2-core VM, a 256 MB
// output costs ~230 ms of page faults against ~50 ms to stream the bytes: the faults, not the math, were
// most of every fused op at 64M elements (and ~60 of 107 ms of a one-thread posterior_step at 16M). Advising MADV_HUGEPAGE on the 2 MiB-aligned interior of the
// buffer, before the kernel first touches it, cuts the faults 512-fold (torch's own allocator does the same
// for every allocation when THP_MEM_ALLOC_ENABLE=1 is set before torch starts).
//
// Only the fully covered 2 MiB ranges are advised, so no page outside the tensor is ever backed; smaller
// outputs, non-Linux systems, THP set to "never" and RMMD_CORE_THP=0 leave the allocation as it is.
#pragma once

#include <ATen/core/Tensor.h>

namespace rmmd {

// at::empty(like.sizes()) in like's dtype and device, contiguous; huge pages advised from kThpMinBytes.
at::Tensor empty_output_like(const at::Tensor& like);

// Whether empty_output_like advises huge pages in this process (RMMD_CORE_THP unset or not "0", Linux).
bool thp_outputs_enabled();

}  // namespace rmmd
