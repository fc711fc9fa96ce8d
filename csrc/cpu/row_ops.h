// Whole-row passes over one logits row on the CPU, shared by the verify and draft kernels.
// Each pass reads the row once; callers combine them so a row is read a fixed small number
// of times. Arithmetic is float32 whatever the storage type (SPEC §2).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "dspark/sampling.h"

namespace dspark::cpu {

template <typename T>
inline float load(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

// Softmax statistics of row / temperature.
template <typename T>
SoftmaxStats row_softmax_stats(const T* row, int64_t vocab, float temperature) {
  SoftmaxStats s;
  for (int64_t v = 0; v < vocab; ++v) s.add(scaled_logit(load(row, v), temperature));
  return s;
}

// argmax of the raw logits, lowest index on ties, 0 for an all-NaN row.
template <typename T>
int64_t row_argmax(const T* row, int64_t vocab) {
  ArgMax a;
  for (int64_t v = 0; v < vocab; ++v) a.add(load(row, v), v);
  return a.result();
}

// Calls visit(v, gumbel_v) for v in [0, vocab) with the Gumbel noise of
// (seed, offset, purpose, position, v): one Philox call per four entries.
template <typename Visit>
void for_each_gumbel(int64_t vocab, int64_t seed, int64_t offset, Purpose purpose, uint32_t position,
                     Visit&& visit) {
  for (int64_t base = 0; base < vocab; base += 4) {
    const Philox4 bits = random_block(seed, offset, purpose, position, static_cast<uint64_t>(base));
    const int64_t n = vocab - base < 4 ? vocab - base : 4;
    for (int64_t lane = 0; lane < n; ++lane) visit(base + lane, gumbel_from_bits(bits.v[lane]));
  }
}

}  // namespace dspark::cpu
