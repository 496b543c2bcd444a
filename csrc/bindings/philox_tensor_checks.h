// Device seeds of the *_dev ops (rmmd_core::posterior_step_dev, renoise_dev, denoise_step_dev): seed and offset
// arrive as one-element int64 tensors on the data's device instead of int launch arguments, so a CUDA graph that
// captured the launch reads whatever the caller copied into them before each replay. They mirror
// rmmd_core/ops/_checks.py (philox_key, fake_philox).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace rmmd {

// dtype int64, exactly one element, on `ref`'s device. The value is not checked here (on CUDA that would
// be a device read; the CPU impls check it after read_cpu_philox_value).
inline void check_philox_tensor(const char* op, const at::Tensor& t, const char* name, const at::Tensor& ref,
                                const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == at::kLong, "rmmd_core::", op, ": ", name, " must be an int64 tensor, got ",
              t.scalar_type());
  TORCH_CHECK(t.numel() == 1, "rmmd_core::", op, ": ", name, " must have exactly one element, got shape ",
              t.sizes());
  TORCH_CHECK(t.device() == ref.device(), "rmmd_core::", op, ": ", name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device());
}

// The value of a checked CPU seed / offset tensor (numel == 1, so data_ptr points at it whatever its strides).
inline int64_t read_cpu_philox_value(const at::Tensor& t) {
  return *t.const_data_ptr<int64_t>();
}

// The device address of a checked CUDA seed / offset tensor, for the torch-free launch params.
inline const int64_t* philox_value_ptr(const at::Tensor& t) {
  return t.const_data_ptr<int64_t>();
}

}  // namespace rmmd
