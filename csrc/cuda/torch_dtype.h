// at::ScalarType -> dspark::DType for the torch-free kernels (host only; callers have
// already checked that the dtype is float32, bfloat16 or float16).
#pragma once

#include <c10/core/ScalarType.h>

#include "dspark/dtype.h"

namespace dspark::cuda {

inline DType to_dtype(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::BFloat16:
      return DType::kBFloat16;
    case c10::ScalarType::Half:
      return DType::kFloat16;
    default:
      return DType::kFloat32;
  }
}

}  // namespace dspark::cuda
