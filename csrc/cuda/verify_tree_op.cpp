// CUDA bindings of dspark::tree_metadata and dspark::verify_tree: checks (shared with the CPU
// binding), allocation, launch on the current stream. No host sync unless DSPARK_CHECK=1.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>

#include "common/verify_tree_args.h"
#include "cuda/device_sms.h"
#include "cuda/launch_check.h"
#include "cuda/torch_dtype.h"
#include "cuda/verify_tree.h"

namespace dspark::cuda {
namespace {

// DSPARK_VERIFY_TREE_KERNEL=legacy selects the one-block-per-request kernel (verify_tree.cu)
// instead of the split kernel (verify_tree_split.cu); read once per process.
bool legacy_kernel() {
  static const bool legacy = [] {
    const char* env = std::getenv("DSPARK_VERIFY_TREE_KERNEL");
    return env != nullptr && std::string(env) == "legacy";
  }();
  return legacy;
}

// Blocks of the split kernel that one SM holds, per (device, target dtype, draft dtype): an
// occupancy query made once per key (a host query: no sync). The SMs themselves are asked per
// call (available_sms): they depend on the stream's context.
int split_blocks_per_sm(int device, const VerifyTreeParams& p) {
  constexpr int kDTypes = 3;  // dspark::DType codes 0..2
  static std::array<std::atomic<int>, 64 * kDTypes * kDTypes> cache{};
  const int64_t at = (static_cast<int64_t>(device) * kDTypes + static_cast<int>(p.target_dtype)) * kDTypes +
                     static_cast<int>(p.draft_dtype);
  const bool cached = device >= 0 && at < static_cast<int64_t>(cache.size());
  int n = cached ? cache[at].load(std::memory_order_relaxed) : 0;
  if (n == 0) {
    cudaError_t err = cudaSuccess;
    n = verify_tree_split_blocks_per_sm(p, &err);
    DSPARK_CUDA_CHECK(err);
    if (cached) cache[at].store(n, std::memory_order_relaxed);
  }
  return n;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tree_metadata(const at::Tensor& parents, const at::Tensor& num_nodes,
                                                             const at::Tensor& prefix_lens) {
  const TreeSizes s = check_tree_metadata_args(parents, num_nodes, prefix_lens);
  const c10::cuda::CUDAGuard guard(parents.device());
  // Every element is written by the kernel: no fill needed.
  auto attn_mask = at::empty({s.requests, s.width, s.width}, parents.options().dtype(at::kBool));
  auto positions = at::empty({s.requests, s.width}, parents.options());
  auto depth = at::empty({s.requests, s.width}, parents.options());
  const auto par = parents.contiguous(), cnt = num_nodes.contiguous(), pre = prefix_lens.contiguous();
  DSPARK_CUDA_CHECK(launch_tree_metadata(par.data_ptr<int64_t>(), cnt.data_ptr<int64_t>(), pre.data_ptr<int64_t>(),
                                         s.requests, s.width, attn_mask.data_ptr<bool>(), positions.data_ptr<int64_t>(),
                                         depth.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream()));
  return {attn_mask, positions, depth};
}

// Arguments checked by verify_tree_op (common/verify_tree_args.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> verify_tree(const VerifyTreeArgs& a, const TreeSizes& s) {
  const auto& [target_logits, tree_tokens, parents, num_nodes, temperature, seed, offset, draft_logits, eos_ids, top_k,
               top_p, min_p, draft_probs, draft_ids] = a;
  const bool legacy = legacy_kernel();
  TORCH_CHECK(!(legacy && draft_ids), "dspark::verify_tree: argument 'draft_ids' (sparse q) needs the default ",
              "kernel; unset DSPARK_VERIFY_TREE_KERNEL=legacy (the legacy kernel reads dense q rows only)");
  const c10::cuda::CUDAGuard guard(target_logits.device());
  const auto opts = tree_tokens.options();
  // Every element is written by the kernel (it fills its own rows with -1 first).
  auto out_tokens = at::empty({s.requests, s.width}, opts);
  auto accepted_nodes = at::empty({s.requests, s.width}, opts);
  auto num_accepted = at::zeros({s.requests}, opts);  // M = 0 launches nothing
  auto num_emitted = at::zeros({s.requests}, opts);
  if (s.requests == 0 || s.width == 0) return {out_tokens, accepted_nodes, num_accepted, num_emitted};

  const auto target = target_logits.contiguous();
  const auto tokens = tree_tokens.contiguous(), par = parents.contiguous(), cnt = num_nodes.contiguous();
  const at::Tensor draft = draft_logits ? draft_logits->contiguous() : at::Tensor();
  const auto probs = contiguous_or_none(draft_probs), ids = contiguous_or_none(draft_ids);
  const auto tk = contiguous_or_none(top_k), tp = contiguous_or_none(top_p), mp = contiguous_or_none(min_p);
  const auto eos = eos_ids ? eos_ids->contiguous() : at::empty({0}, opts);
  const auto temp = temperature.contiguous(), sd = seed.contiguous(), off = offset.contiguous();

  VerifyTreeParams p{};
  p.target = target.data_ptr();
  p.target_dtype = to_dtype(target, "dspark::verify_tree", "target_logits");
  p.draft = draft.defined() ? draft.data_ptr() : nullptr;
  p.draft_dtype = draft.defined() ? to_dtype(draft, "dspark::verify_tree", "draft_logits") : p.target_dtype;
  p.draft_probs = data_or_null<float>(probs);
  p.draft_ids = data_or_null<int64_t>(ids);
  p.draft_width = s.q.values ? s.q.width : s.vocab;
  p.top_k = data_or_null<int64_t>(tk);
  p.top_p = data_or_null<float>(tp);
  p.min_p = data_or_null<float>(mp);
  p.rows = s.rows;
  p.vocab = s.vocab;
  p.tokens = tokens.data_ptr<int64_t>();
  p.parents = par.data_ptr<int64_t>();
  p.num_nodes = cnt.data_ptr<int64_t>();
  p.requests = s.requests;
  p.width = s.width;
  p.temperature = temp.data_ptr<float>();
  p.seed = sd.data_ptr<int64_t>();
  p.offset = off.data_ptr<int64_t>();
  p.eos = s.num_eos > 0 ? eos.data_ptr<int64_t>() : nullptr;
  p.num_eos = s.num_eos;
  p.out_tokens = out_tokens.data_ptr<int64_t>();
  p.accepted_nodes = accepted_nodes.data_ptr<int64_t>();
  p.num_accepted = num_accepted.data_ptr<int64_t>();
  p.num_emitted = num_emitted.data_ptr<int64_t>();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (legacy) {
    DSPARK_CUDA_CHECK(launch_verify_tree_legacy(p, stream));
  } else {
    // Scratch from the caching allocator (graph-capturable): one fill for the counters and
    // bitmaps that start at zero, nothing for the partials.
    const int device = target_logits.device().index();
    cudaError_t err = cudaSuccess;
    const int sms = available_sms(device, stream, &err);
    DSPARK_CUDA_CHECK(err);
    const VerifyTreeSplitPlan plan = plan_verify_tree_split(p, sms, split_blocks_per_sm(device, p));
    auto zeroed = at::zeros({plan.zeroed_words}, opts.dtype(at::kInt));
    auto partials = at::empty({plan.partial_bytes}, opts.dtype(at::kByte));
    DSPARK_CUDA_CHECK(launch_verify_tree_split(p, plan, reinterpret_cast<uint32_t*>(zeroed.data_ptr<int32_t>()),
                                               partials.data_ptr(), stream));
  }
  return {out_tokens, accepted_nodes, num_accepted, num_emitted};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CUDA, m) { register_tree_ops<&tree_metadata, &verify_tree>(m); }

}  // namespace dspark::cuda
