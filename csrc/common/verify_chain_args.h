// Argument checks of dspark::verify_chain shared by the CPU and CUDA bindings (SPEC §4).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "common/verify_q_args.h"
#include "dspark/checks.h"

namespace dspark {

struct VerifyChainSizes {
  int64_t requests;  // R
  int64_t gamma;     // γ, the width of draft_tokens
  int64_t vocab;     // V
  int64_t rows;      // N = Σ (lengths[r] + 1)
  int64_t num_eos;   // E (0 without eos_ids)
  DraftQ q;          // how q is given (draft_logits / draft_probs, dense or sparse)
  bool filters;      // any of top_k / top_p / min_p given
};

// The arguments of one verify_chain call in schema order (references to the caller's).
struct VerifyChainArgs {
  const at::Tensor& target_logits;                // [N, V]
  const at::Tensor& draft_tokens;                 // [R, γ] int64
  const at::Tensor& lengths;                      // [R] int64
  const at::Tensor& temperature;                  // [R] float32
  const at::Tensor& seed;                         // [R] int64
  const at::Tensor& offset;                       // [R] int64
  const std::optional<at::Tensor>& draft_logits;  // [R, γ, V] or [R, γ, K]
  const std::optional<at::Tensor>& eos_ids;       // [E] int64
  const std::optional<at::Tensor>& top_k;         // [R] int64
  const std::optional<at::Tensor>& top_p;         // [R] float32
  const std::optional<at::Tensor>& min_p;         // [R] float32
  const std::optional<at::Tensor>& draft_probs;   // [R, γ, V] or [R, γ, K] float32
  const std::optional<at::Tensor>& draft_ids;     // [R, γ, K] int64
};

// target_logits [N, V]; draft_tokens [R, γ]; lengths, seed, offset [R] int64;
// temperature [R] float32; draft_logits [R, γ, V] or None; eos_ids [E] or None;
// top_k [R] int64, top_p / min_p [R] float32 or None; draft_probs [R, γ, V] float32 or None;
// draft_ids [R, γ, K] int64 or None (then draft_logits / draft_probs are [R, γ, K]).
inline VerifyChainSizes check_verify_chain_args(const VerifyChainArgs& a) {
  const auto& [target_logits, draft_tokens, lengths, temperature, seed, offset, draft_logits, eos_ids, top_k, top_p,
               min_p, draft_probs, draft_ids] = a;
  constexpr const char* op = "dspark::verify_chain";
  check_verify_layout(op, target_logits, draft_tokens, "draft_tokens");
  VerifyChainSizes s{
      draft_tokens.size(0), draft_tokens.size(1), target_logits.size(1), target_logits.size(0), 0, DraftQ{}, false};
  // Positions 1..γ+1 key the random streams through 16 bits (dspark/philox.h).
  DSPARK_CHECK(s.gamma < 65535, op, "draft_tokens", "must have fewer than 65535 columns (γ), got ", s.gamma);
  check_index_vector(lengths, op, "lengths", s.requests, "R, the rows of draft_tokens", target_logits);
  s.num_eos = check_sampling_args(op, temperature, seed, offset, eos_ids, s.requests, target_logits);
  s.q = check_draft_q(op, draft_logits, draft_probs, draft_ids,
                      {{s.requests, "R"}, {s.gamma, "γ, the columns of draft_tokens"}}, s.vocab, target_logits);
  s.filters = check_filter_args(op, top_k, top_p, min_p, s.requests, target_logits);
  if (value_checks_enabled(lengths) && s.requests > 0) {
    const auto l = lengths.cpu();
    const int64_t lo = l.min().item<int64_t>(), hi = l.max().item<int64_t>();
    DSPARK_CHECK(lo >= 0 && hi <= s.gamma, op, "lengths", "must lie in [0, γ=", s.gamma, "], got values in [", lo, ", ",
                 hi, "]");
    const int64_t total = l.sum().item<int64_t>() + s.requests;
    DSPARK_CHECK(total == s.rows, op, "target_logits", "must have Σ(lengths + 1) = ", total, " rows, got ", s.rows);
  } else if (s.requests == 0) {
    DSPARK_CHECK(s.rows == 0 || !value_checks_enabled(lengths), op, "target_logits",
                 "must have 0 rows when there are no requests, got ", s.rows);
  }
  return s;
}

// The outputs before any request is verified: out_tokens [R, γ+1] all -1, num_accepted and
// num_emitted [R] zero (what R = 0 returns).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> initial_chain_outputs(const VerifyChainSizes& s,
                                                                            const at::TensorOptions& opts) {
  return {at::full({s.requests, s.gamma + 1}, -1, opts), at::zeros({s.requests}, opts), at::zeros({s.requests}, opts)};
}

// The registered verify_chain, one for both devices: the schema's argument list, the shared
// checks, then the device's kernel Kernel(args, sizes).
template <auto Kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_chain_op(
    const at::Tensor& target_logits, const at::Tensor& draft_tokens, const at::Tensor& lengths,
    const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
    const std::optional<at::Tensor>& draft_logits, const std::optional<at::Tensor>& eos_ids,
    const std::optional<at::Tensor>& top_k, const std::optional<at::Tensor>& top_p,
    const std::optional<at::Tensor>& min_p, const std::optional<at::Tensor>& draft_probs,
    const std::optional<at::Tensor>& draft_ids) {
  const VerifyChainArgs a{target_logits, draft_tokens, lengths, temperature, seed,        offset,   draft_logits,
                          eos_ids,       top_k,        top_p,   min_p,       draft_probs, draft_ids};
  return Kernel(a, check_verify_chain_args(a));
}

}  // namespace dspark
