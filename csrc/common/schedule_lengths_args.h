// Argument checks of dspark::schedule_lengths shared by the CPU and CUDA bindings (SPEC §6).
// All of them are shape / dtype / device / scalar checks, so they cost no host sync.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "dspark/checks.h"
#include "dspark/schedule.h"

namespace dspark {

struct ScheduleSizes {
  int64_t requests;  // R
  int64_t gamma;     // γ
  int64_t table;     // S, the entries of sps
};

// confidence [R, γ] float32; sps [S] float32 with S > R*(γ+1); max_lengths [R] int64 or None.
inline ScheduleSizes check_schedule_lengths_args(const at::Tensor& confidence, const at::Tensor& sps, int64_t mode,
                                                 int64_t budget, const std::optional<at::Tensor>& max_lengths) {
  constexpr const char* op = "dspark::schedule_lengths";
  check_dtype(confidence, op, "confidence", {at::kFloat});
  check_dim(confidence, op, "confidence", 2);
  ScheduleSizes s{confidence.size(0), confidence.size(1), 0};
  DSPARK_CHECK(s.requests * s.gamma < (int64_t{1} << 31), op, "confidence",
               "must have fewer than 2^31 entries R*γ, got shape ", confidence.sizes());
  check_device(sps, op, "sps", confidence);
  check_dtype(sps, op, "sps", {at::kFloat});
  check_dim(sps, op, "sps", 1);
  s.table = sps.size(0);
  DSPARK_CHECK(s.table > s.requests * (s.gamma + 1), op, "sps",
               "must have more than R*(γ+1) = ", s.requests * (s.gamma + 1),
               " entries (sps[B] is read for every verify batch size B up to R*(γ+1)), got ", s.table);
  DSPARK_CHECK(mode >= 0 && mode <= 2, op, "mode", "must be 0 (causal), 1 (global) or 2 (top-K), got ", mode);
  DSPARK_CHECK(mode != kScheduleTopK || budget >= 0, op, "budget", "must be >= 0 in mode 2 (top-K), got ", budget);
  if (max_lengths) check_index_vector(*max_lengths, op, "max_lengths", s.requests, "R", confidence);
  return s;
}

}  // namespace dspark
