// Argument checks of dspark::random_bits shared by the CPU and CUDA bindings (SPEC §2).
#pragma once

#include <ATen/ATen.h>

#include "dspark/checks.h"

namespace dspark {

// Philox counters keep index / 4 in 32 bits (dspark/philox.h): larger indices would repeat.
constexpr int64_t kMaxRandomCount = int64_t{1} << 34;

// seed, offset [R] int64; purpose in [0, 65536); count in [0, 2^34]. Returns R.
inline int64_t check_random_bits_args(const at::Tensor& seed, const at::Tensor& offset, int64_t purpose,
                                      int64_t count) {
  constexpr const char* op = "dspark::random_bits";
  check_dim(seed, op, "seed", 1);  // before seed.size(0): a 0-d seed has no dimension 0
  const int64_t requests = seed.size(0);
  check_index_vector(seed, op, "seed", requests, "R", seed);
  check_index_vector(offset, op, "offset", requests, "R, the size of seed", seed);
  DSPARK_CHECK(count >= 0 && count <= kMaxRandomCount, op, "count", "must be in [0, 2^34], got ", count);
  DSPARK_CHECK(purpose >= 0 && purpose < 65536, op, "purpose", "must be in [0, 65536), got ", purpose);
  return requests;
}

}  // namespace dspark
