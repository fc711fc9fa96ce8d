// CUDA bindings of the vocab-parallel phase ops (SPEC §11): the checks shared with the CPU
// binding (common/verify_sharded_args.h), allocation, launch on the current stream.
// No host sync unless DSPARK_CHECK=1.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/verify_sharded_args.h"
#include "cuda/launch_check.h"
#include "cuda/torch_dtype.h"
#include "cuda/verify_sharded.h"

namespace dspark::cuda {
namespace {

// Contiguous copies that outlive the launch, and the ShardParams pointing into them.
struct ShardInputs {
  at::Tensor target, draft, tokens, counts, parents, temperature, seed, offset, eos, stats;
  ShardParams p{};

  ShardInputs(const at::Tensor& target_logits, const std::optional<at::Tensor>& draft_logits, const at::Tensor& tok,
              const at::Tensor& cnt, const at::Tensor* par, const at::Tensor& temp, const at::Tensor& sd,
              const at::Tensor& off, const std::optional<at::Tensor>& eos_ids, const at::Tensor* gathered,
              int64_t world, int64_t requests, int64_t width, int64_t vocab_start, int64_t vocab_size)
      : target(target_logits.contiguous()),
        draft(draft_logits ? draft_logits->contiguous() : at::Tensor()),
        tokens(tok.contiguous()),
        counts(cnt.contiguous()),
        parents(par ? par->contiguous() : at::Tensor()),
        temperature(temp.contiguous()),
        seed(sd.contiguous()),
        offset(off.contiguous()),
        eos(eos_ids ? eos_ids->contiguous() : at::Tensor()),
        stats(gathered ? gathered->contiguous() : at::Tensor()) {
    p.target = target.data_ptr();
    p.target_dtype = to_dtype(target, "dspark::verify_shard", "target_logits");
    p.draft = draft.defined() ? draft.data_ptr() : nullptr;
    p.draft_dtype = draft.defined() ? to_dtype(draft, "dspark::verify_shard", "draft_logits") : p.target_dtype;
    p.rows = target.size(0);
    p.shard_vocab = target.size(1);
    p.vocab_start = vocab_start;
    p.vocab_size = vocab_size;
    p.requests = requests;
    p.width = width;
    p.tokens = tokens.data_ptr<int64_t>();
    p.counts = counts.data_ptr<int64_t>();
    p.parents = parents.defined() ? parents.data_ptr<int64_t>() : nullptr;
    p.temperature = temperature.data_ptr<float>();
    p.seed = seed.data_ptr<int64_t>();
    p.offset = offset.data_ptr<int64_t>();
    p.eos = eos.defined() && eos.numel() > 0 ? eos.data_ptr<int64_t>() : nullptr;
    p.num_eos = eos.defined() ? eos.numel() : 0;
    p.stats = stats.defined() ? stats.data_ptr<int64_t>() : nullptr;
    p.world = world;
  }
};

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

at::Tensor verify_chain_shard_stats(const at::Tensor& target_logits, const at::Tensor& draft_tokens,
                                    const at::Tensor& lengths, const at::Tensor& temperature, const at::Tensor& seed,
                                    const at::Tensor& offset, const std::optional<at::Tensor>& draft_logits,
                                    int64_t vocab_start, int64_t vocab_size) {
  const auto [s, world] = check_chain_shard_args("dspark::verify_chain_shard_stats", target_logits, draft_tokens,
                                                 lengths, temperature, seed, offset, draft_logits, std::nullopt,
                                                 vocab_start, vocab_size, nullptr);
  const c10::cuda::CUDAGuard guard(target_logits.device());
  auto stats = at::empty({s.rows, kShardStatsWords}, draft_tokens.options());  // every row written
  const ShardInputs in(target_logits, draft_logits, draft_tokens, lengths, nullptr, temperature, seed, offset,
                       std::nullopt, nullptr, 0, s.requests, s.gamma, vocab_start, vocab_size);
  DSPARK_CUDA_CHECK(launch_chain_shard_stats(in.p, stats.data_ptr<int64_t>(), stream()));
  return stats;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> verify_chain_shard_decide(
    const at::Tensor& target_logits, const at::Tensor& draft_tokens, const at::Tensor& lengths,
    const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset, const at::Tensor& stats,
    const std::optional<at::Tensor>& draft_logits, const std::optional<at::Tensor>& eos_ids, int64_t vocab_start,
    int64_t vocab_size) {
  const auto [s, world] = check_chain_shard_args("dspark::verify_chain_shard_decide", target_logits, draft_tokens,
                                                 lengths, temperature, seed, offset, draft_logits, eos_ids, vocab_start,
                                                 vocab_size, &stats);
  const c10::cuda::CUDAGuard guard(target_logits.device());
  const auto opts = draft_tokens.options();
  auto out_tokens = at::full({s.requests, s.gamma + 1}, -1, opts);
  auto num_accepted = at::empty({s.requests}, opts);  // written by the kernel
  auto num_emitted = at::empty({s.requests}, opts);
  auto keys = at::empty({s.requests, kRaceKeyWords}, opts);
  const ShardInputs in(target_logits, draft_logits, draft_tokens, lengths, nullptr, temperature, seed, offset, eos_ids,
                       &stats, world, s.requests, s.gamma, vocab_start, vocab_size);
  DSPARK_CUDA_CHECK(launch_chain_shard_decide(in.p, out_tokens.data_ptr<int64_t>(), num_accepted.data_ptr<int64_t>(),
                                              num_emitted.data_ptr<int64_t>(), keys.data_ptr<int64_t>(), stream()));
  return {out_tokens, num_accepted, num_emitted, keys};
}

at::Tensor verify_tree_shard_stats(const at::Tensor& target_logits, const at::Tensor& tree_tokens,
                                   const at::Tensor& parents, const at::Tensor& num_nodes,
                                   const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
                                   const std::optional<at::Tensor>& draft_logits, int64_t vocab_start,
                                   int64_t vocab_size) {
  const auto [s, world] = check_tree_shard_args("dspark::verify_tree_shard_stats", target_logits, tree_tokens, parents,
                                                num_nodes, temperature, seed, offset, draft_logits, std::nullopt,
                                                vocab_start, vocab_size, nullptr);
  const c10::cuda::CUDAGuard guard(target_logits.device());
  auto stats = at::empty({s.rows, kShardStatsWords}, tree_tokens.options());  // every row written
  const ShardInputs in(target_logits, draft_logits, tree_tokens, num_nodes, &parents, temperature, seed, offset,
                       std::nullopt, nullptr, 0, s.requests, s.width, vocab_start, vocab_size);
  DSPARK_CUDA_CHECK(launch_tree_shard_stats(in.p, stats.data_ptr<int64_t>(), stream()));
  return stats;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> verify_tree_shard_walk(
    const at::Tensor& target_logits, const at::Tensor& tree_tokens, const at::Tensor& parents,
    const at::Tensor& num_nodes, const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
    const at::Tensor& stats, const std::optional<at::Tensor>& walk, const std::optional<at::Tensor>& out_tokens,
    const std::optional<at::Tensor>& accepted_nodes, const std::optional<at::Tensor>& masses,
    const std::optional<at::Tensor>& draft_logits, const std::optional<at::Tensor>& eos_ids, int64_t vocab_start,
    int64_t vocab_size) {
  constexpr const char* op = "dspark::verify_tree_shard_walk";
  const auto [s, world] = check_tree_shard_args(op, target_logits, tree_tokens, parents, num_nodes, temperature, seed,
                                                offset, draft_logits, eos_ids, vocab_start, vocab_size, &stats);
  const c10::cuda::CUDAGuard guard(target_logits.device());
  auto [w, out, nodes, fresh] = check_walk_state(op, walk, out_tokens, accepted_nodes, masses, s.requests, s.width,
                                                 world, target_logits);
  auto partial = at::zeros({s.requests}, tree_tokens.options().dtype(at::kFloat));
  const at::Tensor mass = masses ? masses->contiguous() : at::Tensor();
  const ShardInputs in(target_logits, draft_logits, tree_tokens, num_nodes, &parents, temperature, seed, offset,
                       eos_ids, &stats, world, s.requests, s.width, vocab_start, vocab_size);
  DSPARK_CUDA_CHECK(launch_tree_shard_walk(in.p, fresh, w.data_ptr<int64_t>(), out.data_ptr<int64_t>(),
                                           nodes.data_ptr<int64_t>(), mass.defined() ? mass.data_ptr<float>() : nullptr,
                                           mass.defined() ? mass.size(0) : 0, partial.data_ptr<float>(), stream()));
  return {w, out, nodes, partial};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_shard_race(
    const at::Tensor& target_logits, const at::Tensor& tree_tokens, const at::Tensor& parents,
    const at::Tensor& num_nodes, const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
    const at::Tensor& stats, const at::Tensor& walk, const std::optional<at::Tensor>& draft_logits, int64_t vocab_start,
    int64_t vocab_size) {
  constexpr const char* op = "dspark::verify_tree_shard_race";
  const auto [s, world] = check_tree_shard_args(op, target_logits, tree_tokens, parents, num_nodes, temperature, seed,
                                                offset, draft_logits, std::nullopt, vocab_start, vocab_size, &stats);
  check_walk(op, walk, s.requests, target_logits);
  const c10::cuda::CUDAGuard guard(target_logits.device());
  const auto opts = tree_tokens.options();
  auto keys = at::zeros({s.requests, kRaceKeyWords}, opts);
  auto num_accepted = at::zeros({s.requests}, opts);
  auto num_emitted = at::zeros({s.requests}, opts);
  const auto wk = walk.contiguous();
  const ShardInputs in(target_logits, draft_logits, tree_tokens, num_nodes, &parents, temperature, seed, offset,
                       std::nullopt, &stats, world, s.requests, s.width, vocab_start, vocab_size);
  DSPARK_CUDA_CHECK(launch_tree_shard_race(in.p, wk.data_ptr<int64_t>(), keys.data_ptr<int64_t>(),
                                           num_accepted.data_ptr<int64_t>(), num_emitted.data_ptr<int64_t>(),
                                           stream()));
  return {keys, num_accepted, num_emitted};
}

at::Tensor verify_shard_finish(const at::Tensor& out_tokens, const at::Tensor& num_accepted,
                               const at::Tensor& num_emitted, const at::Tensor& race_keys) {
  const int64_t world = check_finish_args(out_tokens, num_accepted, num_emitted, race_keys);
  const c10::cuda::CUDAGuard guard(out_tokens.device());
  auto out = out_tokens.contiguous().clone();
  const auto acc = num_accepted.contiguous(), emit = num_emitted.contiguous(), keys = race_keys.contiguous();
  DSPARK_CUDA_CHECK(launch_shard_finish(out.data_ptr<int64_t>(), out.size(0), out.size(1), acc.data_ptr<int64_t>(),
                                        emit.data_ptr<int64_t>(), keys.data_ptr<int64_t>(), world, stream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CUDA, m) {
  m.impl("verify_chain_shard_stats", &verify_chain_shard_stats);
  m.impl("verify_chain_shard_decide", &verify_chain_shard_decide);
  m.impl("verify_tree_shard_stats", &verify_tree_shard_stats);
  m.impl("verify_tree_shard_walk", &verify_tree_shard_walk);
  m.impl("verify_tree_shard_race", &verify_tree_shard_race);
  m.impl("verify_shard_finish", &verify_shard_finish);
}

}  // namespace dspark::cuda
