// Types shared by the torch-free CUDA launch interfaces (csrc/cuda/*.cuh) and their bindings.
// Global names with an rmmd_ / Rmmd prefix rather than a namespace: these headers are the C-like
// boundary between the torch-free kernels and the bindings.
#pragma once

#include <stdint.h>

// Element type of the data tensors of an op.
enum class RmmdDType : int32_t {
  kFloat32 = 0,
  kFloat64 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
};
