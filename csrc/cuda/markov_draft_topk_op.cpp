// CUDA binding of dspark::markov_draft_topk: checks and inputs (shared with CPU and markov_draft),
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
#include "cuda/markov_draft_inputs.h"
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

// Arguments checked by markov_draft_topk_op (common/markov_draft_args.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> markov_draft_topk(const MarkovDraftArgs& a,
                                                                                         const MarkovDraftSizes& s,
                                                                                         int64_t num_candidates) {
  const c10::cuda::CUDAGuard guard(a.base_logits.device());
  const int64_t R = s.requests, G = s.gamma, V = s.vocab, r = s.rank, K = num_candidates;
  const auto fopts = a.base_logits.options().dtype(at::kFloat);
  auto tokens = at::empty({R, G}, a.anchor.options());
  auto draft_logits = at::empty({R, G, K}, a.base_logits.options());
  auto token_logprob = at::empty({R, G}, fopts);  // every entry written by the kernel
  auto confidence = s.confidence == ConfidenceInput::kNone ? at::ones({R, G}, fopts) : at::empty({R, G}, fopts);
  if (R == 0 || G == 0)
    return {tokens, at::empty({R, G, K}, a.anchor.options()), draft_logits, token_logprob, confidence};

  const MarkovDraftInputs in(a, s);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const DType dtype = to_dtype(in.base_logits, "dspark::markov_draft_topk", "base_logits");

  at::Tensor draft_ids;
  if (K <= kMaxSelectCandidates) {
    draft_ids = at::empty({R, G, K}, a.anchor.options());
    DSPARK_CUDA_CHECK(
        launch_select_candidates(dtype, in.base_logits.data_ptr(), R * G, V, K, draft_ids.data_ptr<int64_t>(), stream));
  } else {
    draft_ids = select_candidates_topk(in.base_logits, K).contiguous();
  }
  auto head_vector = at::empty({R, r}, fopts);
  auto state = s.head == MarkovHead::kRnn ? at::zeros({R, r}, fopts) : head_vector;

  MarkovDraftTopkParams t{};
  MarkovDraftParams& p = t.dense;
  in.fill(p, dtype, s);
  MarkovDraftInputs::fill_outputs(p, tokens, draft_logits, token_logprob, confidence, head_vector, state);
  t.num_candidates = K;
  t.draft_ids = draft_ids.data_ptr<int64_t>();
  DSPARK_CUDA_CHECK(launch_markov_draft_topk(t, stream));
  return {tokens, draft_ids, draft_logits, token_logprob, confidence};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CUDA, m) { m.impl("markov_draft_topk", &markov_draft_topk_op<markov_draft_topk>); }

}  // namespace dspark::cuda
