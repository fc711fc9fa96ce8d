// The dtype dispatch of the CPU kernels: float32, bfloat16 and float16, the storage types the
// argument checks admit, and nothing else. Unlike AT_DISPATCH_FLOATING_TYPES_AND2 it does not
// instantiate float64, and a dtype nobody planned for raises a RuntimeError naming the op and
// the argument instead of running some other type's kernel.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "dspark/checks.h"

// Runs the lambda body with `using scalar_t = <storage type of dtype>` (as AT_DISPATCH does).
#define DSPARK_CPU_DISPATCH_FLOAT(dtype, op_name, arg_name, ...)                    \
  [&] {                                                                             \
    const ::c10::ScalarType dspark_dispatch_dtype = (dtype);                        \
    switch (dspark_dispatch_dtype) {                                                \
      case ::c10::ScalarType::Float: {                                              \
        using scalar_t = float;                                                     \
        return __VA_ARGS__();                                                       \
      }                                                                             \
      case ::c10::ScalarType::BFloat16: {                                           \
        using scalar_t = ::c10::BFloat16;                                           \
        return __VA_ARGS__();                                                       \
      }                                                                             \
      case ::c10::ScalarType::Half: {                                               \
        using scalar_t = ::c10::Half;                                               \
        return __VA_ARGS__();                                                       \
      }                                                                             \
      default:                                                                      \
        DSPARK_CHECK(false, op_name, arg_name, "has dtype ", dspark_dispatch_dtype, \
                     ", which has no CPU kernel (float32, bfloat16 or float16)");   \
        __builtin_unreachable(); /* DSPARK_CHECK(false, ...) throws */              \
    }                                                                               \
  }()
