// Scalar element access and whole-row argmax on the CPU, shared by the kernels.
// Arithmetic is float32 whatever the storage type (SPEC §2).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "dspark/sampling.h"

namespace dspark::cpu {

template <typename T>
inline float load(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

// argmax of the raw logits, lowest index on ties, 0 for an all-NaN row.
template <typename T>
int64_t row_argmax(const T* row, int64_t vocab) {
  ArgMax a;
  for (int64_t v = 0; v < vocab; ++v) a.add(load(row, v), v);
  return a.result();
}

}  // namespace dspark::cpu
