// rmmd_core::build_info: how this extension was built and which CPU paths it takes on this machine, for
// `python -m rmmd_core.info` (rmmd_core/info.py). Not a kernel: a schema with a catch-all implementation.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>

#include "../cpu/fresh_output.h"
#include "../cpu/isa_clones.h"
#include "../cpu/posterior_step_cpu.h"  // cpu_noise_path
#include "../cpu/randn_simd.h"

namespace rmmd {
namespace {

// "key=value" pairs separated by single spaces; the Python side parses them.
std::string build_info() {
  std::ostringstream out;
#if defined(RMMD_HAVE_AVX2_PATH)
  const bool avx2_path = true;
  const bool cpu_avx2 = simd::cpu_has_avx2_fma();
#else
  const bool avx2_path = false;
  const bool cpu_avx2 = false;
#endif
  // The noise path the CPU kernels take now (RMMD_CORE_CPU_SIMD and the CPU): avx512, avx2 or scalar.
  const std::string noise_path = cpu_noise_path();
#if defined(_OPENMP)
  out << "openmp=" << _OPENMP;
#else
  out << "openmp=0";
#endif
  out << " aten_threads=" << at::get_num_threads();
  out << " avx2_path_compiled=" << avx2_path << " cpu_avx2_fma=" << cpu_avx2
      << " avx2_noise_used=" << (noise_path != "scalar") << " noise_path=" << noise_path;
  // Which clone of the RMMD_ISA_CLONES loops the load-time resolver picks here (isa_clones.h).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(RMMD_NO_ISA_CLONES)
  __builtin_cpu_init();
  const char* level = __builtin_cpu_supports("x86-64-v4")   ? "x86-64-v4"
                      : __builtin_cpu_supports("x86-64-v3") ? "x86-64-v3"
                                                            : "default";
  out << " isa_clones=1 isa_clone_used=" << level;
#else
  out << " isa_clones=0 isa_clone_used=none";
#endif
  out << " thp_outputs=" << thp_outputs_enabled();
#if defined(__clang__)
  out << " compiler=clang-" << __clang_major__ << "." << __clang_minor__;
#elif defined(__GNUC__)
  out << " compiler=gcc-" << __GNUC__ << "." << __GNUC_MINOR__;
#endif
#if defined(NDEBUG)
  out << " build=release";
#else
  out << " build=debug";
#endif
  return out.str();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rmmd_core, m) {
  // Build and CPU-path facts of rmmd_core._C as "key=value" pairs (see rmmd_core/info.py). No tensors.
  m.def("build_info() -> str", &build_info);
}

}  // namespace rmmd
