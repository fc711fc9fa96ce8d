// CUDA binding of dspark::markov_draft: checks and inputs shared with CPU and markov_draft_topk
// (common/markov_draft_args.h, cuda/markov_draft_inputs.h), scratch allocation, one cooperative
// launch per round.
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
#include "cuda/device_sms.h"
#include "cuda/launch_check.h"
#include "cuda/markov_draft.h"
#include "cuda/markov_draft_inputs.h"
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

// DSPARK_MARKOV_DRAFT_KERNEL selects the phase-B variant, read once: unset or "default" (tensor
// cores where the dtype allows), "fma" (CUDA-core FMAs: the same bits as "legacy") or "legacy"
// (the first kernel, one Philox call per element), kept as the references the tests compare against.
MarkovKernel asked_kernel() {
  static const MarkovKernel kind = [] {
    const char* env = std::getenv("DSPARK_MARKOV_DRAFT_KERNEL");
    const std::string v = env == nullptr ? "default" : env;
    TORCH_CHECK(
        v == "default" || v == "fma" || v == "legacy",
        "dspark::markov_draft: environment variable DSPARK_MARKOV_DRAFT_KERNEL must be default, fma or legacy, got '",
        v, "'");
    return v == "legacy" ? MarkovKernel::kLegacy : v == "fma" ? MarkovKernel::kFma : MarkovKernel::kTensorCore;
  }();
  return kind;
}

// dtype, V, r, requests in a chunk (min(R, 32): the sub-tiles), device, SMs the current stream may use
using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, int, int>;

std::mutex plans_mutex;
std::map<PlanKey, MarkovDraftLaunch> plans;

// Launch plans depend only on (dtype, V, r, min(R, 32), device, SMs the current stream may use): computed
// once per key (the shared-memory attribute and occupancy queries stay out of later calls,
// including CUDA-graph captures); a green context with fewer SMs gets its own plan.
std::pair<PlanKey, MarkovDraftLaunch> cached_plan(DType dtype, int64_t vocab, int64_t rank, int64_t requests,
                                                  int device) {
  cudaError_t err = cudaSuccess;
  const int sms = available_sms(device, c10::cuda::getCurrentCUDAStream(), &err);
  DSPARK_CUDA_CHECK(err);
  const int64_t chunk = requests < 32 ? requests : 32;
  const PlanKey key = std::make_tuple(static_cast<int>(dtype), vocab, rank, chunk, device, sms);
  const std::lock_guard<std::mutex> lock(plans_mutex);
  auto it = plans.find(key);
  if (it != plans.end()) return {key, it->second};
  const MarkovDraftLaunch plan = plan_markov_draft(dtype, vocab, rank, chunk, device, sms, allow_resident_w2(),
                                                   asked_kernel(), &err);
  DSPARK_CUDA_CHECK(err);
  plans.emplace(key, plan);
  return {key, plan};
}

// Keeps the plan the launch fell back to (fewer blocks than planned did not fit).
void keep_plan(const PlanKey& key, const MarkovDraftLaunch& plan) {
  const std::lock_guard<std::mutex> lock(plans_mutex);
  plans[key] = plan;
}

// Arguments checked by markov_draft_op (common/markov_draft_args.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> markov_draft(const MarkovDraftArgs& a,
                                                                        const MarkovDraftSizes& s) {
  const c10::cuda::CUDAGuard guard(a.base_logits.device());
  // The logits phase stages a [32, r] w2 tile and [32, r] head vectors in shared memory.
  DSPARK_CHECK(s.rank <= 512, "dspark::markov_draft", "w1",
               "must have rank r <= 512 on CUDA (shared-memory tiles), got r = ", s.rank);
  const int64_t R = s.requests, G = s.gamma, V = s.vocab, r = s.rank;
  const auto fopts = a.base_logits.options().dtype(at::kFloat);
  auto tokens = at::empty({R, G}, a.anchor.options());
  auto draft_logits = at::empty({R, G, V}, a.base_logits.options());
  auto token_logprob = at::empty({R, G}, fopts);  // every entry written by the kernel
  auto confidence = s.confidence == ConfidenceInput::kNone ? at::ones({R, G}, fopts) : at::empty({R, G}, fopts);
  if (R == 0 || G == 0) return {tokens, draft_logits, token_logprob, confidence};

  const MarkovDraftInputs in(a, s);
  const DType dtype = to_dtype(in.base_logits, "dspark::markov_draft", "base_logits");
  auto [plan_key, plan] = cached_plan(dtype, V, r, R, a.base_logits.get_device());
  const int64_t tiles = (V + kMarkovTileRows - 1) / kMarkovTileRows;  // phase B's partials, per tile and request
  auto head_vector = at::empty({R, r}, fopts);
  // RNN state, zero (s_0): [R, r] updated in place by the legacy kernel's head_step; the other
  // kernels double-buffer it ([2, R, r], see markov_head.cuh head_units).
  auto state = s.head == MarkovHead::kRnn ? at::zeros({plan.kind == MarkovKernel::kLegacy ? 1 : 2, R, r}, fopts)
                                          : head_vector;
  auto part_max = at::empty({R, tiles}, fopts), part_sum = at::empty({R, tiles}, fopts);
  auto part_key = at::empty({R, tiles}, a.anchor.options());

  MarkovDraftParams p{};
  in.fill(p, dtype, s);
  MarkovDraftInputs::fill_outputs(p, tokens, draft_logits, token_logprob, confidence, head_vector, state);
  p.part_max = part_max.data_ptr<float>();
  p.part_sum = part_sum.data_ptr<float>();
  p.part_key = reinterpret_cast<unsigned long long*>(part_key.data_ptr<int64_t>());
  const int planned = plan.blocks;
  DSPARK_CUDA_CHECK(launch_markov_draft(p, &plan, c10::cuda::getCurrentCUDAStream()));
  if (plan.blocks != planned) keep_plan(plan_key, plan);
  return {tokens, draft_logits, token_logprob, confidence};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CUDA, m) { m.impl("markov_draft", &markov_draft_op<markov_draft>); }

}  // namespace dspark::cuda
