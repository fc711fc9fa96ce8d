// Argument checks of dspark::markov_draft and dspark::markov_draft_topk shared by the CPU and
// CUDA bindings (SPEC §3, §10).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "common/markov_draft_kinds.h"
#include "common/verify_q_args.h"
#include "dspark/checks.h"
#include "dspark/filters.h"

namespace dspark {

struct MarkovDraftSizes {
  int64_t requests;  // R
  int64_t gamma;     // γ
  int64_t vocab;     // V
  int64_t rank;      // r
  int64_t hidden;    // d (0 without `hidden`)
  MarkovHead head;
  ConfidenceInput confidence;
  bool filters = false;  // any of top_k / top_p / min_p given (SPEC §9)
};

// The tensor arguments of one markov_draft / markov_draft_topk call in schema order (the topk
// op's num_candidates travels apart): what the shared checks, the CPU head and the CUDA
// parameter block read. References to the caller's arguments, alive for the call.
struct MarkovDraftArgs {
  const at::Tensor& base_logits;                 // [R, γ, V]
  const at::Tensor& anchor;                      // [R] int64
  const at::Tensor& w1;                          // [V, r]
  const at::Tensor& w2;                          // [V, r]
  const at::Tensor& temperature;                 // [R] float32
  const at::Tensor& seed;                        // [R] int64
  const at::Tensor& offset;                      // [R] int64
  const std::optional<at::Tensor>& hidden;       // [R, γ, d]
  const std::optional<at::Tensor>& gate_weight;  // [r, d+r]
  const std::optional<at::Tensor>& gate_bias;    // [r]
  const std::optional<at::Tensor>& rnn_weight;   // [3r, 2r+d]
  const std::optional<at::Tensor>& rnn_bias;     // [3r]
  const std::optional<at::Tensor>& conf_weight;  // [d] or [d+r]
  const std::optional<at::Tensor>& conf_bias;    // [1]
  const std::optional<at::Tensor>& conf_scale;   // [γ] float32
  const std::optional<at::Tensor>& top_k;        // [R] int64
  const std::optional<at::Tensor>& top_p;        // [R] float32
  const std::optional<at::Tensor>& min_p;        // [R] float32
};

// base_logits [R, γ, V]; anchor, seed, offset [R] int64; w1, w2 [V, r]; temperature [R]
// float32; hidden [R, γ, d]; gate_weight [r, d+r], gate_bias [r]; rnn_weight [3r, 2r+d],
// rnn_bias [3r]; conf_weight [d] or [d+r], conf_bias [1]; conf_scale [γ] float32;
// top_k [R] int64, top_p / min_p [R] float32 (values checked on CPU, or with DSPARK_CHECK=1).
// Every logits/weight/activation argument shares the dtype of base_logits.
// `op` names the op in messages (markov_draft or markov_draft_topk: same arguments).
inline MarkovDraftSizes check_markov_draft_args(const char* op, const MarkovDraftArgs& a) {
  const auto& [base_logits, anchor, w1, w2, temperature, seed, offset, hidden, gate_weight, gate_bias, rnn_weight,
               rnn_bias, conf_weight, conf_bias, conf_scale, top_k, top_p, min_p] = a;
  check_float_dtype(base_logits, op, "base_logits");
  check_dim(base_logits, op, "base_logits", 3);
  MarkovDraftSizes s{base_logits.size(0),  base_logits.size(1),   base_logits.size(2), 0, 0,
                     MarkovHead::kVanilla, ConfidenceInput::kNone};
  DSPARK_CHECK(s.vocab > 0 && s.vocab < (int64_t{1} << 31), op, "base_logits",
               "must have a vocabulary size in [1, 2^31), got ", s.vocab);
  DSPARK_CHECK(s.gamma < 65536, op, "base_logits", "must have a block size γ < 65536, got ", s.gamma);
  const auto dtype = base_logits.scalar_type();
  // A weight/activation: same device and dtype as base_logits, given rank.
  auto check_like = [&](const at::Tensor& t, const char* arg, int64_t dim) {
    check_device(t, op, arg, base_logits);
    DSPARK_CHECK(t.scalar_type() == dtype, op, arg, "must have the dtype of base_logits (", dtype,
                 "): every logits/weight/activation argument of one call shares one dtype, got ", t.scalar_type());
    check_dim(t, op, arg, dim);
  };
  check_index_vector(anchor, op, "anchor", s.requests, "R, the rows of base_logits", base_logits);
  check_like(w1, "w1", 2);
  check_size(w1, op, "w1", 0, s.vocab, "V, the vocabulary of base_logits");
  s.rank = w1.size(1);
  DSPARK_CHECK(s.rank > 0, op, "w1", "must have a rank r >= 1, got shape ", w1.sizes());
  check_like(w2, "w2", 2);
  check_size(w2, op, "w2", 0, s.vocab, "V, the nn.Linear(r, V) weight layout");
  check_size(w2, op, "w2", 1, s.rank, "r, the columns of w1");
  check_float_vector(temperature, op, "temperature", s.requests, "R", base_logits);
  check_index_vector(seed, op, "seed", s.requests, "R", base_logits);
  check_index_vector(offset, op, "offset", s.requests, "R", base_logits);

  // Pairs: a weight without its bias (or the reverse) is a contradiction.
  auto check_pair = [&](const std::optional<at::Tensor>& w, const std::optional<at::Tensor>& b, const char* wname,
                        const char* bname) {
    DSPARK_CHECK(w.has_value() || !b.has_value(), op, wname, "is required when ", bname, " is given");
    DSPARK_CHECK(b.has_value() || !w.has_value(), op, bname, "is required when ", wname, " is given");
  };
  check_pair(gate_weight, gate_bias, "gate_weight", "gate_bias");
  check_pair(rnn_weight, rnn_bias, "rnn_weight", "rnn_bias");
  check_pair(conf_weight, conf_bias, "conf_weight", "conf_bias");
  DSPARK_CHECK(!(gate_weight && rnn_weight), op, "rnn_weight",
               "cannot be combined with gate_weight: pass the gated head (gate_weight, gate_bias) or the "
               "RNN head (rnn_weight, rnn_bias), not both");
  s.head = gate_weight ? MarkovHead::kGated : rnn_weight ? MarkovHead::kRnn : MarkovHead::kVanilla;

  if (hidden) {
    check_like(*hidden, "hidden", 3);
    check_size(*hidden, op, "hidden", 0, s.requests, "R");
    check_size(*hidden, op, "hidden", 1, s.gamma, "γ");
    s.hidden = hidden->size(2);
  } else {
    const char* needs = gate_weight ? "gate_weight" : rnn_weight ? "rnn_weight" : conf_weight ? "conf_weight" : nullptr;
    DSPARK_CHECK(needs == nullptr, op, "hidden", "[R, γ, d] is required when ", needs, " is given");
  }
  const int64_t r = s.rank, d = s.hidden;
  if (gate_weight) {
    check_like(*gate_weight, "gate_weight", 2);
    check_size(*gate_weight, op, "gate_weight", 0, r, "r");
    check_size(*gate_weight, op, "gate_weight", 1, d + r, "d + r, input [h_k ; e_k]");
    check_like(*gate_bias, "gate_bias", 1);
    check_size(*gate_bias, op, "gate_bias", 0, r, "r");
  }
  if (rnn_weight) {
    check_like(*rnn_weight, "rnn_weight", 2);
    check_size(*rnn_weight, op, "rnn_weight", 0, 3 * r, "3r, chunks gate, candidate, output");
    check_size(*rnn_weight, op, "rnn_weight", 1, 2 * r + d, "2r + d, input [s_{k-1} ; e_k ; h_k]");
    check_like(*rnn_bias, "rnn_bias", 1);
    check_size(*rnn_bias, op, "rnn_bias", 0, 3 * r, "3r");
  }
  if (conf_weight) {
    check_like(*conf_weight, "conf_weight", 1);
    const int64_t n = conf_weight->size(0);
    DSPARK_CHECK(n == d || n == d + r, op, "conf_weight", "must have size d = ", d, " (input h_k) or d + r = ", d + r,
                 " (input [h_k ; e_k]), got shape ", conf_weight->sizes());
    s.confidence = n == d ? ConfidenceInput::kHidden : ConfidenceInput::kHiddenEmbedding;
    check_like(*conf_bias, "conf_bias", 1);
    check_size(*conf_bias, op, "conf_bias", 0, 1, "a single bias");
  }
  // Checked even without a confidence head (then it is ignored: the confidence is all ones).
  if (conf_scale) check_float_vector(*conf_scale, op, "conf_scale", s.gamma, "γ, one scale per position", base_logits);
  s.filters = check_filter_args(op, top_k, top_p, min_p, s.requests, base_logits);
  if (value_checks_enabled(anchor) && s.requests > 0) {
    const auto a = anchor.cpu();
    const int64_t lo = a.min().item<int64_t>(), hi = a.max().item<int64_t>();
    DSPARK_CHECK(lo >= 0 && hi < s.vocab, op, "anchor", "must hold token ids in [0, V=", s.vocab, "), got values in [",
                 lo, ", ", hi, "]");
  }
  return s;
}

// num_candidates of markov_draft_topk: K in [1, V] (SPEC §10).
inline void check_num_candidates(int64_t num_candidates, const MarkovDraftSizes& s) {
  DSPARK_CHECK(num_candidates >= 1 && num_candidates <= s.vocab, "dspark::markov_draft_topk", "num_candidates",
               "must be in [1, V=", s.vocab, "], got ", num_candidates);
}

// The registered functions of markov_draft and markov_draft_topk, one for both devices: the
// schema's argument list, the shared checks, then the device's kernel
// Kernel(args, sizes) (topk: Kernel(args, sizes, num_candidates)).
template <auto Kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> markov_draft_op(
    const at::Tensor& base_logits, const at::Tensor& anchor, const at::Tensor& w1, const at::Tensor& w2,
    const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
    const std::optional<at::Tensor>& hidden, const std::optional<at::Tensor>& gate_weight,
    const std::optional<at::Tensor>& gate_bias, const std::optional<at::Tensor>& rnn_weight,
    const std::optional<at::Tensor>& rnn_bias, const std::optional<at::Tensor>& conf_weight,
    const std::optional<at::Tensor>& conf_bias, const std::optional<at::Tensor>& conf_scale,
    const std::optional<at::Tensor>& top_k, const std::optional<at::Tensor>& top_p,
    const std::optional<at::Tensor>& min_p) {
  const MarkovDraftArgs a{base_logits, anchor,    w1,          w2,        temperature, seed,
                          offset,      hidden,    gate_weight, gate_bias, rnn_weight,  rnn_bias,
                          conf_weight, conf_bias, conf_scale,  top_k,     top_p,       min_p};
  return Kernel(a, check_markov_draft_args("dspark::markov_draft", a));
}

template <auto Kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> markov_draft_topk_op(
    const at::Tensor& base_logits, const at::Tensor& anchor, const at::Tensor& w1, const at::Tensor& w2,
    const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset, int64_t num_candidates,
    const std::optional<at::Tensor>& hidden, const std::optional<at::Tensor>& gate_weight,
    const std::optional<at::Tensor>& gate_bias, const std::optional<at::Tensor>& rnn_weight,
    const std::optional<at::Tensor>& rnn_bias, const std::optional<at::Tensor>& conf_weight,
    const std::optional<at::Tensor>& conf_bias, const std::optional<at::Tensor>& conf_scale,
    const std::optional<at::Tensor>& top_k, const std::optional<at::Tensor>& top_p,
    const std::optional<at::Tensor>& min_p) {
  const MarkovDraftArgs a{base_logits, anchor,    w1,          w2,        temperature, seed,
                          offset,      hidden,    gate_weight, gate_bias, rnn_weight,  rnn_bias,
                          conf_weight, conf_bias, conf_scale,  top_k,     top_p,       min_p};
  const MarkovDraftSizes s = check_markov_draft_args("dspark::markov_draft_topk", a);
  check_num_candidates(num_candidates, s);
  return Kernel(a, s, num_candidates);
}

}  // namespace dspark
