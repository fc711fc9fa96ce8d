// Argument checks of the vocab-parallel phase ops (SPEC §11) shared by the CPU and CUDA
// bindings. The verify arguments themselves are checked by the single-device checks (the
// shard is a [N, V_i] logit tensor); these add the shard's place in the vocabulary and the
// exchanged records' shapes.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <utility>

#include "common/verify_chain_args.h"
#include "common/verify_tree_args.h"
#include "dspark/checks.h"
#include "dspark/verify_sharded.h"

namespace dspark {

// vocab_start >= 0, vocab_start + V_i <= vocab_size < 2^32.
inline void check_shard_range(const char* op, int64_t vocab_start, int64_t shard_vocab, int64_t vocab_size) {
  DSPARK_CHECK(vocab_size > 0 && vocab_size < (int64_t{1} << 32), op, "vocab_size", "must lie in [1, 2^32), got ",
               vocab_size);
  DSPARK_CHECK(vocab_start >= 0 && vocab_start + shard_vocab <= vocab_size, op, "vocab_start",
               "must place the shard's ", shard_vocab, " ids inside [0, vocab_size=", vocab_size, "), got ",
               vocab_start);
}

// An int64 tensor [W, dim1, words] of gathered records on the reference device. Returns W.
inline int64_t check_gathered(const at::Tensor& t, const char* op, const char* arg, int64_t dim1, const char* what,
                              int64_t words, const at::Tensor& ref) {
  check_device(t, op, arg, ref);
  check_dtype(t, op, arg, {at::kLong});
  check_dim(t, op, arg, 3);
  DSPARK_CHECK(t.size(0) >= 1, op, arg, "must hold at least one rank's records, got shape ", t.sizes());
  check_size(t, op, arg, 1, dim1, what);
  check_size(t, op, arg, 2, words, "the words of one record");
  return t.size(0);
}

// walk: int64 [R, 6] TreeWalk records.
inline void check_walk(const char* op, const at::Tensor& walk, int64_t requests, const at::Tensor& ref) {
  check_device(walk, op, "walk", ref);
  check_dtype(walk, op, "walk", {at::kLong});
  check_dim(walk, op, "walk", 2);
  check_size(walk, op, "walk", 0, requests, "R");
  check_size(walk, op, "walk", 1, kTreeWalkWords, "the words of one walk record");
}

// The walk state a verify_tree_shard_walk step continues from, as new tensors it may write:
// (walk [R, 6], out_tokens [R, M], accepted_nodes [R, M], fresh). All None: a fresh walk from
// the root (fresh = true: the kernel writes the walk's start record, so nothing is copied
// from the host). masses [W, R] float32 (or None on a fresh walk) are checked here too.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, bool> check_walk_state(
    const char* op, const std::optional<at::Tensor>& walk, const std::optional<at::Tensor>& out_tokens,
    const std::optional<at::Tensor>& accepted_nodes, const std::optional<at::Tensor>& masses, int64_t requests,
    int64_t width, int64_t world, const at::Tensor& ref) {
  const auto opts = ref.options().dtype(at::kLong);
  if (masses) {
    check_device(*masses, op, "masses", ref);
    check_dtype(*masses, op, "masses", {at::kFloat});
    check_dim(*masses, op, "masses", 2);
    check_size(*masses, op, "masses", 0, world, "W, the ranks of stats");
    check_size(*masses, op, "masses", 1, requests, "R");
  }
  DSPARK_CHECK(walk.has_value() == out_tokens.has_value() && walk.has_value() == accepted_nodes.has_value(), op, "walk",
               "out_tokens and accepted_nodes must all be given (a step) or all be None (a fresh walk)");
  if (!walk) {
    return {at::empty({requests, kTreeWalkWords}, opts), at::full({requests, width}, -1, opts),
            at::full({requests, width}, -1, opts), true};
  }
  check_walk(op, *walk, requests, ref);
  for (const auto& [t, name] : {std::pair{*out_tokens, "out_tokens"}, std::pair{*accepted_nodes, "accepted_nodes"}}) {
    check_device(t, op, name, ref);
    check_dtype(t, op, name, {at::kLong});
    check_dim(t, op, name, 2);
    check_size(t, op, name, 0, requests, "R");
    check_size(t, op, name, 1, width, "M");
  }
  return {walk->contiguous().clone(), out_tokens->contiguous().clone(), accepted_nodes->contiguous().clone(), false};
}

// The arguments of one phase op, in the order the schemas share. Chains: tokens =
// draft_tokens [R, γ], counts = lengths [R], no parents; trees: tokens = tree_tokens [R, M],
// counts = num_nodes [R], parents [R, M]. References to the caller's arguments.
struct ShardArgs {
  const at::Tensor& target_logits;                // [N, V_i], the shard's columns
  const at::Tensor& tokens;                       // [R, γ] or [R, M] int64
  const at::Tensor* parents;                      // [R, M] int64, trees only
  const at::Tensor& counts;                       // [R] int64
  const at::Tensor& temperature;                  // [R] float32
  const at::Tensor& seed;                         // [R] int64
  const at::Tensor& offset;                       // [R] int64
  const at::Tensor* stats;                        // [W, N, 5] gathered; null in the stats phase
  const std::optional<at::Tensor>& draft_logits;  // chain [R, γ, V_i], tree [N, V_i]
  const std::optional<at::Tensor>& eos_ids;       // [E] int64
  int64_t vocab_start, vocab_size;
};

// An absent optional argument (phases without eos_ids; the single-device checks' filters).
inline const std::optional<at::Tensor> kNoTensor{};

// Contiguous copies of a phase op's inputs (parents and stats undefined when absent, eos [0]
// when None), shared by the CPU loops and the CUDA parameter block.
struct ShardTensors {
  at::Tensor target, tokens, parents, counts, temperature, seed, offset, stats, eos;
  std::optional<at::Tensor> draft;

  explicit ShardTensors(const ShardArgs& a)
      : target(a.target_logits.contiguous()),
        tokens(a.tokens.contiguous()),
        parents(a.parents ? a.parents->contiguous() : at::Tensor()),
        counts(a.counts.contiguous()),
        temperature(a.temperature.contiguous()),
        seed(a.seed.contiguous()),
        offset(a.offset.contiguous()),
        stats(a.stats ? a.stats->contiguous() : at::Tensor()),
        eos(a.eos_ids ? a.eos_ids->contiguous() : at::empty({0}, a.tokens.options())),
        draft(contiguous_or_none(a.draft_logits)) {}
};

// Every check of a chain phase op: the single-device verify_chain checks on the shard, the
// shard's range and, for the phases after the first, the gathered stats [W, N, 5].
// Returns (sizes, W) (W = 0 without stats).
inline std::pair<VerifyChainSizes, int64_t> check_chain_shard_args(const char* op, const ShardArgs& a) {
  const VerifyChainSizes s = check_verify_chain_args({a.target_logits, a.tokens, a.counts, a.temperature, a.seed,
                                                      a.offset, a.draft_logits, a.eos_ids, kNoTensor, kNoTensor,
                                                      kNoTensor, kNoTensor, kNoTensor});
  check_shard_range(op, a.vocab_start, s.vocab, a.vocab_size);
  const int64_t world = a.stats ? check_gathered(*a.stats, op, "stats", s.rows, "N, the rows of target_logits",
                                                 kShardStatsWords, a.target_logits)
                                : 0;
  return {s, world};
}

// The tree twin of check_chain_shard_args.
inline std::pair<TreeSizes, int64_t> check_tree_shard_args(const char* op, const ShardArgs& a) {
  const TreeSizes s = check_verify_tree_args({a.target_logits, a.tokens, *a.parents, a.counts, a.temperature, a.seed,
                                              a.offset, a.draft_logits, a.eos_ids, kNoTensor, kNoTensor, kNoTensor,
                                              kNoTensor, kNoTensor});
  check_shard_range(op, a.vocab_start, s.vocab, a.vocab_size);
  DSPARK_CHECK(s.width < 65536, op, "tree_tokens", "must have fewer than 65536 columns (M), got ", s.width);
  const int64_t world = a.stats ? check_gathered(*a.stats, op, "stats", s.rows, "N, the rows of target_logits",
                                                 kShardStatsWords, a.target_logits)
                                : 0;
  return {s, world};
}

// verify_shard_finish: out_tokens [R, C], num_accepted / num_emitted [R], race_keys [W, R, 2].
// Returns W.
inline int64_t check_finish_args(const at::Tensor& out_tokens, const at::Tensor& num_accepted,
                                 const at::Tensor& num_emitted, const at::Tensor& race_keys) {
  constexpr const char* op = "dspark::verify_shard_finish";
  check_dtype(out_tokens, op, "out_tokens", {at::kLong});
  check_dim(out_tokens, op, "out_tokens", 2);
  const int64_t R = out_tokens.size(0);
  check_index_vector(num_accepted, op, "num_accepted", R, "R, the rows of out_tokens", out_tokens);
  check_index_vector(num_emitted, op, "num_emitted", R, "R, the rows of out_tokens", out_tokens);
  return check_gathered(race_keys, op, "race_keys", R, "R, the rows of out_tokens", kRaceKeyWords, out_tokens);
}

// The six registered phase ops, one definition for both devices: the schemas' argument
// lists and the shared checks, then the device's kernels:
//   ChainStats(args, sizes), ChainDecide(args, sizes, W), TreeStats(args, sizes),
//   TreeWalk(args, sizes, W, state from check_walk_state, masses), TreeRace(args, sizes, W, walk),
//   Finish(out, num_accepted, num_emitted, race_keys, W) placing the winners in out, a
//   contiguous copy of out_tokens; its other arguments contiguous.
template <auto ChainStats, auto ChainDecide, auto TreeStats, auto TreeWalk, auto TreeRace, auto Finish>
struct ShardOps {
  static at::Tensor chain_stats(const at::Tensor& target_logits, const at::Tensor& draft_tokens,
                                const at::Tensor& lengths, const at::Tensor& temperature, const at::Tensor& seed,
                                const at::Tensor& offset, const std::optional<at::Tensor>& draft_logits,
                                int64_t vocab_start, int64_t vocab_size) {
    const ShardArgs a{target_logits, draft_tokens, nullptr,      lengths,   temperature, seed,
                      offset,        nullptr,      draft_logits, kNoTensor, vocab_start, vocab_size};
    return ChainStats(a, check_chain_shard_args("dspark::verify_chain_shard_stats", a).first);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chain_decide(
      const at::Tensor& target_logits, const at::Tensor& draft_tokens, const at::Tensor& lengths,
      const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset, const at::Tensor& stats,
      const std::optional<at::Tensor>& draft_logits, const std::optional<at::Tensor>& eos_ids, int64_t vocab_start,
      int64_t vocab_size) {
    const ShardArgs a{target_logits, draft_tokens, nullptr,      lengths, temperature, seed,
                      offset,        &stats,       draft_logits, eos_ids, vocab_start, vocab_size};
    const auto [s, world] = check_chain_shard_args("dspark::verify_chain_shard_decide", a);
    return ChainDecide(a, s, world);
  }

  static at::Tensor tree_stats(const at::Tensor& target_logits, const at::Tensor& tree_tokens,
                               const at::Tensor& parents, const at::Tensor& num_nodes, const at::Tensor& temperature,
                               const at::Tensor& seed, const at::Tensor& offset,
                               const std::optional<at::Tensor>& draft_logits, int64_t vocab_start, int64_t vocab_size) {
    const ShardArgs a{target_logits, tree_tokens, &parents,     num_nodes, temperature, seed,
                      offset,        nullptr,     draft_logits, kNoTensor, vocab_start, vocab_size};
    return TreeStats(a, check_tree_shard_args("dspark::verify_tree_shard_stats", a).first);
  }

  // walk, out_tokens, accepted_nodes: None on the first step (a fresh walk), else the previous
  // step's outputs; masses [W, R] float32: the gathered partial masses of the previous step.
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tree_walk(
      const at::Tensor& target_logits, const at::Tensor& tree_tokens, const at::Tensor& parents,
      const at::Tensor& num_nodes, const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
      const at::Tensor& stats, const std::optional<at::Tensor>& walk, const std::optional<at::Tensor>& out_tokens,
      const std::optional<at::Tensor>& accepted_nodes, const std::optional<at::Tensor>& masses,
      const std::optional<at::Tensor>& draft_logits, const std::optional<at::Tensor>& eos_ids, int64_t vocab_start,
      int64_t vocab_size) {
    constexpr const char* op = "dspark::verify_tree_shard_walk";
    const ShardArgs a{target_logits, tree_tokens, &parents,     num_nodes, temperature, seed,
                      offset,        &stats,      draft_logits, eos_ids,   vocab_start, vocab_size};
    const auto [s, world] = check_tree_shard_args(op, a);
    auto state = check_walk_state(op, walk, out_tokens, accepted_nodes, masses, s.requests, s.width, world,
                                  target_logits);
    return TreeWalk(a, s, world, state, masses);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> tree_race(
      const at::Tensor& target_logits, const at::Tensor& tree_tokens, const at::Tensor& parents,
      const at::Tensor& num_nodes, const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
      const at::Tensor& stats, const at::Tensor& walk, const std::optional<at::Tensor>& draft_logits,
      int64_t vocab_start, int64_t vocab_size) {
    constexpr const char* op = "dspark::verify_tree_shard_race";
    const ShardArgs a{target_logits, tree_tokens, &parents,     num_nodes, temperature, seed,
                      offset,        &stats,      draft_logits, kNoTensor, vocab_start, vocab_size};
    const auto [s, world] = check_tree_shard_args(op, a);
    check_walk(op, walk, s.requests, target_logits);
    return TreeRace(a, s, world, walk);
  }

  static at::Tensor finish(const at::Tensor& out_tokens, const at::Tensor& num_accepted, const at::Tensor& num_emitted,
                           const at::Tensor& race_keys) {
    const int64_t world = check_finish_args(out_tokens, num_accepted, num_emitted, race_keys);
    auto out = out_tokens.contiguous().clone();
    Finish(out, num_accepted.contiguous(), num_emitted.contiguous(), race_keys.contiguous(), world);
    return out;
  }

  static void register_all(torch::Library& m) {
    m.impl("verify_chain_shard_stats", &chain_stats);
    m.impl("verify_chain_shard_decide", &chain_decide);
    m.impl("verify_tree_shard_stats", &tree_stats);
    m.impl("verify_tree_shard_walk", &tree_walk);
    m.impl("verify_tree_shard_race", &tree_race);
    m.impl("verify_shard_finish", &finish);
  }
};

}  // namespace dspark
