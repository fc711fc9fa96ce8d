// CUDA binding of dspark::verify_chain: shared argument checks, outputs, workspace, launch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/verify_chain_args.h"
#include "cuda/launch_check.h"
#include "cuda/torch_dtype.h"
#include "cuda/verify_chain.h"

namespace dspark::cuda {
namespace {

// Arguments checked by verify_chain_op (common/verify_chain_args.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_chain(const VerifyChainArgs& a, const VerifyChainSizes& s) {
  const auto& [target_logits, draft_tokens, lengths, temperature, seed, offset, draft_logits, eos_ids, top_k, top_p,
               min_p, draft_probs, draft_ids] = a;
  const c10::cuda::CUDAGuard guard(target_logits.device());
  const auto opts = draft_tokens.options();
  auto [out_tokens, num_accepted, num_emitted] = initial_chain_outputs(s, opts);
  if (s.requests == 0) return {out_tokens, num_accepted, num_emitted};

  const auto target = target_logits.contiguous();
  const auto drafts = draft_tokens.contiguous();
  const auto draft = contiguous_or_none(draft_logits), probs = contiguous_or_none(draft_probs);
  const auto ids = contiguous_or_none(draft_ids);
  const auto tk = contiguous_or_none(top_k), tp = contiguous_or_none(top_p), mp = contiguous_or_none(min_p);
  const auto eos = eos_ids ? std::optional<at::Tensor>(eos_ids->contiguous()) : std::nullopt;
  const auto len = lengths.contiguous(), temp = temperature.contiguous();
  const auto sd = seed.contiguous(), off = offset.contiguous();
  auto workspace = at::empty({static_cast<int64_t>(verify_chain_workspace_bytes(s.requests, s.gamma, s.vocab))},
                             opts.dtype(at::kByte));

  VerifyChainParams p{};
  p.target_logits = target.data_ptr();
  p.draft_logits = draft ? draft->data_ptr() : nullptr;
  p.draft_probs = data_or_null<float>(probs);
  p.draft_ids = data_or_null<int64_t>(ids);
  p.draft_width = s.q.width;
  p.top_k = data_or_null<int64_t>(tk);
  p.top_p = data_or_null<float>(tp);
  p.min_p = data_or_null<float>(mp);
  p.draft_tokens = drafts.data_ptr<int64_t>();
  p.lengths = len.data_ptr<int64_t>();
  p.temperature = temp.data_ptr<float>();
  p.seed = sd.data_ptr<int64_t>();
  p.offset = off.data_ptr<int64_t>();
  p.eos_ids = eos ? eos->data_ptr<int64_t>() : nullptr;
  p.num_eos = s.num_eos;
  p.requests = s.requests;
  p.gamma = s.gamma;
  p.vocab = s.vocab;
  p.rows = s.rows;
  p.target_dtype = to_dtype(target, "dspark::verify_chain", "target_logits");
  p.draft_dtype = draft ? to_dtype(*draft, "dspark::verify_chain", "draft_logits") : p.target_dtype;
  p.out_tokens = out_tokens.data_ptr<int64_t>();
  p.num_accepted = num_accepted.data_ptr<int64_t>();
  p.num_emitted = num_emitted.data_ptr<int64_t>();
  DSPARK_CUDA_CHECK(launch_verify_chain(p, workspace.data_ptr(), c10::cuda::getCurrentCUDAStream()));
  return {out_tokens, num_accepted, num_emitted};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CUDA, m) { m.impl("verify_chain", &verify_chain_op<verify_chain>); }

}  // namespace dspark::cuda
