#include "fresh_output.h"

#include <ATen/ops/empty.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rmmd {
namespace {

constexpr std::uintptr_t kHugePage = std::uintptr_t{2} << 20;
// Below this an output is either reused heap memory or a few faults: not worth a syscall.
constexpr std::size_t kThpMinBytes = std::size_t{4} << 20;

void advise_huge_pages(void* data, std::size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto begin = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const std::uintptr_t last = (begin + nbytes) & ~(kHugePage - 1);
  if (last > first) {
    // Best effort: EINVAL (THP compiled out) or a "never" policy just leaves 4 KiB pages.
    (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#else
  (void)data;
  (void)nbytes;
#endif
}

}  // namespace

bool thp_outputs_enabled() {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* env = std::getenv("RMMD_CORE_THP");
    return !(env != nullptr && std::strcmp(env, "0") == 0);
  }();
  return enabled;
#else
  return false;
#endif
}

at::Tensor empty_output_like(const at::Tensor& like) {
  at::Tensor out = at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
  const std::size_t nbytes = static_cast<std::size_t>(out.nbytes());
  if (out.device().is_cpu() && nbytes >= kThpMinBytes && thp_outputs_enabled()) {
    advise_huge_pages(out.data_ptr(), nbytes);
  }
  return out;
}

}  // namespace rmmd
