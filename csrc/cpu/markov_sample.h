// Rounding and sampling of one row of Markov logits on the CPU, shared by the dense
// markov_draft (entries = the whole vocabulary) and the pruned markov_draft_topk (entries = the
// K candidates, each carrying its vocabulary id). Gumbel noise and greedy ties are keyed by the
// vocabulary id, so with K = V the pruned op draws the dense op's tokens.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "cpu/filter_threshold.h"
#include "cpu/philox_batch.h"
#include "dspark/filters.h"
#include "dspark/philox.h"
#include "dspark/sampling.h"

namespace dspark::cpu::markov {

// Entry j of a dense row is vocabulary id j.
struct DenseIds {
  int64_t operator()(int64_t j) const { return j; }
};
// Entry j of a pruned row is candidate ids[j].
struct CandidateIds {
  const int64_t* ids;
  int64_t operator()(int64_t j) const { return ids[j]; }
};

// noise[j] = -log(-log(U(seed, offset, kDraftSample, k, id(j)))) for j < n. The two logs run
// through ATen's vectorised log on the row, as in the pure-PyTorch reference (rng.gumbel).
inline void fill_gumbel(float* noise, int64_t n, DenseIds, int64_t seed, int64_t offset, int64_t k) {
  fill_open_uniforms(noise, n, seed, offset, Purpose::kDraftSample, static_cast<uint32_t>(k));
  at::from_blob(noise, {n}, at::TensorOptions().dtype(at::kFloat)).log_().neg_().log_().neg_();
}
inline void fill_gumbel(float* noise, int64_t n, CandidateIds ids, int64_t seed, int64_t offset, int64_t k) {
  for (int64_t j = 0; j < n; ++j)
    noise[j] = bits_to_open_uniform(
        random_bits(seed, offset, Purpose::kDraftSample, static_cast<uint32_t>(k), static_cast<uint64_t>(ids(j))));
  at::from_blob(noise, {n}, at::TensorOptions().dtype(at::kFloat)).log_().neg_().log_().neg_();
}

// The filter of every request (SPEC §9; all off without filter tensors) over rows of `entries`
// values: top_k [R] int64, top_p / min_p [R] float32, each optional, values already checked.
inline std::vector<RowFilter> row_filters(const std::optional<at::Tensor>& top_k,
                                          const std::optional<at::Tensor>& top_p,
                                          const std::optional<at::Tensor>& min_p, int64_t requests, int64_t entries) {
  std::vector<RowFilter> f(static_cast<size_t>(requests));
  const auto k = top_k ? top_k->contiguous() : at::Tensor();
  const auto p = top_p ? top_p->contiguous() : at::Tensor();
  const auto m = min_p ? min_p->contiguous() : at::Tensor();
  for (int64_t i = 0; i < requests; ++i)
    f[i] = make_row_filter(k.defined() ? k.data_ptr<int64_t>()[i] : 0, p.defined() ? p.data_ptr<float>()[i] : 1.0f,
                           m.defined() ? m.data_ptr<float>()[i] : 0.0f, entries);
  return f;
}

// Host memory reused across the rows a thread samples with a filter on.
struct FilterScratch {
  std::vector<float> scaled;  // [n] the scaled row
  FilterSearch search;        // filter_threshold's own
};

// log q(winner) from the scaled row x [n] (overwritten: exps are taken in place), its max and
// the winner's scaled logit. Vectorised by ATen over the cache-hot scratch row.
inline float winner_logprob(float* x, int64_t n, float max, float xt) {
  float sum = 0.0f;
  if (max > -INFINITY)
    sum = at::from_blob(x, {n}, at::TensorOptions().dtype(at::kFloat)).sub_(max).exp_().sum().item<float>();
  return (sum > 0.0f && xt > -INFINITY) ? (xt - max) - std::log(sum) : -INFINITY;
}

// Rounds L_j = base[id(j)] + product[j] (float32) to T, writes them to out[j], and samples
// from the rounded values: the Gumbel-max race over softmax(L / T) with noise[j] (consumed:
// it is overwritten by the scaled row), or the argmax for greedy requests (noise unused, lowest
// vocabulary id on ties). With a filter that is on (SPEC §9, sampled requests only), the race
// and the softmax run over the filtered scaled row, and every filtered-out entry of out is set
// to -inf; an off filter takes exactly the unfiltered path. Returns (vocabulary id, log q(id));
// greedy requests return (argmax, 0). A row without a finite logit returns entry 0's id (log q =
// -inf when sampled).
template <typename T, typename Ids>
std::pair<int64_t, float> round_and_sample(const T* base, Ids id, const float* product, T* out, float* noise, int64_t n,
                                           float temperature, const RowFilter& filter, FilterScratch& scratch) {
  if (is_greedy(temperature)) {
    ArgMax best;
    for (int64_t j = 0; j < n; ++j) {
      const T rounded = static_cast<T>(static_cast<float>(base[id(j)]) + product[j]);
      out[j] = rounded;
      const float x = static_cast<float>(rounded);
      best.add(x == x ? x : -INFINITY, id(j));
    }
    return {best.index < 0 ? id(0) : best.index, 0.0f};
  }
  const float inv_t = inverse_temperature(temperature);
  float max = -INFINITY;
  Race race;
  int64_t winner = 0;  // entry of the race's winner
  if (filter.off()) {
    // One fused pass: round, store, max of the scaled row, Gumbel race; the scaled values
    // replace the (consumed) noise in the row's scratch.
    for (int64_t j = 0; j < n; ++j) {
      const T rounded = static_cast<T>(static_cast<float>(base[id(j)]) + product[j]);
      out[j] = rounded;
      const float x = scaled_logit(static_cast<float>(rounded), inv_t);
      max = x > max ? x : max;
      const uint64_t before = race.best;
      race.add(x, noise[j], id(j));
      winner = race.best != before ? j : winner;
      noise[j] = x;
    }
  } else {
    // Round and scale first (the threshold needs the whole row), then race over the kept.
    scratch.scaled.resize(static_cast<size_t>(n));
    float* scaled = scratch.scaled.data();
    for (int64_t j = 0; j < n; ++j) {
      const T rounded = static_cast<T>(static_cast<float>(base[id(j)]) + product[j]);
      out[j] = rounded;
      scaled[j] = scaled_logit(static_cast<float>(rounded), inv_t);
    }
    const float theta = filter_threshold(scaled, n, filter, scratch.search);
    for (int64_t j = 0; j < n; ++j) {
      const float x = filtered(scaled[j], theta);
      if (!(scaled[j] >= theta)) out[j] = static_cast<T>(-INFINITY);
      max = x > max ? x : max;
      const uint64_t before = race.best;
      race.add(x, noise[j], id(j));
      winner = race.best != before ? j : winner;
      noise[j] = x;
    }
  }
  return {id(winner), winner_logprob(noise, n, max, noise[winner])};
}

}  // namespace dspark::cpu::markov
