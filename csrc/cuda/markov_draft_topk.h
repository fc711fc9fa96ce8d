// Launchers of the markov_draft_topk kernels (declared for the torch binding, defined in
// markov_draft_topk.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/markov_draft.h"

namespace dspark::cuda {

// Largest K of the radix-select kernel (its survivors are sorted in shared memory); the binding
// selects larger K with torch.topk on packed (value, id) keys.
constexpr int64_t kMaxSelectCandidates = 1024;

// draft_ids [rows, K] = the K candidates of each row of base_logits [rows, V], best first
// (larger value, NaN as -inf, then the lower id). K <= kMaxSelectCandidates.
cudaError_t launch_select_candidates(DType dtype, const void* base_logits, int64_t rows, int64_t vocab,
                                     int64_t num_candidates, int64_t* draft_ids, cudaStream_t stream);

// The pruned draft: `dense` carries every markov_draft argument and scratch the head needs
// (head_vector [R, r], state [R, r]; w2 is read only at the candidates; draft_logits is
// [R, γ, K]; the part_* scratch is unused), plus the candidates draft_ids [R, γ, K].
struct MarkovDraftTopkParams {
  MarkovDraftParams dense;
  int64_t num_candidates;     // K
  const int64_t* draft_ids;   // [R, γ, K]
};

cudaError_t launch_markov_draft_topk(const MarkovDraftTopkParams& params, cudaStream_t stream);

}  // namespace dspark::cuda
