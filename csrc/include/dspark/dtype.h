// Storage types of logits, weights and activations as seen by the torch-free CUDA kernels.
// The bindings map at::ScalarType to this enum; the .cu files dispatch on it.
#pragma once

namespace dspark {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

}  // namespace dspark

// One case of a dtype switch, shared by the CPU (cpu/dispatch.h) and CUDA (cuda/common.cuh)
// float dispatches: `using alias = type;`, then the lambda body's result.
#define DSPARK_DISPATCH_CASE(value, alias, type, ...) \
  case value: {                                       \
    using alias = type;                               \
    return __VA_ARGS__();                             \
  }
