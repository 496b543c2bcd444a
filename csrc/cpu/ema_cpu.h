// CPU kernel of rmmd_core::ema_update, the multi-tensor EMA (method.md §e K9). Arguments are validated by
// the caller (csrc/bindings/ema_registration.cpp); math and numerics in ema_cpu.cpp.
#pragma once

#include <ATen/core/Tensor.h>

namespace rmmd {

// In place: ema[i] <- lerp(ema[i], params[i], 1 - beta) for every i. CPU tensors, matching shapes.
void ema_update_cpu_kernel(at::TensorList ema, at::TensorList params, double beta);

}  // namespace rmmd
