// The dtype dispatch of the CPU kernels: float32, bfloat16 and float16, the storage types the
// argument checks admit, and nothing else. Unlike AT_DISPATCH_FLOATING_TYPES_AND2 it does not
// instantiate float64, and a dtype nobody planned for raises a RuntimeError naming the op and
// the argument instead of running some other type's kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <optional>

#include "dspark/checks.h"
#include "dspark/dtype.h"

// Runs the lambda body with `using scalar_t = <storage type of dtype>` (as AT_DISPATCH does).
#define DSPARK_CPU_DISPATCH_FLOAT(dtype, op_name, arg_name, ...)                                \
  [&] {                                                                                         \
    const ::c10::ScalarType dspark_dispatch_dtype = (dtype);                                    \
    switch (dspark_dispatch_dtype) {                                                            \
      DSPARK_DISPATCH_CASE(::c10::ScalarType::Float, scalar_t, float, __VA_ARGS__)              \
      DSPARK_DISPATCH_CASE(::c10::ScalarType::BFloat16, scalar_t, ::c10::BFloat16, __VA_ARGS__) \
      DSPARK_DISPATCH_CASE(::c10::ScalarType::Half, scalar_t, ::c10::Half, __VA_ARGS__)         \
      default:                                                                                  \
        DSPARK_CHECK(false, op_name, arg_name, "has dtype ", dspark_dispatch_dtype,             \
                     ", which has no CPU kernel (float32, bfloat16 or float16)");               \
        __builtin_unreachable(); /* DSPARK_CHECK(false, ...) throws */                          \
    }                                                                                           \
  }()

namespace dspark::cpu {

// Runs f.template operator()<TT, TD>() with the storage types of the target and the draft
// logits of a verify op, which may differ (a float32 target with bfloat16 drafts); without
// draft logits TD is the target's type.
template <typename F>
void dispatch_target_draft(const char* op, const at::Tensor& target, const std::optional<at::Tensor>& draft, F&& f) {
  DSPARK_CPU_DISPATCH_FLOAT(target.scalar_type(), op, "target_logits", [&] {
    using TT = scalar_t;
    DSPARK_CPU_DISPATCH_FLOAT(draft ? draft->scalar_type() : target.scalar_type(), op, "draft_logits",
                              [&] { f.template operator()<TT, scalar_t>(); });
  });
}

}  // namespace dspark::cpu
