// Sampling arithmetic shared by the CPU and CUDA kernels (host + device).
//
// Every draw from a distribution is a "race": each candidate v gets a score
//   score_v = log(w_v) + G_v,   G_v = -log(-log(U_v)) a Gumbel variable,
// and the candidate with the largest score wins (ties: lowest index). For unnormalised
// weights w this samples v with probability w_v / sum(w) exactly, needs no normaliser,
// and can be reduced in any order, which is what lets CPU loops and CUDA block
// reductions agree. Candidates with w_v = 0 (score -inf) or NaN never win; a race with
// no candidate returns index 0, so a corrupt (NaN) row still yields an in-range id.
#pragma once

#include <cmath>
#include <cstdint>

#include "dspark/philox.h"

namespace dspark {

// temperature[r] <= kGreedyTemperature means argmax decoding (SPEC §2). Written as
// !(T > threshold) so that a NaN temperature is greedy too; the Python twin is
// dspark_ops/ops/greedy.py, and every kernel and reference tests greediness through these two.
constexpr float kGreedyTemperature = 1e-5f;

DSPARK_HD bool is_greedy(float temperature) { return !(temperature > kGreedyTemperature); }

DSPARK_HD float gumbel_from_bits(uint32_t bits) { return -logf(-logf(bits_to_open_uniform(bits))); }

// 1/T, computed once per request. Every kernel, CPU twin and reference scales a logit as
// L * (1/T) in float32 (never L / T): the hot loops multiply instead of dividing, and all of
// them round the same way, so CPU and CUDA draw identical numbers.
// For T in [2^-126, 2^126) (every sampling temperature: T > 1e-5) this is the IEEE reciprocal.
// T >= 2^126 gives 0 (sampling uniform over the finite logits, as T = inf) instead of a
// subnormal; greedy temperatures (T <= 1e-5, NaN) give a value nobody reads. On the device the
// IEEE reciprocal is nvcc's own fast path (approximate reciprocal + one Newton step, exact in
// that range) without its slow-path subroutine: a CALL anywhere in a kernel makes ptxas save
// live registers around it, which spilled the verify_chain row pass.
DSPARK_HD float inverse_temperature(float temperature) {
  constexpr float kLargest = 0x1p126f;
#ifdef __CUDA_ARCH__
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(temperature));
  r = __fmaf_rn(r, __fmaf_rn(-temperature, r, 1.0f), r);
#else
  const float r = 1.0f / temperature;
#endif
  return temperature >= kLargest ? 0.0f : r;
}

// A logit scaled by 1/T, with NaN read as -inf: a NaN entry has probability 0. On the device
// __fmul_rn keeps nvcc from contracting the product with a following add into an FMA, which
// would round differently from the CPU (built with -ffp-contract=off for the same reason).
DSPARK_HD float scaled_logit(float logit, float inv_temperature) {
#ifdef __CUDA_ARCH__
  const float x = __fmul_rn(logit, inv_temperature);
#else
  const float x = logit * inv_temperature;
#endif
  return x == x ? x : -INFINITY;
}

// An entry of draft_probs as q: NaN and values <= 0 (padding read as -inf included) are 0.
DSPARK_HD float draft_prob(float q) { return q > 0.0f ? q : 0.0f; }

// A (score, index) pair packed so that unsigned comparison orders by score, then by the
// lower index: reductions (and atomicMax on CUDA) pick the SPEC's winner.
DSPARK_HD uint64_t race_key(float score, int64_t index) {
  const uint32_t bits = bit_cast<uint32_t>(score);
  const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(ordered) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(index));
}

// Scores that may take part in a race: finite or +inf, never NaN or -inf.
DSPARK_HD bool race_candidate(float score) { return score == score && score > -INFINITY; }

DSPARK_HD int64_t race_index(uint64_t key) {
  return key == 0 ? 0 : static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(key));
}

// The running winner of a race: add(log_weight, gumbel, index) for each candidate.
struct Race {
  uint64_t best = 0;

  DSPARK_HD void add(float log_weight, float gumbel, int64_t index) {
    if (!race_candidate(log_weight)) return;
    const float score = log_weight + gumbel;
    if (!race_candidate(score)) return;
    const uint64_t key = race_key(score, index);
    if (key > best) best = key;
  }
  DSPARK_HD void merge(uint64_t other) {
    if (other > best) best = other;
  }
  DSPARK_HD bool empty() const { return best == 0; }
  DSPARK_HD int64_t index() const { return race_index(best); }
};

// Gumbel races that skip the two logarithms of an entry's noise when the entry cannot win.
// gumbel_from_bits(bits) <= 16.64 for every word (the open uniform is at most 1 - 2^-24), so
// an entry with log_weight + kGumbelBound < best score so far has a strictly lower score than
// the current winner whatever its noise: skipping it never changes the winner.
// tests/test_verify_tree.py checks the bound against the Python twin of the generator.
constexpr float kGumbelBound = 17.5f;

struct BoundedRace {
  Race race;
  float best = -INFINITY;  // score of the current winner

  // True when an entry of this log-weight cannot win (or is no candidate at all).
  DSPARK_HD bool hopeless(float log_weight) const {
    return !race_candidate(log_weight) || log_weight + kGumbelBound < best;
  }
  DSPARK_HD void add(float log_weight, float gumbel, int64_t index) {
    const uint64_t before = race.best;
    race.add(log_weight, gumbel, index);
    if (race.best != before) best = log_weight + gumbel;
  }
  // add() with the noise computed only when the entry can win.
  DSPARK_HD void add_bits(float log_weight, uint32_t bits, int64_t index) {
    if (!hopeless(log_weight)) add(log_weight, gumbel_from_bits(bits), index);
  }
};

// Running softmax statistics of a row of scaled logits: max and sum of exp(x - max).
struct SoftmaxStats {
  float max = -INFINITY;
  float sum = 0.0f;

  DSPARK_HD void add(float x) {
    if (!(x > -INFINITY)) return;
    if (x > max) {
      sum = sum * expf(max - x) + 1.0f;
      max = x;
    } else {
      sum += expf(x - max);
    }
  }
  DSPARK_HD void merge(const SoftmaxStats& o) {
    if (!(o.max > -INFINITY)) return;
    if (!(max > -INFINITY)) {
      *this = o;
      return;
    }
    const float m = max > o.max ? max : o.max;
    sum = sum * expf(max - m) + o.sum * expf(o.max - m);
    max = m;
  }
  // Probability of an entry whose scaled logit is x; 0 for a row without a finite
  // normaliser: all -inf/NaN, or any +inf (inf / inf has no value; the draws from such a row
  // fall back to its logits, where the first +inf wins).
  DSPARK_HD float prob(float x) const {
    return (sum > 0.0f && max < INFINITY && x > -INFINITY) ? expf(x - max) / sum : 0.0f;
  }
};

// Greedy argmax with the lowest index winning ties; NaN never wins, an all-NaN row gives 0.
struct ArgMax {
  float value = -INFINITY;
  int64_t index = -1;

  DSPARK_HD void add(float v, int64_t i) {
    if (v > value || (v == value && index >= 0 && i < index) || (index < 0 && v == v)) {
      value = v;
      index = i;
    }
  }
  DSPARK_HD void merge(const ArgMax& o) {
    if (o.index >= 0) add(o.value, o.index);
  }
  DSPARK_HD int64_t result() const { return index < 0 ? 0 : index; }
};

}  // namespace dspark
