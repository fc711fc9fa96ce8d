// CUDA binding of dspark::markov_draft: checks (shared with CPU), contiguous inputs,
// scratch allocation, one cooperative launch per round.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "common/markov_draft_args.h"
#include "cuda/launch_check.h"
#include "cuda/markov_draft.h"
#include "cuda/torch_dtype.h"

namespace dspark::cuda {
namespace {

// DSPARK_MARKOV_RESIDENT=0 forces the streaming kernel (w2 re-read every position), e.g. to
// measure what the resident-w2 kernel gains.
bool allow_resident_w2() {
  static const bool allow = [] {
    const char* env = std::getenv("DSPARK_MARKOV_RESIDENT");
    return env == nullptr || std::string(env) != "0";
  }();
  return allow;
}

// DSPARK_MARKOV_DRAFT_KERNEL=legacy selects the previous kernel (one Philox call per element),
// kept as the reference the tests compare against; read once.
bool legacy_kernel() {
  static const bool legacy = [] {
    const char* env = std::getenv("DSPARK_MARKOV_DRAFT_KERNEL");
    return env != nullptr && std::string(env) == "legacy";
  }();
  return legacy;
}

// dtype, V, r, requests in a chunk (min(R, 32): the sub-tiles), device, SMs of the context
using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, int, int>;

std::mutex plans_mutex;
std::map<PlanKey, MarkovDraftLaunch> plans;

// Launch plans depend only on (dtype, V, r, min(R, 32), device, SMs the current context may use): computed
// once per key (the shared-memory attribute and occupancy queries stay out of later calls,
// including CUDA-graph captures); a green context with fewer SMs gets its own plan.
std::pair<PlanKey, MarkovDraftLaunch> cached_plan(DType dtype, int64_t vocab, int64_t rank, int64_t requests,
                                                  int device) {
  cudaError_t err = cudaSuccess;
  const int sms = available_sms(device, &err);
  DSPARK_CUDA_CHECK(err);
  const int64_t chunk = requests < 32 ? requests : 32;
  const PlanKey key = std::make_tuple(static_cast<int>(dtype), vocab, rank, chunk, device, sms);
  const std::lock_guard<std::mutex> lock(plans_mutex);
  auto it = plans.find(key);
  if (it != plans.end()) return {key, it->second};
  const MarkovDraftLaunch plan = plan_markov_draft(dtype, vocab, rank, chunk, device, sms, allow_resident_w2(),
                                                   legacy_kernel(), &err);
  DSPARK_CUDA_CHECK(err);
  plans.emplace(key, plan);
  return {key, plan};
}

// Keeps the plan the launch fell back to (fewer blocks than planned did not fit).
void keep_plan(const PlanKey& key, const MarkovDraftLaunch& plan) {
  const std::lock_guard<std::mutex> lock(plans_mutex);
  plans[key] = plan;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> markov_draft(
    const at::Tensor& base_logits, const at::Tensor& anchor, const at::Tensor& w1, const at::Tensor& w2,
    const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
    const std::optional<at::Tensor>& hidden, const std::optional<at::Tensor>& gate_weight,
    const std::optional<at::Tensor>& gate_bias, const std::optional<at::Tensor>& rnn_weight,
    const std::optional<at::Tensor>& rnn_bias, const std::optional<at::Tensor>& conf_weight,
    const std::optional<at::Tensor>& conf_bias, const std::optional<at::Tensor>& conf_scale,
    const std::optional<at::Tensor>& top_k, const std::optional<at::Tensor>& top_p,
    const std::optional<at::Tensor>& min_p) {
  const MarkovDraftSizes s = check_markov_draft_args("dspark::markov_draft", base_logits, anchor, w1, w2, temperature,
                                                     seed, offset, hidden, gate_weight, gate_bias, rnn_weight, rnn_bias,
                                                     conf_weight, conf_bias, conf_scale, top_k, top_p, min_p);
  const c10::cuda::CUDAGuard guard(base_logits.device());
  // The logits phase stages a [32, r] w2 tile and [32, r] head vectors in shared memory.
  DSPARK_CHECK(s.rank <= 512, "dspark::markov_draft", "w1",
               "must have rank r <= 512 on CUDA (shared-memory tiles), got r = ", s.rank);
  const int64_t R = s.requests, G = s.gamma, V = s.vocab, r = s.rank, d = s.hidden;
  const auto fopts = base_logits.options().dtype(at::kFloat);
  auto tokens = at::empty({R, G}, anchor.options());
  auto draft_logits = at::empty({R, G, V}, base_logits.options());
  auto token_logprob = at::empty({R, G}, fopts);  // every entry written by the kernel
  auto confidence = s.confidence == ConfidenceInput::kNone ? at::ones({R, G}, fopts) : at::empty({R, G}, fopts);
  if (R == 0 || G == 0) return {tokens, draft_logits, token_logprob, confidence};

  const auto U = base_logits.contiguous(), x0 = anchor.contiguous();
  const auto w1c = w1.contiguous(), w2c = w2.contiguous();
  const auto temp = temperature.contiguous(), sd = seed.contiguous(), off = offset.contiguous();
  // Weights in their storage dtype; the kernel does every product itself (fixed order).
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

  auto [plan_key, plan] = cached_plan(to_dtype(U, "dspark::markov_draft", "base_logits"), V, r, R,
                                      base_logits.get_device());
  const int64_t blocks = static_cast<int64_t>(plan.blocks) * plan.subtiles;  // partial slots
  auto head_vector = at::empty({R, r}, fopts);
  auto state = s.head == MarkovHead::kRnn ? at::zeros({R, r}, fopts) : head_vector;
  auto part_max = at::empty({blocks, R}, fopts), part_sum = at::empty({blocks, R}, fopts);
  auto part_key = at::empty({blocks, R}, anchor.options());

  MarkovDraftParams p{};
  p.dtype = to_dtype(U, "dspark::markov_draft", "base_logits");
  p.requests = R, p.gamma = G, p.vocab = V, p.rank = r, p.hidden_size = d;
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
  p.tokens = tokens.data_ptr<int64_t>();
  p.draft_logits = draft_logits.data_ptr();
  p.token_logprob = token_logprob.data_ptr<float>();
  p.confidence_out = confidence.data_ptr<float>();
  p.head_vector = head_vector.data_ptr<float>();
  p.state = state.data_ptr<float>();
  p.part_max = part_max.data_ptr<float>();
  p.part_sum = part_sum.data_ptr<float>();
  p.part_key = reinterpret_cast<unsigned long long*>(part_key.data_ptr<int64_t>());
  // SPEC §9 filters (null when not given; the kernel normalises the values per request).
  at::Tensor tk, tp, mp;
  if (top_k) tk = top_k->contiguous();
  if (top_p) tp = top_p->contiguous();
  if (min_p) mp = min_p->contiguous();
  p.top_k = tk.defined() ? tk.data_ptr<int64_t>() : nullptr;
  p.top_p = tp.defined() ? tp.data_ptr<float>() : nullptr;
  p.min_p = mp.defined() ? mp.data_ptr<float>() : nullptr;
  const int planned = plan.blocks;
  DSPARK_CUDA_CHECK(launch_markov_draft(p, &plan, c10::cuda::getCurrentCUDAStream()));
  if (plan.blocks != planned) keep_plan(plan_key, plan);
  return {tokens, draft_logits, token_logprob, confidence};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CUDA, m) { m.impl("markov_draft", &markov_draft); }

}  // namespace dspark::cuda
