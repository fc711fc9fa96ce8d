// The draft distribution q of the verify kernels read one entry at a time (SPEC §9, §10),
// shared by verify_chain and verify_tree: a row of W entries holds logits (q = softmax(row * (1/T))
// with softmax statistics qs of the listed entries) or probabilities read as they are, dense
// (W = V, entry j is id j) or sparse (ids [W] lists each entry's id, -1 padding; q is 0 for
// every id not listed). No dense [V] q is ever formed from a sparse row.
#pragma once

#include "cuda/common.cuh"

namespace dspark::cuda {

// An id of a sparse row that takes part in q: in [0, V). -1 padding, and (without
// DSPARK_CHECK) any other out-of-range id, is left out: probability 0, outside the softmax.
__device__ __forceinline__ bool listed_id(int64_t id, int64_t vocab) { return id >= 0 && id < vocab; }

// q of the entry at `at` (an index into the draft tensors): logits or probs (exactly one
// non-null), ids (nullptr: dense).
template <typename TD>
__device__ __forceinline__ float draft_q_entry(const TD* __restrict__ logits, const float* __restrict__ probs,
                                               const int64_t* __restrict__ ids, int64_t at, int64_t vocab,
                                               const SoftmaxStats& qs, float inv_t) {
  if (ids && !listed_id(ids[at], vocab)) return 0.0f;
  if (probs) return draft_prob(probs[at]);
  return qs.prob(scaled_logit(to_float(logits[at]), inv_t));
}

}  // namespace dspark::cuda
