// Argument checks shared by the CPU and CUDA impls of rmmd_core::aux_loss; they mirror the fake kernel
// and the Python validator (rmmd_core/ops/aux_loss.py) and name the offending argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "posterior_step_checks.h"  // is_supported_data_dtype

namespace rmmd {

inline void check_aux_loss_args(const at::Tensor& o, const at::Tensor& x0, const at::Tensor& m_ref,
                                const at::Tensor& w) {
  TORCH_CHECK(o.dim() >= 1, "rmmd_core::aux_loss: o must have a leading batch dimension, got a 0-d tensor");
  TORCH_CHECK(is_supported_data_dtype(o.scalar_type()),
              "rmmd_core::aux_loss: o must be float32, float64, float16 or bfloat16, got ", o.scalar_type());
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{x0, "x0"}, {m_ref, "m_ref"}}) {
    TORCH_CHECK(t.sizes() == o.sizes(), "rmmd_core::aux_loss: ", name, " has shape ", t.sizes(), " but o has shape ",
                o.sizes());
    TORCH_CHECK(t.scalar_type() == o.scalar_type(), "rmmd_core::aux_loss: ", name, " has dtype ", t.scalar_type(),
                " but o has dtype ", o.scalar_type());
    TORCH_CHECK(t.device() == o.device(), "rmmd_core::aux_loss: ", name, " is on ", t.device(), " but o is on ",
                o.device());
  }
  TORCH_CHECK(w.dim() == 1 && w.size(0) == o.size(0), "rmmd_core::aux_loss: w must have shape (B,) = (", o.size(0),
              ",), got ", w.sizes());
  TORCH_CHECK(at::isFloatingType(w.scalar_type()), "rmmd_core::aux_loss: w must be a floating tensor, got ",
              w.scalar_type());
  TORCH_CHECK(w.device() == o.device(), "rmmd_core::aux_loss: w is on ", w.device(), " but o is on ", o.device());
}

}  // namespace rmmd
