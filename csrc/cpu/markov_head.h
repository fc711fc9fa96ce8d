// The sequential part of markov_draft / markov_draft_topk on the CPU (SPEC §3), one position
// at a time over the whole batch: the head step (e_k = w1[x_{k-1}] -> the head vector P_k
// that multiplies w2) and the confidence step. Mirrors head_step in csrc/cuda/markov_head.cuh.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "common/markov_draft_args.h"

namespace dspark::cpu {

class MarkovHeadCpu {
 public:
  // The head and confidence weights of one call, converted once to float32 (arithmetic is
  // float32 whatever the storage dtype). Arguments checked by check_markov_draft_args.
  MarkovHeadCpu(const MarkovDraftSizes& s, const MarkovDraftArgs& a);

  // e_k = w1[x_{k-1}] in float32: prev [R] int64 (in range) -> [R, r].
  at::Tensor embed(const at::Tensor& prev) const;

  // The head vector P_k [R, r] at position k (1-based) from e_k [R, r]: e_k (vanilla),
  // g ⊙ e_k (gated) or tanh(o) (RNN, which also advances its state s_{k-1} -> s_k).
  at::Tensor head_step(int64_t k, const at::Tensor& e);

  // confidence[:, k-1] of the [R, γ] output from e_k [R, r]; nothing without a confidence head.
  void confidence_step(int64_t k, const at::Tensor& e, at::Tensor& confidence) const;

 private:
  at::Tensor hidden_at(int64_t k) const;  // h_k [R, d]

  MarkovDraftSizes s_;
  at::Tensor w1_;                  // [V, r] storage dtype
  at::Tensor hidden_;              // [R, γ, d] float32 or undefined
  at::Tensor head_w_, head_b_;     // gated [r, d + r], [r] / RNN [3r, 2r + d], [3r] float32
  at::Tensor state_;               // [R, r] s_{k-1} (RNN)
  at::Tensor conf_w_, conf_b_;     // [1, d] or [1, d + r], [1] float32
  at::Tensor conf_scale_;          // [γ] float32
};

}  // namespace dspark::cpu
