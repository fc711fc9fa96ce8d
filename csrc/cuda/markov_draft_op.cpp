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

#include "common/markov_draft_args.h"
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

// Launch plans depend only on (dtype, V, r, device): computed once (device queries and the
// shared-memory attribute stay out of later calls, including CUDA-graph captures).
MarkovDraftLaunch cached_plan(DType dtype, int64_t vocab, int64_t rank, int device) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int64_t, int64_t, int>, MarkovDraftLaunch> plans;
  const auto key = std::make_tuple(static_cast<int>(dtype), vocab, rank, device);
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  if (it != plans.end()) return it->second;
  cudaError_t err = cudaSuccess;
  const MarkovDraftLaunch plan = plan_markov_draft(dtype, vocab, rank, device, allow_resident_w2(), &err);
  DSPARK_CUDA_CHECK(err);
  plans.emplace(key, plan);
  return plan;
}

// Arguments checked by markov_draft_op (common/markov_draft_args.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> markov_draft(const MarkovDraftArgs& a,
                                                                        const MarkovDraftSizes& s) {
  const c10::cuda::CUDAGuard guard(a.base_logits.device());
  DSPARK_CHECK(!s.filters, "dspark::markov_draft", "top_k",
               "and top_p / min_p (SPEC §9 filters) are not implemented by the dense CUDA kernel yet: use "
               "markov_draft_topk (filters supported on CUDA) or filter on CPU");
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
  const MarkovDraftLaunch plan = cached_plan(dtype, V, r, a.base_logits.get_device());
  const int64_t blocks = plan.blocks;
  auto head_vector = at::empty({R, r}, fopts);
  auto state = s.head == MarkovHead::kRnn ? at::zeros({R, r}, fopts) : head_vector;
  auto part_max = at::empty({blocks, R}, fopts), part_sum = at::empty({blocks, R}, fopts);
  auto part_key = at::empty({blocks, R}, a.anchor.options());

  MarkovDraftParams p{};
  in.fill(p, dtype, s);
  MarkovDraftInputs::fill_outputs(p, tokens, draft_logits, token_logprob, confidence, head_vector, state);
  p.part_max = part_max.data_ptr<float>();
  p.part_sum = part_sum.data_ptr<float>();
  p.part_key = reinterpret_cast<unsigned long long*>(part_key.data_ptr<int64_t>());
  DSPARK_CUDA_CHECK(launch_markov_draft(p, plan, c10::cuda::getCurrentCUDAStream()));
  return {tokens, draft_logits, token_logprob, confidence};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CUDA, m) { m.impl("markov_draft", &markov_draft_op<markov_draft>); }

}  // namespace dspark::cuda
