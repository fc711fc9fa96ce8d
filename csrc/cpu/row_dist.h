// One request's view of target and draft rows on the CPU: the target's (filtered) softmax
// and the draft's q in any of its encodings, in per-thread scratch buffers (no ATen op and no
// allocation per row once the buffers have grown), plus the Gumbel race that draws a token.
// Arithmetic matches the CUDA kernels: SoftmaxStats for normalisers, BoundedRace for draws.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "cpu/filter_threshold.h"
#include "cpu/philox_batch.h"
#include "cpu/row_ops.h"
#include "dspark/filters.h"
#include "dspark/host_device.h"
#include "dspark/philox.h"
#include "dspark/sampling.h"

namespace dspark::cpu {

// Per-thread buffers, reused across rows and requests.
struct RowScratch {
  std::vector<float> scaled;                         // [V] the target row's filtered scaled logits
  std::vector<float> draft_scaled;                   // [W] a draft row's scaled logits, -inf if not listed
  FilterSearch filter_search;                        // filter_threshold's buffers
  std::vector<std::pair<int64_t, float>> listed;     // [K] a sparse q row as (id, q) by id
  std::vector<float> uniforms;                       // [V] the open uniforms of one race
};

// Rows at least this long get their softmax statistics from ATen's vectorised kernels (one
// max and one exp-sum pass); shorter rows use a scalar loop, whose cost per row is far below
// an ATen call's overhead.
constexpr int64_t kVectorisedRow = 2048;

// Softmax statistics of scaled logits s [V] (entries -inf allowed).
inline SoftmaxStats row_stats(const float* s, int64_t vocab) {
  SoftmaxStats st;
  if (vocab >= kVectorisedRow) {
    const at::Tensor x = at::from_blob(const_cast<float*>(s), {vocab}, at::kFloat);
    const float m = x.max().item<float>();
    if (std::isfinite(m)) {
      st.max = m;
      st.sum = (x - m).exp_().sum().item<float>();
      return st;
    }
  }
  for (int64_t v = 0; v < vocab; ++v) st.add(s[v]);
  return st;
}

// p = softmax(filter(row / T)): scaled logits (NaN and filtered-out entries -inf) and their
// softmax statistics. Points into the scratch: valid until the next target_row call.
// An upper bound of log p_v from the scaled logit s = s_v without an exponential: s - log_norm
// (log p_v = s_v - log_norm), plus a slack for the rounding of that difference against
// logf(prob(v)) (a few ulps of the larger operand; gumbel_upper_bound's margin covers expf, the
// division and logf). Residual races bound log max(0, p_v - ...) by it: entries that cannot win
// with it skip their exponentials and logarithm.
struct LogProbBound {
  float log_norm, slack;
  float operator()(float s) const { return s - log_norm + (slack + 1e-6f * fabsf(s)); }
};

struct TargetRow {
  const float* s;
  SoftmaxStats stats;
  float prob(int64_t v) const { return stats.prob(s[v]); }
  LogProbBound log_prob_bound() const {
    const float log_norm = stats.max + logf(stats.sum);
    return {log_norm, 1e-6f * fabsf(log_norm)};
  }
};

// target row [V] -> TargetRow.
template <typename T>
TargetRow target_row(const T* row, int64_t vocab, float inv_temperature, const RowFilter& filter, RowScratch& sc) {
  sc.scaled.resize(vocab);
  float* s = sc.scaled.data();
  for (int64_t v = 0; v < vocab; ++v) s[v] = scaled_logit(load(row, v), inv_temperature);
  if (!filter.off()) {
    const float theta = filter_threshold(s, vocab, filter, sc.filter_search);
    if (theta > -INFINITY)
      for (int64_t v = 0; v < vocab; ++v) s[v] = filtered(s[v], theta);
  }
  return TargetRow{s, row_stats(s, vocab)};
}

// One row of q. Dense: `width` = V entries indexed by id. Sparse: `width` = K entries whose
// ids are listed in `ids` (-1 padding; q = 0 for every id not listed). Entries are logits
// (q = softmax(entry / T) over the row) or probabilities read as they are. No values: q is
// one-hot on `token` (drafts chosen deterministically).
template <typename TD>
struct DraftRow {
  const TD* logits = nullptr;    // [width] or nullptr
  const float* probs = nullptr;  // [width] or nullptr
  const int64_t* ids = nullptr;  // [width] (sparse) or nullptr (dense)
  int64_t width = 0, vocab = 0, token = -1;
  float inv_temperature = 1.0f;
  SoftmaxStats stats;  // of the scaled logits

  bool listed(int64_t j) const { return ids == nullptr || (ids[j] >= 0 && ids[j] < vocab); }
  // q of the entry j (not of an id).
  float entry(int64_t j) const {
    if (!listed(j)) return 0.0f;
    return probs ? draft_prob(probs[j]) : stats.prob(scaled_logit(load(logits, j), inv_temperature));
  }
  // q(v) for one id: O(1) dense, O(K) sparse.
  float prob(int64_t v) const {
    if (!logits && !probs) return v == token ? 1.0f : 0.0f;
    if (!ids) return entry(v);
    for (int64_t j = 0; j < width; ++j)
      if (ids[j] == v) return entry(j);
    return 0.0f;
  }
};

// Logit rows get their softmax statistics as target rows do (row_stats: vectorised from
// kVectorisedRow entries on), from scaled logits in the scratch.
template <typename TD>
DraftRow<TD> draft_row(const TD* logits, const float* probs, const int64_t* ids, int64_t width, int64_t vocab,
                       float inv_temperature, RowScratch& sc) {
  DraftRow<TD> q;
  q.logits = logits;
  q.probs = probs;
  q.ids = ids;
  q.width = width;
  q.vocab = vocab;
  q.inv_temperature = inv_temperature;
  if (logits) {
    sc.draft_scaled.resize(width);
    float* s = sc.draft_scaled.data();
    for (int64_t j = 0; j < width; ++j) s[j] = q.listed(j) ? scaled_logit(load(logits, j), inv_temperature) : -INFINITY;
    q.stats = row_stats(s, width);
  }
  return q;
}

template <typename TD>
DraftRow<TD> one_hot_row(int64_t token) {
  DraftRow<TD> q;
  q.token = token;
  return q;
}

// Reads q(v) for ascending v in one sweep: dense rows directly, sparse rows through their
// listed entries sorted by id (O(K log K) once, never a dense [V] q).
template <typename TD>
class DraftSweep {
 public:
  DraftSweep(const DraftRow<TD>& q, RowScratch& sc) : q_(q), listed_(sc.listed) {
    if (!q.ids) return;
    listed_.clear();
    for (int64_t j = 0; j < q.width; ++j)
      if (q.listed(j)) listed_.emplace_back(q.ids[j], q.entry(j));
    std::sort(listed_.begin(), listed_.end());
  }
  void restart() { next_ = 0; }
  float at(int64_t v) {  // v must not decrease between calls (until restart)
    if (!q_.ids) return q_.prob(v);
    while (next_ < listed_.size() && listed_[next_].first < v) ++next_;
    return next_ < listed_.size() && listed_[next_].first == v ? listed_[next_].second : 0.0f;
  }

 private:
  const DraftRow<TD>& q_;
  std::vector<std::pair<int64_t, float>>& listed_;
  size_t next_ = 0;
};

// Gumbel noise of an open uniform, as gumbel_from_bits (dspark/sampling.h) of its bits.
inline float gumbel_from_uniform(float u) { return -logf(-logf(u)); }

// Calls visit(v, u_v) for v in [0, vocab) with the open uniforms of `purpose` at `position`
// (the vectorised batch Philox of cpu/philox_batch.h); races turn them into Gumbel noise
// only where an entry can still win (BoundedRace), so most entries cost no logarithm.
template <typename Visit>
void for_each_uniform(int64_t vocab, int64_t seed, int64_t offset, Purpose purpose, uint32_t position, RowScratch& sc,
                      Visit&& visit) {
  sc.uniforms.resize(vocab);
  fill_open_uniforms(sc.uniforms.data(), vocab, seed, offset, purpose, position);
  for (int64_t v = 0; v < vocab; ++v) visit(v, sc.uniforms[v]);
}

// An upper bound of gumbel_from_uniform(u) without a logarithm, so that a race skips the two
// logarithms of every entry that cannot win, not only of those below kGumbelBound:
// -log(-log u) <= -log(1 - u) (as -log u >= 1 - u), and for a normal float y,
// -log(y) <= ln 2 * (127 - bits(y) / 2^23) (log2 lies above its chords between powers of two,
// and bits(y) / 2^23 - 127 is that chord). 1 - u is exact (open uniforms are odd multiples of
// 2^-24); the margin covers the rounding of logf in the exact noise and of this bound (< 1e-5).
inline float gumbel_upper_bound(float u) {
  const float chord = static_cast<float>(bit_cast<int32_t>(1.0f - u)) * (1.0f / 8388608.0f);
  return 0.6931472f * (127.0f - chord) + 1e-3f;
}

// True when an entry of this log-weight and uniform cannot win the race: its exact score
// log_weight + gumbel_from_uniform(u) rounds to at most fl(log_weight + bound) < best.
inline bool cannot_win(const BoundedRace& race, float log_weight, float u) {
  return race.hopeless(log_weight) || log_weight + gumbel_upper_bound(u) < race.best;
}

// BoundedRace::add_bits for an open uniform.
inline void race_add(BoundedRace& race, float log_weight, float u, int64_t v) {
  if (!cannot_win(race, log_weight, u)) race.add(log_weight, gumbel_from_uniform(u), v);
}

}  // namespace dspark::cpu
