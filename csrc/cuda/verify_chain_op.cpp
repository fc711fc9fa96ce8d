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

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_chain(
    const at::Tensor& target_logits, const at::Tensor& draft_tokens, const at::Tensor& lengths,
    const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
    const std::optional<at::Tensor>& draft_logits, const std::optional<at::Tensor>& eos_ids) {
  const VerifyChainSizes s = check_verify_chain_args(target_logits, draft_tokens, lengths, temperature,
                                                     seed, offset, draft_logits, eos_ids);
  const c10::cuda::CUDAGuard guard(target_logits.device());
  const auto opts = draft_tokens.options();
  auto out_tokens = at::full({s.requests, s.gamma + 1}, -1, opts);
  auto num_accepted = at::zeros({s.requests}, opts);
  auto num_emitted = at::zeros({s.requests}, opts);
  if (s.requests == 0) return {out_tokens, num_accepted, num_emitted};

  const auto target = target_logits.contiguous();
  const auto drafts = draft_tokens.contiguous();
  const auto draft = draft_logits ? std::optional<at::Tensor>(draft_logits->contiguous()) : std::nullopt;
  const auto eos = eos_ids ? std::optional<at::Tensor>(eos_ids->contiguous()) : std::nullopt;
  const auto len = lengths.contiguous(), temp = temperature.contiguous();
  const auto sd = seed.contiguous(), off = offset.contiguous();
  auto workspace = at::empty({static_cast<int64_t>(verify_chain_workspace_bytes(s.requests, s.gamma, s.vocab))},
                             opts.dtype(at::kByte));

  VerifyChainParams p{};
  p.target_logits = target.data_ptr();
  p.draft_logits = draft ? draft->data_ptr() : nullptr;
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

TORCH_LIBRARY_IMPL(dspark, CUDA, m) { m.impl("verify_chain", &verify_chain); }

}  // namespace dspark::cuda
