// CUDA binding of dspark::markov_draft_topk: checks (shared with CPU and markov_draft),
// candidate selection (radix-select kernel, or torch.topk on packed keys for K > 1024), then
// one launch of the pruned draft kernel.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/markov_draft_args.h"
#include "cuda/launch_check.h"
#include "cuda/markov_draft_topk.h"
#include "cuda/torch_dtype.h"

namespace dspark::cuda {
namespace {

// [rows, K] candidates of U [rows, V] for K beyond the kernel's shared-memory sort: the same
// total order (value with NaN as -inf, then the lower id) as one int64 per entry,
// (ordered value bits - 2^31) * 2^32 + (2^32 - 1 - id), whose K largest torch.topk returns
// sorted. Costs an [rows, V] int64 temporary; no host sync.
at::Tensor select_candidates_topk(const at::Tensor& U, int64_t K) {
  const auto u = U.to(at::kFloat).nan_to_num(-INFINITY, INFINITY, -INFINITY);
  const auto bits = u.view(at::kInt).to(at::kLong).bitwise_and(0xFFFFFFFFLL);  // raw float bits
  const auto negative = bits.ge(0x80000000LL);
  const auto ordered = at::where(negative, bits.bitwise_not().bitwise_and(0xFFFFFFFFLL), bits.bitwise_or(0x80000000LL));
  const auto low = at::arange(U.size(-1), U.options().dtype(at::kLong)).neg().add(0xFFFFFFFFLL);
  const auto key = ordered.sub(0x80000000LL).mul(int64_t{1} << 32).add(low);
  const auto best = std::get<0>(at::topk(key, K, -1, /*largest=*/true, /*sorted=*/true));
  return best.bitwise_and(0xFFFFFFFFLL).neg().add(0xFFFFFFFFLL);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> markov_draft_topk(
    const at::Tensor& base_logits, const at::Tensor& anchor, const at::Tensor& w1, const at::Tensor& w2,
    const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset, int64_t num_candidates,
    const std::optional<at::Tensor>& hidden, const std::optional<at::Tensor>& gate_weight,
    const std::optional<at::Tensor>& gate_bias, const std::optional<at::Tensor>& rnn_weight,
    const std::optional<at::Tensor>& rnn_bias, const std::optional<at::Tensor>& conf_weight,
    const std::optional<at::Tensor>& conf_bias, const std::optional<at::Tensor>& conf_scale,
    const std::optional<at::Tensor>& top_k, const std::optional<at::Tensor>& top_p,
    const std::optional<at::Tensor>& min_p) {
  const MarkovDraftSizes s = check_markov_draft_args(
      "dspark::markov_draft_topk", base_logits, anchor, w1, w2, temperature, seed, offset, hidden, gate_weight,
      gate_bias, rnn_weight, rnn_bias, conf_weight, conf_bias, conf_scale, top_k, top_p, min_p);
  check_num_candidates(num_candidates, s);
  const c10::cuda::CUDAGuard guard(base_logits.device());
  const int64_t R = s.requests, G = s.gamma, V = s.vocab, r = s.rank, K = num_candidates;
  const auto fopts = base_logits.options().dtype(at::kFloat);
  auto tokens = at::empty({R, G}, anchor.options());
  auto draft_logits = at::empty({R, G, K}, base_logits.options());
  auto token_logprob = at::empty({R, G}, fopts);  // every entry written by the kernel
  auto confidence = s.confidence == ConfidenceInput::kNone ? at::ones({R, G}, fopts) : at::empty({R, G}, fopts);
  if (R == 0 || G == 0)
    return {tokens, at::empty({R, G, K}, anchor.options()), draft_logits, token_logprob, confidence};

  const auto U = base_logits.contiguous(), x0 = anchor.contiguous();
  const auto w1c = w1.contiguous(), w2c = w2.contiguous();
  const auto temp = temperature.contiguous(), sd = seed.contiguous(), off = offset.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const DType dtype = to_dtype(U, "dspark::markov_draft_topk", "base_logits");

  at::Tensor draft_ids;
  if (K <= kMaxSelectCandidates) {
    draft_ids = at::empty({R, G, K}, anchor.options());
    DSPARK_CUDA_CHECK(
        launch_select_candidates(dtype, U.data_ptr(), R * G, V, K, draft_ids.data_ptr<int64_t>(), stream));
  } else {
    draft_ids = select_candidates_topk(U, K).contiguous();
  }

  at::Tensor hc, head_w, head_b, conf_w, conf_b, scale;
  if (hidden) hc = hidden->contiguous();
  if (s.head == MarkovHead::kGated) {
    head_w = gate_weight->contiguous();
    head_b = gate_bias->contiguous();
  } else if (s.head == MarkovHead::kRnn) {
    head_w = rnn_weight->contiguous();
    head_b = rnn_bias->contiguous();
  }
  if (s.confidence != ConfidenceInput::kNone) {
    conf_w = conf_weight->contiguous();
    conf_b = conf_bias->contiguous();
    if (conf_scale) scale = conf_scale->contiguous();
  }
  auto head_vector = at::empty({R, r}, fopts);
  auto state = s.head == MarkovHead::kRnn ? at::zeros({R, r}, fopts) : head_vector;

  MarkovDraftTopkParams t{};
  MarkovDraftParams& p = t.dense;
  p.dtype = dtype;
  p.requests = R, p.gamma = G, p.vocab = V, p.rank = r, p.hidden_size = s.hidden;
  p.head = static_cast<int>(s.head);
  p.confidence = static_cast<int>(s.confidence);
  p.base_logits = U.data_ptr();
  p.anchor = x0.data_ptr<int64_t>();
  p.w1 = w1c.data_ptr();
  p.w2 = w2c.data_ptr();
  p.temperature = temp.data_ptr<float>();
  p.seed = sd.data_ptr<int64_t>();
  p.offset = off.data_ptr<int64_t>();
  p.hidden = hc.defined() ? hc.data_ptr() : nullptr;
  p.head_weight = head_w.defined() ? head_w.data_ptr() : nullptr;
  p.head_bias = head_b.defined() ? head_b.data_ptr() : nullptr;
  p.conf_weight = conf_w.defined() ? conf_w.data_ptr() : nullptr;
  p.conf_bias = conf_b.defined() ? conf_b.data_ptr() : nullptr;
  p.conf_scale = scale.defined() ? scale.data_ptr<float>() : nullptr;
  const auto tk = top_k ? top_k->contiguous() : at::Tensor();
  const auto tp = top_p ? top_p->contiguous() : at::Tensor();
  const auto mp = min_p ? min_p->contiguous() : at::Tensor();
  p.top_k = tk.defined() ? tk.data_ptr<int64_t>() : nullptr;
  p.top_p = tp.defined() ? tp.data_ptr<float>() : nullptr;
  p.min_p = mp.defined() ? mp.data_ptr<float>() : nullptr;
  p.tokens = tokens.data_ptr<int64_t>();
  p.draft_logits = draft_logits.data_ptr();
  p.token_logprob = token_logprob.data_ptr<float>();
  p.confidence_out = confidence.data_ptr<float>();
  p.head_vector = head_vector.data_ptr<float>();
  p.state = state.data_ptr<float>();
  t.num_candidates = K;
  t.draft_ids = draft_ids.data_ptr<int64_t>();
  DSPARK_CUDA_CHECK(launch_markov_draft_topk(t, stream));
  return {tokens, draft_ids, draft_logits, token_logprob, confidence};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CUDA, m) { m.impl("markov_draft_topk", &markov_draft_topk); }

}  // namespace dspark::cuda
