// at::ScalarType -> RmmdDType for the CUDA bindings (cuda_ops*.cpp); built only with CUDA torch.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "../cuda/rmmd_types.cuh"

namespace rmmd {

inline RmmdDType to_rmmd_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return RmmdDType::kFloat32;
    case at::kDouble:
      return RmmdDType::kFloat64;
    case at::kHalf:
      return RmmdDType::kFloat16;
    case at::kBFloat16:
      return RmmdDType::kBFloat16;
    default:
      TORCH_INTERNAL_ASSERT(false, "unsupported dtype passed the argument checks: ", t);
  }
}

}  // namespace rmmd
