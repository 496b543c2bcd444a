// CPU kernel of rmmd_core::adam_update, the fused clip scale + Adam + EMA over lists of tensors. Arguments
// are validated by the caller (csrc/bindings/adam_update_registration.cpp); math in adam_update_cpu.cpp and
// rmmd_core/ops/adam_reference.py.
#pragma once

#include <ATen/core/Tensor.h>

#include "../bindings/adam_update_checks.h"  // AdamScalars

namespace rmmd {

// In place for every i (ema empty: no EMA): see adam_update_cpu.cpp. CPU tensors, validated lists.
void adam_update_cpu_kernel(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                            at::TensorList exp_avg_sqs, at::TensorList ema, const AdamScalars& s);

}  // namespace rmmd
