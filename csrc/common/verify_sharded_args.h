// Argument checks of the vocab-parallel phase ops (SPEC §11) shared by the CPU and CUDA
// bindings. The verify arguments themselves are checked by the single-device checks (the
// shard is a [N, V_i] logit tensor); these add the shard's place in the vocabulary and the
// exchanged records' shapes.
#pragma once

#include <ATen/ATen.h>

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

// Every check of a chain phase op: the single-device verify_chain checks on the shard, the
// shard's range and, for the phases after the first, the gathered stats [W, N, 5].
// Returns (sizes, W) (W = 0 without stats).
inline std::pair<VerifyChainSizes, int64_t> check_chain_shard_args(
    const char* op, const at::Tensor& target_logits, const at::Tensor& draft_tokens, const at::Tensor& lengths,
    const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
    const std::optional<at::Tensor>& draft_logits, const std::optional<at::Tensor>& eos_ids, int64_t vocab_start,
    int64_t vocab_size, const at::Tensor* stats) {
  const VerifyChainSizes s = check_verify_chain_args(target_logits, draft_tokens, lengths, temperature, seed, offset,
                                                     draft_logits, eos_ids, std::nullopt, std::nullopt, std::nullopt,
                                                     std::nullopt, std::nullopt);
  check_shard_range(op, vocab_start, s.vocab, vocab_size);
  const int64_t world = stats ? check_gathered(*stats, op, "stats", s.rows, "N, the rows of target_logits",
                                               kShardStatsWords, target_logits)
                              : 0;
  return {s, world};
}

// The tree twin of check_chain_shard_args.
inline std::pair<TreeSizes, int64_t> check_tree_shard_args(
    const char* op, const at::Tensor& target_logits, const at::Tensor& tree_tokens, const at::Tensor& parents,
    const at::Tensor& num_nodes, const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
    const std::optional<at::Tensor>& draft_logits, const std::optional<at::Tensor>& eos_ids, int64_t vocab_start,
    int64_t vocab_size, const at::Tensor* stats) {
  const TreeSizes s = check_verify_tree_args(target_logits, tree_tokens, parents, num_nodes, temperature, seed, offset,
                                             draft_logits, eos_ids, std::nullopt, std::nullopt, std::nullopt,
                                             std::nullopt, std::nullopt);
  check_shard_range(op, vocab_start, s.vocab, vocab_size);
  DSPARK_CHECK(s.width < 65536, op, "tree_tokens", "must have fewer than 65536 columns (M), got ", s.width);
  const int64_t world = stats ? check_gathered(*stats, op, "stats", s.rows, "N, the rows of target_logits",
                                               kShardStatsWords, target_logits)
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

}  // namespace dspark
