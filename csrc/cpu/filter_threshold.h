// The exact SPEC §9 threshold θ of one row on the host (the filters are defined in
// dspark/filters.h), without comparison sorts: the θ of the definition, bit for bit.
//
// Each stage keeps the values s >= floor (floor: θ of the stages before, -inf at first). Values
// are compared through order-preserving 32-bit keys (descending_key), so radix passes order
// them exactly, ties included.
//   min_p keeps v with expf(s_v - m) >= min_p: with L = logf(min_p), only the values within
//     kMinPBand of L need expf (outside it the answer is clear whatever the last rounding).
//   top_k counts the kept values by the top bits of their keys and selects the k-th largest
//     among those that share its top bits.
//   top_p is defined by float32 sums taken in descending order of s: mass(t) is the running
//     sum of w_u = expf(s_u - m) at the end of the tie group of t, and the total is that same
//     running sum over every kept value. The kept values within kAbsorbedD of m are radix
//     sorted (three 11-bit passes, a pass skipped when all keys share its digit) and the sum
//     runs through them in order. It starts at w = 1 (the max) and never decreases; once a
//     weight is below a quarter of the sum's ulp, it and every later one (smaller s, expf
//     faithful) is below half an ulp: adding it rounds back to the same sum, so the rest of the
//     row changes neither the total nor any mass. Values with d = m - s > kAbsorbedD
//     (w < 2^-24 <= ulp(1) / 2) are such values from the start and are not sorted at all.
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
  std::vector<uint32_t> keys, sorted;  // [V] top_p's keys, and the radix passes' other buffer
  std::vector<uint32_t> count;         // [3 * 2048] digit histograms, then their offsets
  std::vector<float> values;           // top_k's values that share the k-th one's top bits
  std::vector<float> mass;             // [V] top_p's running sums, one per value summed
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
// Radix digits: 11 bits, three passes for a 32-bit key; top_k counts by the top digit.
constexpr int kDigitBits = 11, kDigits = 1 << kDigitBits;

// The row's max and its count of values > -inf, in independent lanes that the compiler
// vectorises (the max is exact in any order).
struct RowRange {
  float max;
  int64_t finite;
};
inline RowRange row_range(const float* s, int64_t vocab) {
  constexpr int kLanes = 8;
  float hi[kLanes];
  int64_t n[kLanes];
  for (int l = 0; l < kLanes; ++l) hi[l] = -INFINITY, n[l] = 0;
  auto add = [&](int l, float x) {
    hi[l] = x > hi[l] ? x : hi[l];
    n[l] += x > -INFINITY ? 1 : 0;
  };
  const int64_t body = vocab - vocab % kLanes;
  for (int64_t v = 0; v < body; v += kLanes)
    for (int l = 0; l < kLanes; ++l) add(l, s[v + l]);
  for (int64_t v = body; v < vocab; ++v) add(0, s[v]);
  RowRange r{hi[0], n[0]};
  for (int l = 1; l < kLanes; ++l) {
    r.max = hi[l] > r.max ? hi[l] : r.max;
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

// Keys whose ascending order is the descending order of the floats (-inf and NaN aside):
// the float's bits, sign-flipped, reversed. +0 and -0 get neighbouring keys.
inline uint32_t descending_key(float x) {
  const uint32_t bits = bit_cast<uint32_t>(x);
  return (bits & 0x80000000u) ? bits : ~bits & 0x7FFFFFFFu;
}
inline float key_value(uint32_t key) { return bit_cast<float>((key & 0x80000000u) ? key : ~key & 0x7FFFFFFFu); }

// top_k (0 < k): the k-th largest value s >= floor, or floor when at most k are kept. The
// top digit of the keys splits the row into ranges of s (a quarter binade each); the k-th
// value is selected inside its range.
inline float top_k_threshold(const float* s, int64_t vocab, float floor, int64_t k, FilterSearch& sc) {
  constexpr int kShift = 32 - kDigitBits;
  sc.count.assign(kDigits, 0);
  uint32_t* count = sc.count.data();
  int64_t kept = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    const bool keep = s[v] >= floor && s[v] > -INFINITY;
    count[descending_key(s[v]) >> kShift] += keep;
    kept += keep;
  }
  if (kept <= k) return floor;
  int64_t before = 0;
  uint32_t digit = 0;
  for (; before + count[digit] < k; ++digit) before += count[digit];
  sc.values.clear();
  for (int64_t v = 0; v < vocab; ++v)
    if (descending_key(s[v]) >> kShift == digit && s[v] >= floor && s[v] > -INFINITY) sc.values.push_back(s[v]);
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

// Sorts keys [n] in ascending order (LSD radix, stable), skipping a pass whose digit all keys
// share; count holds the three digit histograms. Returns the buffer that holds the result.
inline uint32_t* radix_sort(uint32_t* keys, uint32_t* other, int64_t n, uint32_t* count) {
  for (int pass = 0; pass < 3; ++pass) {
    uint32_t* hist = count + pass * kDigits;
    const int shift = pass * kDigitBits;
    if (hist[(keys[0] >> shift) & (kDigits - 1)] == static_cast<uint32_t>(n)) continue;
    uint32_t offset = 0;
    for (int d = 0; d < kDigits; ++d) {
      const uint32_t c = hist[d];
      hist[d] = offset;
      offset += c;
    }
    for (int64_t i = 0; i < n; ++i) other[hist[(keys[i] >> shift) & (kDigits - 1)]++] = keys[i];
    std::swap(keys, other);
  }
  return keys;
}

// top_p (< 1) over the values s >= floor: the first tie group end, in descending order,
// whose running sum reaches top_p times the total.
inline float top_p_threshold(const float* s, int64_t vocab, float m, float floor, float top_p, FilterSearch& sc) {
  // The keys of the kept values not absorbed from the start, and their digit histograms,
  // gathered without a branch (a value that is not gathered is overwritten by the next).
  sc.keys.resize(vocab);
  sc.sorted.resize(vocab);
  sc.count.assign(3 * kDigits, 0);
  uint32_t* keys = sc.keys.data();
  uint32_t* count = sc.count.data();
  int64_t n = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    const float x = s[v];
    const uint32_t key = descending_key(x);
    const uint32_t gather = x >= floor && x > -INFINITY && m - x <= kAbsorbedD;
    keys[n] = key;
    n += gather;
    for (int pass = 0; pass < 3; ++pass)
      count[pass * kDigits + ((key >> (pass * kDigitBits)) & (kDigits - 1))] += gather;
  }
  const uint32_t* sorted = radix_sort(keys, sc.sorted.data(), n, count);  // n >= 1: m is gathered
  // The running sum in descending order until the rest cannot change it.
  sc.mass.resize(n);
  float* mass = sc.mass.data();
  float sum = 0.0f, last = NAN, w = 0.0f;
  int64_t summed = 0;
  for (; summed < n; ++summed) {
    const float x = key_value(sorted[summed]);
    if (x != last) {
      last = x;
      w = filter_weight(x, m);
      if (summed > 0 && absorbed(w, sum)) break;
    }
    sum += w;
    mass[summed] = sum;
  }
  // The first value whose running sum reaches the target, then the end of its tie group: the
  // first group end that reaches it (the sums never decrease). The last value summed ends a
  // group (what follows is absorbed, hence smaller) and its sum is the total, so the search
  // ends there at the latest.
  const float target = top_p * sum;
  int64_t j = std::lower_bound(mass, mass + summed, target) - mass;
  while (j + 1 < summed && key_value(sorted[j + 1]) == key_value(sorted[j])) ++j;
  return key_value(sorted[j]);
}

}  // namespace filter_detail

// θ of one row of scaled logits s [V] (NaN already read as -inf) for filter f: the value of
// dspark/filters.h's definition in a few passes over the row. -INFINITY when the
// filter is off or the row max is not finite.
inline float filter_threshold(const float* s, int64_t vocab, const RowFilter& f, FilterSearch& sc) {
  using namespace filter_detail;
  if (f.off()) return -INFINITY;
  const RowRange range = row_range(s, vocab);
  if (!std::isfinite(range.max)) return -INFINITY;
  float theta = f.min_p > 0.0f ? min_p_threshold(s, vocab, range.max, f.min_p) : -INFINITY;
  if (f.top_k > 0 && f.top_k < range.finite) theta = top_k_threshold(s, vocab, theta, f.top_k, sc);
  if (f.top_p < 1.0f) theta = top_p_threshold(s, vocab, range.max, theta, f.top_p, sc);
  return theta;
}

}  // namespace dspark::cpu
