// Rounding and sampling of one row of Markov logits on the CPU, shared by the dense
// markov_draft (entries = the whole vocabulary) and the pruned markov_draft_topk (entries = the
// K candidates, each carrying its vocabulary id). Gumbel noise and greedy ties are keyed by the
// vocabulary id, so with K = V the pruned op draws the dense op's tokens.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <utility>

#include "cpu/philox_batch.h"
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
    noise[j] = bits_to_open_uniform(random_bits(seed, offset, Purpose::kDraftSample, static_cast<uint32_t>(k),
                                                static_cast<uint64_t>(ids(j))));
  at::from_blob(noise, {n}, at::TensorOptions().dtype(at::kFloat)).log_().neg_().log_().neg_();
}

// Rounds L_j = base[id(j)] + product[j] (float32) to T, writes them to out[j], and samples
// from the rounded values: the Gumbel-max race over softmax(L / T) with noise[j] (consumed:
// it is overwritten by the scaled row), or the argmax for greedy requests (noise unused, lowest
// vocabulary id on ties). Returns (vocabulary id, log q(id)); greedy requests return (argmax, 0).
// A row without a finite logit returns entry 0's id (log q = -inf when sampled).
template <typename T, typename Ids>
std::pair<int64_t, float> round_and_sample(const T* base, Ids id, const float* product, T* out, float* noise,
                                           int64_t n, float temperature) {
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
  // Pass 1 (fused): round, store, max of the scaled row, Gumbel race; the scaled values
  // replace the (consumed) noise in the row's scratch.
  float max = -INFINITY;
  Race race;
  int64_t winner = 0;  // entry of the race's winner
  for (int64_t j = 0; j < n; ++j) {
    const T rounded = static_cast<T>(static_cast<float>(base[id(j)]) + product[j]);
    out[j] = rounded;
    const float x = scaled_logit(static_cast<float>(rounded), temperature);
    max = x > max ? x : max;
    const uint64_t before = race.best;
    race.add(x, noise[j], id(j));
    winner = race.best != before ? j : winner;
    noise[j] = x;
  }
  // Pass 2, vectorised by ATen over the cache-hot scratch row: the normaliser.
  float sum = 0.0f;
  if (max > -INFINITY)
    sum = at::from_blob(noise, {n}, at::TensorOptions().dtype(at::kFloat)).sub_(max).exp_().sum().item<float>();
  const float xt = scaled_logit(static_cast<float>(out[winner]), temperature);
  const float logprob = (sum > 0.0f && xt > -INFINITY) ? (xt - max) - std::log(sum) : -INFINITY;
  return {id(winner), logprob};  // entry 0 when nothing can be drawn (a row without a finite logit)
}

}  // namespace dspark::cpu::markov
