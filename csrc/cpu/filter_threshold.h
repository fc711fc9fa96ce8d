// The exact SPEC §9 threshold θ of one row on the host (the filters are defined in
// dspark/filters.h), without sorting the row: the θ of the definition, bit for bit.
//
// Each stage keeps the values s >= floor (floor: θ of the stages before, -inf at first) and
// works on linear buckets of d = m - s, which are monotone in s: the buckets come in
// descending order of s and a tie group never straddles two of them.
//   min_p keeps v with expf(s_v - m) >= min_p: with L = logf(min_p), only the values within
//     kMinPBand of L need expf (outside it the answer is clear whatever the last rounding).
//   top_k counts the kept values per bucket and selects the k-th largest inside the bucket
//     that holds it.
//   top_p is defined by float32 sums taken in descending order of s: mass(t) is the running
//     sum of w_u = expf(s_u - m) at the end of the tie group of t, and the total is that same
//     running sum over every kept value. The buckets are sorted one at a time, largest first,
//     and the sum runs through them. It starts at w = 1 (the max) and never decreases; once a
//     bucket's largest weight is below a quarter of the sum's ulp, that weight and every later
//     one (smaller s, expf faithful) is below half an ulp: adding it rounds back to the same
//     sum, so the rest of the row changes neither the total nor any mass and is never sorted.
//     Values with d > kAbsorbedD (w < 2^-24 <= ulp(1) / 2) go to a last bucket never sorted.
//     Equal values share one expf (bf16 rows repeat values a lot).
// Both shortcuts assume only that expf is faithful (error below 1 ulp; glibc's is 0.502).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "dspark/filters.h"
#include "dspark/host_device.h"

namespace dspark::cpu {

// Per-thread buffers of filter_threshold, reused across rows (no allocation once grown).
struct FilterSearch {
  std::vector<uint32_t> count;  // [buckets + 1] bucket counts, then their ends (V < 2^32: checked)
  std::vector<float> values;    // kept values grouped by bucket (descending bucket order)
  std::vector<float> mass;      // top_p's running sums, one per value summed
};

namespace filter_detail {

// expf(-17) = 4.1e-8 < 2^-24: such a weight cannot move a running sum >= 1.
constexpr float kAbsorbedD = 17.0f;
// Far above the error of logf plus the rounding of L ± kMinPBand (|L| < 70 on this path), and
// above the relative error of a faithful expf (2^-23).
constexpr float kMinPBand = 1e-3f;
// Below this min_p the band test is not used: expf near min_p would return subnormals, whose
// relative rounding error is not small.
constexpr float kMinPBandFrom = 1e-30f;
// top_k's buckets: enough that the bucket of the k-th value is small, few enough to scan.
constexpr int kTopKBuckets = 2048;
// top_p's buckets: one per kValuesPerBucket candidates (a bucket of a few values sorts in a
// few moves; 1, 2 and 4 timed alike on randn rows), within these bounds (counts stay in L2).
constexpr int kMinBuckets = 256, kMaxBuckets = 65536;
constexpr int64_t kValuesPerBucket = 2;
// Buckets larger than this are sorted with std::sort, smaller ones by insertion.
constexpr int64_t kInsertionSortMax = 32;

// The row's max, its smallest value > -inf and its count of values > -inf, in independent
// lanes that the compiler vectorises (max and min are exact in any order).
struct RowRange {
  float max, lowest;
  int64_t finite;
};
inline RowRange row_range(const float* s, int64_t vocab) {
  constexpr int kLanes = 8;
  float hi[kLanes], lo[kLanes];
  int64_t n[kLanes];
  for (int l = 0; l < kLanes; ++l) hi[l] = -INFINITY, lo[l] = INFINITY, n[l] = 0;
  auto add = [&](int l, float x) {
    hi[l] = x > hi[l] ? x : hi[l];
    lo[l] = x > -INFINITY && x < lo[l] ? x : lo[l];
    n[l] += x > -INFINITY ? 1 : 0;
  };
  const int64_t body = vocab - vocab % kLanes;
  for (int64_t v = 0; v < body; v += kLanes)
    for (int l = 0; l < kLanes; ++l) add(l, s[v + l]);
  for (int64_t v = body; v < vocab; ++v) add(0, s[v]);
  RowRange r{hi[0], lo[0], n[0]};
  for (int l = 1; l < kLanes; ++l) {
    r.max = hi[l] > r.max ? hi[l] : r.max;
    r.lowest = lo[l] < r.lowest ? lo[l] : r.lowest;
    r.finite += n[l];
  }
  return r;
}

// min_p: the smallest s with filter_weight(s, m) >= min_p (m itself always qualifies).
inline float min_p_threshold(const float* s, int64_t vocab, float m, float min_p) {
  float theta = m;
  if (min_p < kMinPBandFrom) {
    for (int64_t v = 0; v < vocab; ++v)
      if (s[v] < theta && filter_weight(s[v], m) >= min_p) theta = s[v];
    return theta;
  }
  const float log_min_p = logf(min_p);
  const float surely = log_min_p + kMinPBand, maybe = log_min_p - kMinPBand;
  for (int64_t v = 0; v < vocab; ++v) {
    const float d = s[v] - m;  // the argument filter_weight passes to expf
    if (s[v] < theta && d >= maybe && (d >= surely || expf(d) >= min_p)) theta = s[v];
  }
  return theta;
}

// `buckets` linear buckets of d = m - x for the kept x (floor <= x <= m, x > -inf): bucket 0
// holds the largest values, `buckets` the absorbed ones (d > kAbsorbedD). Non-increasing in
// x (every step rounds monotonically). A span below 1e-20 puts every value in bucket 0.
struct Buckets {
  float m, scale;
  int buckets;
  Buckets(float max, float floor, float lowest, int n) : m(max), buckets(n) {
    const float span = std::min(max - std::max(floor, lowest), kAbsorbedD);
    scale = span > 1e-20f ? static_cast<float>(n) / span : 0.0f;  // d * scale: finite or +inf
  }
  int operator()(float x) const {
    const float d = m - x;
    const int b = static_cast<int>(std::min(d * scale, static_cast<float>(buckets - 1)));
    return d > kAbsorbedD ? buckets : b;  // a select, not a branch
  }
};

// top_k (0 < k): the k-th largest value s >= floor, or floor when at most k are kept.
inline float top_k_threshold(const float* s, int64_t vocab, const RowRange& range, float floor, int64_t k,
                             FilterSearch& sc) {
  const Buckets bucket(range.max, floor, range.lowest, kTopKBuckets);
  sc.count.assign(kTopKBuckets + 1, 0);
  uint32_t* count = sc.count.data();
  int64_t kept = 0;
  for (int64_t v = 0; v < vocab; ++v)
    if (s[v] >= floor && s[v] > -INFINITY) ++count[bucket(s[v])], ++kept;
  if (kept <= k) return floor;
  int64_t before = 0;
  int b = 0;
  for (; before + count[b] < k; ++b) before += count[b];
  sc.values.clear();
  for (int64_t v = 0; v < vocab; ++v)
    if (s[v] >= floor && s[v] > -INFINITY && bucket(s[v]) == b) sc.values.push_back(s[v]);
  const auto kth = sc.values.begin() + (k - before - 1);
  std::nth_element(sc.values.begin(), kth, sc.values.end(), std::greater<float>());
  return *kth;
}

// True when w < ulp(sum) / 4 (sum >= 1): w and every weight of a smaller value (at most w
// times 1 + 2^-21 with a faithful expf) is below half an ulp, and adding it leaves the sum.
// ulp(sum) = 2^(exponent - 23): the sum with its mantissa cleared, times 2^-23 (exact).
inline bool absorbed(float w, float sum) {
  return w < bit_cast<float>(bit_cast<uint32_t>(sum) & 0x7F800000u) * 0x1p-25f;
}

// Sorts [lo, hi) in descending order.
inline void sort_descending(float* lo, float* hi) {
  if (hi - lo > kInsertionSortMax) return std::sort(lo, hi, std::greater<float>());
  for (float* i = lo + 1; i < hi; ++i) {
    const float x = *i;
    float* j = i;
    for (; j > lo && j[-1] < x; --j) *j = j[-1];
    *j = x;
  }
}

// top_p (< 1) over the values s >= floor (about `candidates` of them): the first tie group
// end, in descending order, whose running sum reaches top_p times the total.
inline float top_p_threshold(const float* s, int64_t vocab, const RowRange& range, float floor, float top_p,
                             int64_t candidates, FilterSearch& sc) {
  const float m = range.max;
  int buckets = kMinBuckets;
  while (buckets < kMaxBuckets && buckets * kValuesPerBucket < candidates) buckets *= 2;
  const Buckets bucket(m, floor, range.lowest, buckets);
  // Group the kept values by bucket, the absorbed ones last (a counting sort with no branch on
  // the bucket); afterwards count[b] is the end of bucket b in values.
  sc.count.assign(static_cast<size_t>(buckets) + 1, 0);
  uint32_t* count = sc.count.data();
  for (int64_t v = 0; v < vocab; ++v)
    if (s[v] >= floor && s[v] > -INFINITY) ++count[bucket(s[v])];
  uint32_t ends = 0;
  for (int b = 0; b <= buckets; ++b) {
    const uint32_t c = count[b];
    count[b] = ends;
    ends += c;
  }
  sc.values.resize(ends);
  sc.mass.resize(ends);
  float* values = sc.values.data();
  for (int64_t v = 0; v < vocab; ++v)
    if (s[v] >= floor && s[v] > -INFINITY) values[count[bucket(s[v])]++] = s[v];
  // The running sum in descending order, bucket by bucket, until the rest cannot change it;
  // equal values are adjacent once sorted and share one expf.
  float sum = 0.0f;
  uint32_t summed = 0;
  for (int b = 0; b < buckets; ++b) {
    float* hi = values + count[b];
    if (values + summed == hi) continue;
    sort_descending(values + summed, hi);
    float last = values[summed], w = filter_weight(last, m);  // the bucket's largest weight
    if (summed > 0 && absorbed(w, sum)) break;
    for (const float* x = values + summed; x < hi; ++x) {
      if (*x != last) last = *x, w = filter_weight(last, m);
      sum += w;
      sc.mass[summed++] = sum;
    }
  }
  // The first value whose running sum reaches the target, then the end of its tie group: the
  // first group end that reaches it (the sums never decrease). The last value summed is a
  // group end (its ties share its bucket) and its sum is the total, so the search ends there
  // at the latest.
  const float target = top_p * sum;
  const float* mass = sc.mass.data();
  uint32_t j = static_cast<uint32_t>(std::lower_bound(mass, mass + summed, target) - mass);
  while (j + 1 < summed && values[j + 1] == values[j]) ++j;
  return values[j];
}

}  // namespace filter_detail

// θ of one row of scaled logits s [V] (NaN already read as -inf) for filter f: the value of
// dspark/filters.h's definition in O(V) plus sorts of small buckets. -INFINITY when the
// filter is off or the row max is not finite.
inline float filter_threshold(const float* s, int64_t vocab, const RowFilter& f, FilterSearch& sc) {
  using namespace filter_detail;
  if (f.off()) return -INFINITY;
  const RowRange range = row_range(s, vocab);
  if (!std::isfinite(range.max)) return -INFINITY;
  float theta = f.min_p > 0.0f ? min_p_threshold(s, vocab, range.max, f.min_p) : -INFINITY;
  int64_t candidates = range.finite;
  if (f.top_k > 0 && f.top_k < candidates) {
    theta = top_k_threshold(s, vocab, range, theta, f.top_k, sc);
    candidates = f.top_k;  // plus its ties
  }
  if (f.top_p < 1.0f) theta = top_p_threshold(s, vocab, range, theta, f.top_p, candidates, sc);
  return theta;
}

}  // namespace dspark::cpu
