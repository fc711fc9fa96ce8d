// CUDA binding of dspark::markov_draft: checks (shared with CPU), the hidden-only parts of
// the heads as one GEMM each per round, scratch allocation, one cooperative launch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/markov_draft_args.h"
#include "cuda/launch_check.h"
#include "cuda/markov_draft.h"

namespace dspark::cuda {
namespace {

DType to_dtype(at::ScalarType t) {
  return t == at::kBFloat16 ? DType::kBFloat16 : t == at::kHalf ? DType::kFloat16 : DType::kFloat32;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> markov_draft(
    const at::Tensor& base_logits, const at::Tensor& anchor, const at::Tensor& w1, const at::Tensor& w2,
    const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
    const std::optional<at::Tensor>& hidden, const std::optional<at::Tensor>& gate_weight,
    const std::optional<at::Tensor>& gate_bias, const std::optional<at::Tensor>& rnn_weight,
    const std::optional<at::Tensor>& rnn_bias, const std::optional<at::Tensor>& conf_weight,
    const std::optional<at::Tensor>& conf_bias, const std::optional<at::Tensor>& conf_scale) {
  const MarkovDraftSizes s = check_markov_draft_args(base_logits, anchor, w1, w2, temperature, seed, offset, hidden,
                                                     gate_weight, gate_bias, rnn_weight, rnn_bias, conf_weight,
                                                     conf_bias, conf_scale);
  const c10::cuda::CUDAGuard guard(base_logits.device());
  const int64_t R = s.requests, G = s.gamma, V = s.vocab, r = s.rank, d = s.hidden;
  const auto fopts = base_logits.options().dtype(at::kFloat);
  auto tokens = at::empty({R, G}, anchor.options());
  auto draft_logits = at::empty({R, G, V}, base_logits.options());
  auto token_logprob = at::zeros({R, G}, fopts);
  auto confidence = at::ones({R, G}, fopts);
  if (R == 0 || G == 0) return {tokens, draft_logits, token_logprob, confidence};

  const auto U = base_logits.contiguous(), x0 = anchor.contiguous();
  const auto w1c = w1.contiguous(), w2c = w2.contiguous();
  const auto temp = temperature.contiguous(), sd = seed.contiguous(), off = offset.contiguous();
  at::Tensor hf, head_hidden, gate_w, rnn_w, conf_w, conf_hidden, scale;
  if (hidden) hf = hidden->to(at::kFloat);
  if (s.head == MarkovHead::kGated) {
    gate_w = gate_weight->contiguous();
    head_hidden = (at::matmul(hf, gate_w.narrow(1, 0, d).to(at::kFloat).t()) + gate_bias->to(at::kFloat)).contiguous();
  } else if (s.head == MarkovHead::kRnn) {
    rnn_w = rnn_weight->contiguous();
    head_hidden = (at::matmul(hf, rnn_w.narrow(1, 2 * r, d).to(at::kFloat).t()) + rnn_bias->to(at::kFloat)).contiguous();
  }
  if (s.confidence != ConfidenceInput::kNone) {
    conf_w = conf_weight->contiguous();
    conf_hidden = (at::matmul(hf, conf_w.narrow(0, 0, d).to(at::kFloat)) + conf_bias->to(at::kFloat)).contiguous();
    if (conf_scale) scale = conf_scale->contiguous();
  }

  cudaError_t err = cudaSuccess;
  const int blocks = markov_draft_blocks(to_dtype(U.scalar_type()), V, r, base_logits.get_device(), &err);
  DSPARK_CUDA_CHECK(err);
  auto head_vector = at::empty({R, r}, fopts);
  auto state = s.head == MarkovHead::kRnn ? at::zeros({R, r}, fopts) : head_vector;
  auto part_max = at::empty({blocks, R}, fopts), part_sum = at::empty({blocks, R}, fopts);
  auto part_key = at::empty({blocks, R}, anchor.options());

  MarkovDraftParams p{};
  p.dtype = to_dtype(U.scalar_type());
  p.requests = R, p.gamma = G, p.vocab = V, p.rank = r, p.hidden = d;
  p.head = static_cast<int>(s.head);
  p.confidence = static_cast<int>(s.confidence);
  p.base_logits = U.data_ptr();
  p.anchor = x0.data_ptr<int64_t>();
  p.w1 = w1c.data_ptr();
  p.w2 = w2c.data_ptr();
  p.temperature = temp.data_ptr<float>();
  p.seed = sd.data_ptr<int64_t>();
  p.offset = off.data_ptr<int64_t>();
  p.gate_weight = gate_w.defined() ? gate_w.data_ptr() : nullptr;
  p.rnn_weight = rnn_w.defined() ? rnn_w.data_ptr() : nullptr;
  p.head_hidden = head_hidden.defined() ? head_hidden.data_ptr<float>() : nullptr;
  p.conf_weight = conf_w.defined() ? conf_w.data_ptr() : nullptr;
  p.conf_hidden = conf_hidden.defined() ? conf_hidden.data_ptr<float>() : nullptr;
  p.conf_scale = scale.defined() ? scale.data_ptr<float>() : nullptr;
  p.tokens = tokens.data_ptr<int64_t>();
  p.draft_logits = draft_logits.data_ptr();
  p.token_logprob = token_logprob.data_ptr<float>();
  p.confidence_out = confidence.data_ptr<float>();
  p.head_vector = head_vector.data_ptr<float>();
  p.state = state.data_ptr<float>();
  p.part_max = part_max.data_ptr<float>();
  p.part_sum = part_sum.data_ptr<float>();
  p.part_key = reinterpret_cast<unsigned long long*>(part_key.data_ptr<int64_t>());
  DSPARK_CUDA_CHECK(launch_markov_draft(p, blocks, c10::cuda::getCurrentCUDAStream()));
  return {tokens, draft_logits, token_logprob, confidence};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CUDA, m) { m.impl("markov_draft", &markov_draft); }

}  // namespace dspark::cuda
