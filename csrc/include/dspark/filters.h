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
// Consumers compute θ once per row (filter_threshold below on the CPU; a sort-free search on
// CUDA) and read filtered(s_v) = s_v >= θ ? s_v : -inf; a filtered-out token then has
// probability exactly 0 everywhere downstream (softmax, residual, races).
// Sums are float32 in an unspecified order, so two implementations can disagree only where a
// boundary mass is within rounding of top_p · W (a near-tie, like any float rounding flip).
// A row whose max is not finite (all -inf / NaN, or +inf present) is left unfiltered.
// Greedy rows ignore the filters: every filter keeps the argmax.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

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

// The exact threshold θ of one row of scaled logits s [V] (NaN already read as -inf) on the
// host: O(V) for min_p, O(V) expected for top_k, O(n log n) for top_p over the n values kept
// so far. scratch is reused between rows to avoid allocations. Returns -INFINITY when the
// filter is off or the row max is not finite.
inline float filter_threshold(const float* s, int64_t vocab, const RowFilter& f, std::vector<float>& scratch) {
  if (f.off()) return -INFINITY;
  float m = -INFINITY;
  for (int64_t v = 0; v < vocab; ++v) m = s[v] > m ? s[v] : m;
  if (!std::isfinite(m)) return -INFINITY;
  float theta = -INFINITY;
  if (f.min_p > 0.0f) {
    theta = m;  // w = 1 >= min_p: the max is always kept
    for (int64_t v = 0; v < vocab; ++v)
      if (s[v] < theta && filter_weight(s[v], m) >= f.min_p) theta = s[v];
  }
  scratch.clear();
  for (int64_t v = 0; v < vocab; ++v)
    if (s[v] >= theta && s[v] > -INFINITY) scratch.push_back(s[v]);
  if (f.top_k > 0 && f.top_k < static_cast<int64_t>(scratch.size())) {
    // k-th largest kept value, then drop everything below it (ties stay).
    std::nth_element(scratch.begin(), scratch.begin() + (f.top_k - 1), scratch.end(), std::greater<float>());
    theta = scratch[f.top_k - 1];
    scratch.erase(std::remove_if(scratch.begin(), scratch.end(), [&](float x) { return x < theta; }), scratch.end());
  }
  if (f.top_p < 1.0f) {
    // Descending order; the cumulative mass at the end of a tie group is mass(value).
    std::sort(scratch.begin(), scratch.end(), std::greater<float>());
    float total = 0.0f;
    for (float x : scratch) total += filter_weight(x, m);
    const float target = f.top_p * total;
    float mass = 0.0f;
    for (size_t j = 0; j < scratch.size(); ++j) {
      mass += filter_weight(scratch[j], m);
      const bool group_end = j + 1 == scratch.size() || scratch[j + 1] < scratch[j];
      if (group_end && mass >= target) return scratch[j];
    }
  }
  return theta;
}

}  // namespace dspark
