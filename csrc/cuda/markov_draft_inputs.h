// The inputs of one markov_draft / markov_draft_topk launch, shared by both CUDA bindings:
// contiguous copies of the arguments (alive until the launch is queued) and the part of
// MarkovDraftParams that points into them. Weights stay in their storage dtype; the kernels do
// every product themselves (fixed order). Host code only.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "common/markov_draft_args.h"
#include "common/verify_q_args.h"
#include "cuda/markov_draft.h"

namespace dspark::cuda {

struct MarkovDraftInputs {
  at::Tensor base_logits, anchor, w1, w2, temperature, seed, offset;
  // Only what the call's head and confidence input read (the others stay None).
  std::optional<at::Tensor> hidden, head_weight, head_bias, conf_weight, conf_bias, conf_scale;
  std::optional<at::Tensor> top_k, top_p, min_p;

  MarkovDraftInputs(const MarkovDraftArgs& a, const MarkovDraftSizes& s)
      : base_logits(a.base_logits.contiguous()),
        anchor(a.anchor.contiguous()),
        w1(a.w1.contiguous()),
        w2(a.w2.contiguous()),
        temperature(a.temperature.contiguous()),
        seed(a.seed.contiguous()),
        offset(a.offset.contiguous()),
        hidden(contiguous_or_none(a.hidden)),
        top_k(contiguous_or_none(a.top_k)),
        top_p(contiguous_or_none(a.top_p)),
        min_p(contiguous_or_none(a.min_p)) {
    if (s.head == MarkovHead::kGated) {
      head_weight = a.gate_weight->contiguous();
      head_bias = a.gate_bias->contiguous();
    } else if (s.head == MarkovHead::kRnn) {
      head_weight = a.rnn_weight->contiguous();
      head_bias = a.rnn_bias->contiguous();
    }
    if (s.confidence != ConfidenceInput::kNone) {
      conf_weight = a.conf_weight->contiguous();
      conf_bias = a.conf_bias->contiguous();
      conf_scale = contiguous_or_none(a.conf_scale);
    }
  }

  // Sizes, head kind and input pointers of p; outputs and scratch are the binding's.
  void fill(MarkovDraftParams& p, DType dtype, const MarkovDraftSizes& s) const {
    p.dtype = dtype;
    p.requests = s.requests, p.gamma = s.gamma, p.vocab = s.vocab, p.rank = s.rank, p.hidden_size = s.hidden;
    p.head = static_cast<int>(s.head);
    p.confidence = static_cast<int>(s.confidence);
    p.base_logits = base_logits.data_ptr();
    p.anchor = anchor.data_ptr<int64_t>();
    p.w1 = w1.data_ptr();
    p.w2 = w2.data_ptr();
    p.temperature = temperature.data_ptr<float>();
    p.seed = seed.data_ptr<int64_t>();
    p.offset = offset.data_ptr<int64_t>();
    p.hidden = hidden ? hidden->data_ptr() : nullptr;
    p.head_weight = head_weight ? head_weight->data_ptr() : nullptr;
    p.head_bias = head_bias ? head_bias->data_ptr() : nullptr;
    p.conf_weight = conf_weight ? conf_weight->data_ptr() : nullptr;
    p.conf_bias = conf_bias ? conf_bias->data_ptr() : nullptr;
    p.conf_scale = data_or_null<float>(conf_scale);
    p.top_k = data_or_null<int64_t>(top_k);
    p.top_p = data_or_null<float>(top_p);
    p.min_p = data_or_null<float>(min_p);
  }

  // The outputs [R, γ] / [R, γ, V or K] and head scratch (head_vector [R, r], state: see
  // MarkovDraftParams::state) that both kernels write.
  static void fill_outputs(MarkovDraftParams& p, at::Tensor& tokens, at::Tensor& draft_logits,
                           at::Tensor& token_logprob, at::Tensor& confidence, at::Tensor& head_vector,
                           at::Tensor& state) {
    p.tokens = tokens.data_ptr<int64_t>();
    p.draft_logits = draft_logits.data_ptr();
    p.token_logprob = token_logprob.data_ptr<float>();
    p.confidence_out = confidence.data_ptr<float>();
    p.head_vector = head_vector.data_ptr<float>();
    p.state = state.data_ptr<float>();
  }
};

}  // namespace dspark::cuda
