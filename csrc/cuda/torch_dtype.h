// at::ScalarType -> dspark::DType for the torch-free kernels (host only). The argument checks
// admit float32, bfloat16 and float16; any other dtype raises a RuntimeError naming the op and
// the argument here rather than running the float32 kernel on the wrong bytes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include "dspark/checks.h"
#include "dspark/dtype.h"

namespace dspark::cuda {

inline DType to_dtype(const at::Tensor& t, const char* op, const char* arg) {
  switch (t.scalar_type()) {
    case c10::ScalarType::Float:
      return DType::kFloat32;
    case c10::ScalarType::BFloat16:
      return DType::kBFloat16;
    case c10::ScalarType::Half:
      return DType::kFloat16;
    default:
      DSPARK_CHECK(false, op, arg, "has dtype ", t.scalar_type(),
                   ", which has no CUDA kernel (float32, bfloat16 or float16)");
      __builtin_unreachable();  // DSPARK_CHECK(false, ...) throws
  }
}

}  // namespace dspark::cuda
