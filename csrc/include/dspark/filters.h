// Engine sampling filters top-k, top-p and min-p (SPEC §9), one definition for the CPU
// kernels, the CUDA kernels and dspark_ops/reference/filters.py.
//
// On a row of scaled logits s = z / T (float32, NaN read as -inf, see scaled_logit) with
// m = max(s) and unnormalised weights w_v = expf(s_v - m) (so the largest weight is 1):
//   min_p  keeps v with w_v >= min_p                      (π_v >= min_p · max π)
//   top_k  keeps v with s_v >= the k-th largest kept s    (ties at the boundary all kept)
//   top_p  keeps v with s_v >= θ, θ the largest kept value with
//          mass(θ) = Σ_{kept u, s_u >= θ} w_u  >=  top_p · Σ_{kept u} w_u    (float32 product)
// applied in that order. Each stage keeps an upper set of s, so the result is always
//   kept = { v : s_v >= θ }
// for one per-row threshold θ that is either -inf (nothing filtered) or a value of the row.
// Consumers compute θ once per row (cpu/filter_threshold.h on the CPU; a sort-free search on
// CUDA, cuda/filters.cuh) and read filtered(s_v) = s_v >= θ ? s_v : -inf; a filtered-out token
// then has probability exactly 0 everywhere downstream (softmax, residual, races).
// Sums are float32 in an implementation's own order (the CPU: running sums in descending order
// of s; CUDA: its fixed reduction order), so two implementations can disagree only where a
// boundary mass is within rounding of top_p · W (a near-tie, like any float rounding flip).
// A row whose max is not finite (all -inf / NaN, or +inf present) is left unfiltered.
// Greedy rows ignore the filters: every filter keeps the argmax.
#pragma once

#include <cmath>
#include <cstdint>

#include "dspark/philox.h"

namespace dspark {

// One request's filters with every off value normalised, so that off() is one test:
// top_k = 0 (off, from <= 0 or >= V), top_p = 1 (off), min_p = 0 (off).
struct RowFilter {
  int64_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;

  DSPARK_HD bool off() const { return top_k == 0 && !(top_p < 1.0f) && !(min_p > 0.0f); }
};

// Valid ranges (SPEC §9): top_k any int64, top_p in (0, 1], min_p in [0, 1]. The bindings
// raise on anything else on CPU (and on CUDA with DSPARK_CHECK=1).
DSPARK_HD bool top_p_in_range(float top_p) { return top_p > 0.0f && top_p <= 1.0f; }
DSPARK_HD bool min_p_in_range(float min_p) { return min_p >= 0.0f && min_p <= 1.0f; }

// The filter of a request from its raw arguments, clamped into range: this is what the CUDA
// kernels do with unchecked values (NaN -> off, top_p <= 0 keeps only the top tie group,
// min_p > 1 likewise). In-range values pass through unchanged.
DSPARK_HD RowFilter make_row_filter(int64_t top_k, float top_p, float min_p, int64_t vocab) {
  RowFilter f;
  f.top_k = (top_k <= 0 || top_k >= vocab) ? 0 : top_k;
  f.top_p = top_p == top_p ? (top_p > 1.0f ? 1.0f : top_p) : 1.0f;
  f.min_p = min_p == min_p ? (min_p < 0.0f ? 0.0f : (min_p > 1.0f ? 1.0f : min_p)) : 0.0f;
  return f;
}

// The unnormalised weight w_v of a scaled logit against the row max m.
DSPARK_HD float filter_weight(float s, float row_max) { return expf(s - row_max); }

// A scaled logit after the filter: kept values unchanged, the rest -inf.
DSPARK_HD float filtered(float s, float threshold) { return s >= threshold ? s : -INFINITY; }

}  // namespace dspark
