// Vectorised whole-row helpers for the CPU sampling paths. They run ATen's CPU kernels
// (runtime-dispatched AVX2/AVX-512 exp and log) on one row at a time, which is several times
// faster than scalar libm calls; called inside at::parallel_for they run single-threaded.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "cpu/philox_batch.h"
#include "dspark/philox.h"
#include "dspark/sampling.h"

namespace dspark::cpu {

// A row's distribution softmax(row / T) with NaN read as -inf (probability 0), kept as the
// max and the sum of exp(x - max) like SoftmaxStats: a log-normaliser max + log(sum) would
// lose log(sum) to rounding once |row / T| is large (at 1e8 the ulp exceeds log V; at
// low temperatures far smaller logits get there), and every probability with it.
struct RowDist {
  at::Tensor scaled;          // [V] float32, row / T
  float max = -INFINITY;      // max of scaled; -inf for a row without a finite logit
  float sum = 0.0f;           // Σ exp(scaled - max); NaN when a logit is +inf (no probability
                              // then, as in SoftmaxStats::prob)

  float prob_of(int64_t v) const {
    const float x = scaled.data_ptr<float>()[v];
    return (sum > 0.0f && x > -INFINITY) ? std::exp(x - max) / sum : 0.0f;
  }
  // [V] probabilities (all 0 for a row without a finite logit).
  at::Tensor probs() const {
    if (!(sum > 0.0f)) return at::zeros_like(scaled);
    return (scaled - max).exp_().div_(sum);
  }
};

template <typename T>
RowDist row_dist(const T* row, int64_t vocab, float temperature) {
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  const at::Tensor view = at::from_blob(const_cast<T*>(row), {vocab}, at::TensorOptions().dtype(dtype));
  // One pass to a new float32 row (the input is never written), one to map NaN to -inf.
  at::Tensor x = dtype == at::kFloat ? at::div(view, temperature) : view.to(at::kFloat).div_(temperature);
  x.nan_to_num_(-INFINITY, INFINITY, -INFINITY);
  RowDist d;
  d.scaled = x;
  d.max = x.max().item<float>();
  if (d.max > -INFINITY) d.sum = (x - d.max).exp_().sum().item<float>();
  return d;
}

// [V] Gumbel noise -log(-log(U_v)) of (seed, offset, purpose, position, v), as gumbel_from_bits.
inline at::Tensor gumbel_row(int64_t vocab, int64_t seed, int64_t offset, Purpose purpose, uint32_t position) {
  auto u = at::empty({vocab}, at::kFloat);
  fill_open_uniforms(u.data_ptr<float>(), vocab, seed, offset, purpose, position);
  return u.log_().neg_().log_().neg_();
}

// The Gumbel-max race of SPEC §2 over log-weights [V]: highest score, lowest index on ties;
// -inf and NaN never win. Returns -1 when no candidate has a finite log-weight.
inline int64_t race_winner(const at::Tensor& log_weight, const at::Tensor& gumbel) {
  auto score = log_weight + gumbel;
  score.masked_fill_(score.isnan(), -INFINITY);
  if (!(score.max().item<float>() > -INFINITY)) return -1;
  return score.argmax().item<int64_t>();  // the first maximal index
}

}  // namespace dspark::cpu
