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

// A row's distribution softmax(row / T) with NaN read as -inf (probability 0).
struct RowDist {
  at::Tensor scaled;          // [V] float32, row / T
  float log_norm = -INFINITY;  // log Σ exp(scaled); -inf for a row without a finite logit

  float prob_of(int64_t v) const {
    const float x = scaled.data_ptr<float>()[v];
    return (log_norm > -INFINITY && x > -INFINITY) ? std::exp(x - log_norm) : 0.0f;
  }
  // [V] probabilities (all 0 for a row without a finite logit).
  at::Tensor probs() const {
    if (!(log_norm > -INFINITY)) return at::zeros_like(scaled);
    return (scaled - log_norm).exp_();
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
  d.log_norm = at::logsumexp(x, 0).item<float>();
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
