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

// The launch parameters of a phase op, pointing into contiguous copies that outlive the launch.
struct ShardInputs {
  ShardTensors in;
  ShardParams p{};

  ShardInputs(const char* op, const ShardArgs& a, int64_t world, int64_t requests, int64_t width) : in(a) {
    p.target = in.target.data_ptr();
    p.target_dtype = to_dtype(in.target, op, "target_logits");
    p.draft = in.draft ? in.draft->data_ptr() : nullptr;
    p.draft_dtype = in.draft ? to_dtype(*in.draft, op, "draft_logits") : p.target_dtype;
    p.rows = in.target.size(0);
    p.shard_vocab = in.target.size(1);
    p.vocab_start = a.vocab_start;
    p.vocab_size = a.vocab_size;
    p.requests = requests;
    p.width = width;
    p.tokens = in.tokens.data_ptr<int64_t>();
    p.counts = in.counts.data_ptr<int64_t>();
    p.parents = in.parents.defined() ? in.parents.data_ptr<int64_t>() : nullptr;
    p.temperature = in.temperature.data_ptr<float>();
    p.seed = in.seed.data_ptr<int64_t>();
    p.offset = in.offset.data_ptr<int64_t>();
    p.eos = in.eos.numel() > 0 ? in.eos.data_ptr<int64_t>() : nullptr;
    p.num_eos = in.eos.numel();
    p.stats = in.stats.defined() ? in.stats.data_ptr<int64_t>() : nullptr;
    p.world = world;
  }
};

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

// The stats phase of either family: [N, 5] records, every row written by `launch`.
at::Tensor stats_phase(const char* op, const ShardArgs& a, int64_t rows, int64_t requests, int64_t width,
                       cudaError_t (*launch)(const ShardParams&, int64_t*, cudaStream_t)) {
  const c10::cuda::CUDAGuard guard(a.target_logits.device());
  auto stats = at::empty({rows, kShardStatsWords}, a.tokens.options());
  const ShardInputs in(op, a, 0, requests, width);
  DSPARK_CUDA_CHECK(launch(in.p, stats.data_ptr<int64_t>(), stream()));
  return stats;
}

at::Tensor verify_chain_shard_stats(const ShardArgs& a, const VerifyChainSizes& s) {
  return stats_phase("dspark::verify_chain_shard_stats", a, s.rows, s.requests, s.gamma, &launch_chain_shard_stats);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> verify_chain_shard_decide(const ShardArgs& a,
                                                                                     const VerifyChainSizes& s,
                                                                                     int64_t world) {
  const c10::cuda::CUDAGuard guard(a.target_logits.device());
  const auto opts = a.tokens.options();
  auto out_tokens = at::full({s.requests, s.gamma + 1}, -1, opts);
  auto num_accepted = at::empty({s.requests}, opts);  // written by the kernel
  auto num_emitted = at::empty({s.requests}, opts);
  auto keys = at::empty({s.requests, kRaceKeyWords}, opts);
  const ShardInputs in("dspark::verify_chain_shard_decide", a, world, s.requests, s.gamma);
  DSPARK_CUDA_CHECK(launch_chain_shard_decide(in.p, out_tokens.data_ptr<int64_t>(), num_accepted.data_ptr<int64_t>(),
                                              num_emitted.data_ptr<int64_t>(), keys.data_ptr<int64_t>(), stream()));
  return {out_tokens, num_accepted, num_emitted, keys};
}

at::Tensor verify_tree_shard_stats(const ShardArgs& a, const TreeSizes& s) {
  return stats_phase("dspark::verify_tree_shard_stats", a, s.rows, s.requests, s.width, &launch_tree_shard_stats);
}

// state: (walk, out_tokens, accepted_nodes, fresh) from check_walk_state; masses [W, R].
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> verify_tree_shard_walk(
    const ShardArgs& a, const TreeSizes& s, int64_t world, std::tuple<at::Tensor, at::Tensor, at::Tensor, bool>& state,
    const std::optional<at::Tensor>& masses) {
  const c10::cuda::CUDAGuard guard(a.target_logits.device());
  auto& [w, out, nodes, fresh] = state;
  auto partial = at::zeros({s.requests}, a.tokens.options().dtype(at::kFloat));
  const at::Tensor mass = masses ? masses->contiguous() : at::Tensor();
  const ShardInputs in("dspark::verify_tree_shard_walk", a, world, s.requests, s.width);
  DSPARK_CUDA_CHECK(launch_tree_shard_walk(in.p, fresh, w.data_ptr<int64_t>(), out.data_ptr<int64_t>(),
                                           nodes.data_ptr<int64_t>(), mass.defined() ? mass.data_ptr<float>() : nullptr,
                                           mass.defined() ? mass.size(0) : 0, partial.data_ptr<float>(), stream()));
  return {w, out, nodes, partial};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_shard_race(const ShardArgs& a, const TreeSizes& s,
                                                                      int64_t world, const at::Tensor& walk) {
  const c10::cuda::CUDAGuard guard(a.target_logits.device());
  const auto opts = a.tokens.options();
  auto keys = at::zeros({s.requests, kRaceKeyWords}, opts);
  auto num_accepted = at::zeros({s.requests}, opts);
  auto num_emitted = at::zeros({s.requests}, opts);
  const auto wk = walk.contiguous();
  const ShardInputs in("dspark::verify_tree_shard_race", a, world, s.requests, s.width);
  DSPARK_CUDA_CHECK(launch_tree_shard_race(in.p, wk.data_ptr<int64_t>(), keys.data_ptr<int64_t>(),
                                           num_accepted.data_ptr<int64_t>(), num_emitted.data_ptr<int64_t>(),
                                           stream()));
  return {keys, num_accepted, num_emitted};
}

void verify_shard_finish(at::Tensor& out, const at::Tensor& num_accepted, const at::Tensor& num_emitted,
                         const at::Tensor& race_keys, int64_t world) {
  const c10::cuda::CUDAGuard guard(out.device());
  DSPARK_CUDA_CHECK(launch_shard_finish(out.data_ptr<int64_t>(), out.size(0), out.size(1),
                                        num_accepted.data_ptr<int64_t>(), num_emitted.data_ptr<int64_t>(),
                                        race_keys.data_ptr<int64_t>(), world, stream()));
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CUDA, m) {
  ShardOps<&verify_chain_shard_stats, &verify_chain_shard_decide, &verify_tree_shard_stats, &verify_tree_shard_walk,
           &verify_tree_shard_race, &verify_shard_finish>::register_all(m);
}

}  // namespace dspark::cuda
