// CPU kernels of the vocab-parallel phase ops (SPEC §11; per-request logic in
// dspark/verify_sharded.h, composition with the collectives in dspark_ops/distributed.py).
// Requests run in parallel; each pass reads one shard row in index order, so a rank's numbers
// do not depend on the batch. A shard row is read once for its statistics and once more only
// where a token is drawn from it (and, for trees with draft_logits, once per rejected child
// that is followed by another child, for the partial residual mass).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "common/verify_sharded_args.h"
#include "cpu/dispatch.h"
#include "cpu/row_ops.h"
#include "dspark/verify_sharded.h"

namespace dspark::cpu {
namespace {

// Runs body(r, tp, dp) for every request r in parallel, with tp / dp the target / draft
// logits typed by their storage dtypes (dp null without draft logits; its type then defaults
// to the target's).
template <typename Body>
void for_each_request(const char* op, const ShardTensors& in, int64_t requests, Body&& body) {
  dispatch_target_draft(op, in.target, in.draft, [&]<typename TT, typename TD>() {
    const TT* tp = in.target.data_ptr<TT>();
    const TD* dp = in.draft ? in.draft->data_ptr<TD>() : nullptr;
    at::parallel_for(0, requests, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) body(r, tp, dp);
    });
  });
}

// An int64 [rows, kShardStatsWords] tensor of empty ShardRowStats records, and its records.
std::pair<at::Tensor, ShardRowStats*> empty_stats(int64_t rows, const at::TensorOptions& opts) {
  auto stats = at::empty({rows, kShardStatsWords}, opts);
  ShardRowStats* out = reinterpret_cast<ShardRowStats*>(stats.data_ptr<int64_t>());
  for (int64_t i = 0; i < rows; ++i) out[i] = empty_row_stats();
  return {stats, out};
}

// Index of each request's first row: Σ_{r' < r} (count[r'] + extra), count clamped to [0, hi].
std::vector<int64_t> first_rows(const at::Tensor& counts, int64_t extra, int64_t hi) {
  const int64_t* c = counts.data_ptr<int64_t>();
  std::vector<int64_t> first(counts.size(0));
  int64_t acc = 0;
  for (int64_t r = 0; r < counts.size(0); ++r) {
    first[r] = acc;
    acc += std::min(std::max<int64_t>(c[r], 0), hi) + extra;
  }
  return first;
}

const ShardRowStats* stats_ptr(const at::Tensor& t) {
  return reinterpret_cast<const ShardRowStats*>(t.data_ptr<int64_t>());
}

// Softmax statistics of row * (1/T) over the shard: max and Σ exp(x - max), NaN read as -inf.
// Vectorised ATen passes (as cpu/row_dist.h), several times faster than a scalar online
// softmax; a row whose max is +inf keeps the scalar definition of SoftmaxStats::add.
template <typename T>
at::Tensor scaled_row(const T* row, int64_t count, float inv_temperature) {
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  const at::Tensor view = at::from_blob(const_cast<T*>(row), {count}, at::TensorOptions().dtype(dtype));
  at::Tensor x = dtype == at::kFloat ? at::mul(view, inv_temperature) : view.to(at::kFloat).mul_(inv_temperature);
  return x.nan_to_num_(-INFINITY, INFINITY, -INFINITY);
}

template <typename T>
SoftmaxStats shard_softmax(const T* row, int64_t count, float inv_temperature) {
  SoftmaxStats s;
  if (count == 0) return s;
  at::Tensor x = scaled_row(row, count, inv_temperature);
  const float m = x.max().item<float>();
  if (!(m > -INFINITY)) return s;
  if (m == INFINITY) {
    for (int64_t v = 0; v < count; ++v) s.add(scaled_logit(load(row, v), inv_temperature));
    return s;
  }
  s.max = m;
  s.sum = x.sub_(m).exp_().sum().item<float>();
  return s;
}

// [count] probabilities SoftmaxStats::prob of the scaled row under the merged statistics.
at::Tensor probs_under(at::Tensor x, const SoftmaxStats& s) {
  if (!(s.sum > 0.0f)) return x.zero_();
  return x.sub_(s.max).exp_().div_(s.sum);
}

// The shard's greedy winner (ArgMax: lowest index on ties, NaN never wins) as a key.
template <typename T>
uint64_t shard_argmax(const T* row, int64_t count, int64_t start) {
  ArgMax a;
  for (int64_t v = 0; v < count; ++v) a.add(load(row, v), v);
  return a.index < 0 ? 0 : argmax_key(a.value, start + a.index);
}

// Gumbel race over the scaled logits (y ~ p) with global ids.
template <typename T>
uint64_t shard_p_race(const T* row, int64_t count, int64_t start, float inv_temperature, int64_t seed, int64_t offset,
                      Purpose purpose, uint32_t position) {
  BoundedRace race;
  for_each_shard_bits(start, count, seed, offset, purpose, position, 0, 1, [&](int64_t v, int64_t id, uint32_t bits) {
    race.add_bits(scaled_logit(load(row, v), inv_temperature), bits, id);
  });
  return race.race.best;
}

// Two races at once over the shard: the residual (log-weight from `residual(v, id, xs)`) and
// the fallback over p (the scaled logits). Returns (residual key, fallback key).
template <typename T, typename Residual>
std::pair<uint64_t, uint64_t> shard_two_races(const T* row, int64_t count, int64_t start, float inv_temperature,
                                              int64_t seed, int64_t offset, Purpose purpose, uint32_t position,
                                              Residual&& residual) {
  BoundedRace res, fallback;
  for_each_shard_bits(start, count, seed, offset, purpose, position, 0, 1, [&](int64_t v, int64_t id, uint32_t bits) {
    const float xs = scaled_logit(load(row, v), inv_temperature);
    const float lr = residual(v, id, xs);
    const bool use_r = !res.hopeless(lr), use_f = !fallback.hopeless(xs);
    if (!use_r && !use_f) return;
    const float g = gumbel_from_bits(bits);
    if (use_r) res.add(lr, g, id);
    if (use_f) fallback.add(xs, g, id);
  });
  return {res.race.best, fallback.race.best};
}

// ---------------------------------------------------------------------------------------
// verify_chain

at::Tensor verify_chain_shard_stats(const ShardArgs& a, const VerifyChainSizes& s) {
  auto [stats, out] = empty_stats(s.rows, a.tokens.options());
  if (s.requests == 0) return stats;
  const ShardTensors in(a);
  const std::vector<int64_t> first = first_rows(in.counts, 1, s.gamma);
  const int64_t V = s.vocab, start = a.vocab_start;
  for_each_request("dspark::verify_chain_shard_stats", in, s.requests, [&](int64_t r, auto tp, auto dp) {
    const int64_t length = std::min(std::max<int64_t>(in.counts.data_ptr<int64_t>()[r], 0), s.gamma);
    if (!rows_exist(first[r], length + 1, s.rows)) return;
    const float T = in.temperature.data_ptr<float>()[r], inv_t = inverse_temperature(T);
    for (int64_t k = 0; k <= length; ++k) {
      const auto* row = tp + (first[r] + k) * V;
      ShardRowStats& st = out[first[r] + k];
      if (is_greedy(T)) {
        st.argmax_key = shard_argmax(row, V, start);
        continue;
      }
      const SoftmaxStats ps = shard_softmax(row, V, inv_t);
      st.p_max = ps.max;
      st.p_sum = ps.sum;
      if (k == length) continue;  // the bonus row has no draft token
      const auto* qrow = dp ? dp + (r * s.gamma + k) * V : nullptr;
      if (qrow) {
        const SoftmaxStats qs = shard_softmax(qrow, V, inv_t);
        st.q_max = qs.max;
        st.q_sum = qs.sum;
      }
      const int64_t x = in.tokens.data_ptr<int64_t>()[r * s.gamma + k] - start;
      if (x >= 0 && x < V) {
        st.p_x = scaled_logit(load(row, x), inv_t);
        if (qrow) st.q_x = scaled_logit(load(qrow, x), inv_t);
      }
    }
  });
  return stats;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> verify_chain_shard_decide(const ShardArgs& a,
                                                                                     const VerifyChainSizes& s,
                                                                                     int64_t world) {
  const auto opts = a.tokens.options();
  auto out_tokens = at::full({s.requests, s.gamma + 1}, -1, opts);
  auto num_accepted = at::zeros({s.requests}, opts);
  auto num_emitted = at::zeros({s.requests}, opts);
  auto keys = at::zeros({s.requests, kRaceKeyWords}, opts);
  if (s.requests == 0) return {out_tokens, num_accepted, num_emitted, keys};
  const ShardTensors in(a);
  const std::vector<int64_t> first = first_rows(in.counts, 1, s.gamma);
  const ShardRowStats* gathered = stats_ptr(in.stats);
  const int64_t V = s.vocab, start = a.vocab_start;
  for_each_request("dspark::verify_chain_shard_decide", in, s.requests, [&](int64_t r, auto tp, auto dp) {
    const int64_t length = std::min(std::max<int64_t>(in.counts.data_ptr<int64_t>()[r], 0), s.gamma);
    if (!rows_exist(first[r], length + 1, s.rows)) return;
    const float T = in.temperature.data_ptr<float>()[r], inv_t = inverse_temperature(T);
    const int64_t sr = in.seed.data_ptr<int64_t>()[r], orr = in.offset.data_ptr<int64_t>()[r];
    const ChainDecision d = chain_decide(in.tokens.data_ptr<int64_t>() + r * s.gamma, length, first[r], T, sr, orr,
                                         gathered, world, s.rows, dp != nullptr, a.vocab_size,
                                         in.eos.data_ptr<int64_t>(), s.num_eos,
                                         out_tokens.data_ptr<int64_t>() + r * (s.gamma + 1));
    num_accepted.data_ptr<int64_t>()[r] = d.accepted;
    num_emitted.data_ptr<int64_t>()[r] = d.accepted + (d.emit != kEmitNone ? 1 : 0);
    uint64_t* key = reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>()) + r * kRaceKeyWords;
    if (d.emit == kEmitKnown) key[0] = known_token_key(d.token);
    if (d.emit < kEmitFromP) return;
    const auto* row = tp + d.row * V;
    const auto* qrow = dp && d.emit == kEmitPMinusQ ? dp + (r * s.gamma + d.position - 1) * V : nullptr;
    std::tie(key[0], key[1]) = shard_two_races(
        row, V, start, inv_t, sr, orr, Purpose::kChainResample, d.position, [&](int64_t v, int64_t id, float xs) {
          if (d.emit == kEmitFromP) return -INFINITY;
          return chain_residual_log_weight(d, xs, qrow ? scaled_logit(load(qrow, v), inv_t) : -INFINITY, id);
        });
  });
  return {out_tokens, num_accepted, num_emitted, keys};
}

// ---------------------------------------------------------------------------------------
// verify_tree

TreeView tree_view(const ShardTensors& in, const std::vector<int64_t>& first, int64_t r, int64_t M, bool has_draft,
                   int64_t vocab_size) {
  return TreeView{in.tokens.data_ptr<int64_t>() + r * M,
                  in.parents.data_ptr<int64_t>() + r * M,
                  std::min(std::max<int64_t>(in.counts.data_ptr<int64_t>()[r], 0), M),
                  first[r],
                  in.temperature.data_ptr<float>()[r],
                  in.seed.data_ptr<int64_t>()[r],
                  in.offset.data_ptr<int64_t>()[r],
                  has_draft,
                  vocab_size};
}

at::Tensor verify_tree_shard_stats(const ShardArgs& a, const TreeSizes& s) {
  auto [stats, out] = empty_stats(s.rows, a.tokens.options());
  if (s.requests == 0 || s.width == 0) return stats;
  const ShardTensors in(a);
  const std::vector<int64_t> first = first_rows(in.counts, 0, s.width);
  const int64_t V = s.vocab, start = a.vocab_start;
  for_each_request("dspark::verify_tree_shard_stats", in, s.requests, [&](int64_t r, auto tp, auto dp) {
    const TreeView t = tree_view(in, first, r, s.width, dp != nullptr, a.vocab_size);
    const float inv_t = inverse_temperature(t.temperature);
    if (!rows_exist(t.first_row, t.nodes, s.rows)) return;
    for (int64_t i = 0; i < t.nodes; ++i) {
      const auto* row = tp + (t.first_row + i) * V;
      ShardRowStats& st = out[t.first_row + i];
      if (is_greedy(t.temperature)) {
        st.argmax_key = shard_argmax(row, V, start);
        continue;
      }
      if (dp && tree_next_valid_child(t, i, i + 1) >= 0) {
        // Recursive rejection at node i: p_i and q_i statistics.
        const SoftmaxStats ps = shard_softmax(row, V, inv_t);
        const SoftmaxStats qs = shard_softmax(dp + (t.first_row + i) * V, V, inv_t);
        st.p_max = ps.max;
        st.p_sum = ps.sum;
        st.q_max = qs.max;
        st.q_sum = qs.sum;
      } else {
        st.race_key = shard_p_race(row, V, start, inv_t, t.seed, t.offset, Purpose::kTreeResample,
                                   static_cast<uint32_t>(i));
      }
      // p_{parent}(x_i), q_{parent}(x_i) for the acceptance test of node i.
      const int64_t parent = t.parents[i], x = t.tokens[i] - start;
      if (dp && i > 0 && parent >= 0 && parent < i && x >= 0 && x < V) {
        st.p_x = scaled_logit(load(tp + (t.first_row + parent) * V, x), inv_t);
        st.q_x = scaled_logit(load(dp + (t.first_row + parent) * V, x), inv_t);
      }
    }
  });
  return stats;
}

// state: (walk, out_tokens, accepted_nodes, fresh) from check_walk_state; masses [W, R].
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> verify_tree_shard_walk(
    const ShardArgs& a, const TreeSizes& s, int64_t world, std::tuple<at::Tensor, at::Tensor, at::Tensor, bool>& state,
    const std::optional<at::Tensor>& masses) {
  const int64_t R = s.requests, M = s.width;
  auto& [w_t, out_t, nodes_t, fresh] = state;
  auto partial = at::zeros({R}, a.tokens.options().dtype(at::kFloat));
  if (R == 0 || M == 0) return {w_t, out_t, nodes_t, partial};
  const ShardTensors in(a);
  const auto mass = masses ? masses->contiguous() : at::zeros({1, R}, a.tokens.options().dtype(at::kFloat));
  const std::vector<int64_t> first = first_rows(in.counts, 0, M);
  const ShardRowStats* gathered = stats_ptr(in.stats);
  TreeWalk* walks = reinterpret_cast<TreeWalk*>(w_t.data_ptr<int64_t>());
  const int64_t V = s.vocab;
  for_each_request("dspark::verify_tree_shard_walk", in, R, [&](int64_t r, auto tp, auto dp) {
    const TreeView t = tree_view(in, first, r, M, dp != nullptr, a.vocab_size);
    const float inv_t = inverse_temperature(t.temperature);
    TreeWalk& w = walks[r];
    if (fresh) w = tree_walk_start();
    if (t.nodes == 0 || !rows_exist(t.first_row, t.nodes, s.rows)) {
      w.status = kWalkDone;  // an empty (or absent) tree emits nothing
      w.token = -1;
      return;
    }
    // D = Σ over ranks of the partial masses, in rank order (the same bits everywhere).
    float D = 0.0f;
    for (int64_t k = 0; k < mass.size(0); ++k) D += mass.data_ptr<float>()[k * R + r];
    tree_advance(w, t, gathered, world, s.rows, D, in.eos.data_ptr<int64_t>(), s.num_eos,
                 out_t.data_ptr<int64_t>() + r * M, nodes_t.data_ptr<int64_t>() + r * M);
    if (w.status != kWalkNeedMass) return;
    const MergedRow m = merge_row(gathered, world, s.rows, t.first_row + w.node);
    const auto* row = tp + (t.first_row + w.node) * V;
    const auto* qrow = dp + (t.first_row + w.node) * V;
    // Σ_v max(0, tree_residual(p(v), c, q(v))) as two separate ops (no fused multiply-add).
    const at::Tensor p = probs_under(scaled_row(row, V, inv_t), m.p);
    const at::Tensor cq = probs_under(scaled_row(qrow, V, inv_t), m.q).mul_(w.c);
    const float sum = V > 0 ? p.sub_(cq).clamp_min_(0.0f).sum().item<float>() : 0.0f;
    partial.data_ptr<float>()[r] = sum;
  });
  return {w_t, out_t, nodes_t, partial};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_shard_race(const ShardArgs& a, const TreeSizes& s,
                                                                      int64_t world, const at::Tensor& walk) {
  const int64_t R = s.requests, M = s.width;
  const auto opts = a.tokens.options();
  auto keys = at::zeros({R, kRaceKeyWords}, opts);
  auto num_accepted = at::zeros({R}, opts);
  auto num_emitted = at::zeros({R}, opts);
  if (R == 0 || M == 0) return {keys, num_accepted, num_emitted};
  const ShardTensors in(a);
  const auto wk = walk.contiguous();
  const std::vector<int64_t> first = first_rows(in.counts, 0, M);
  const ShardRowStats* gathered = stats_ptr(in.stats);
  const TreeWalk* walks = reinterpret_cast<const TreeWalk*>(wk.data_ptr<int64_t>());
  const int64_t V = s.vocab, start = a.vocab_start;
  for_each_request("dspark::verify_tree_shard_race", in, R, [&](int64_t r, auto tp, auto dp) {
    const TreeWalk& w = walks[r];
    const bool race = w.status == kWalkNeedRace || w.status == kWalkNeedMass;
    num_accepted.data_ptr<int64_t>()[r] = w.accepted;
    num_emitted.data_ptr<int64_t>()[r] = w.accepted + (race || w.token >= 0 ? 1 : 0);
    uint64_t* key = reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>()) + r * kRaceKeyWords;
    if (!race) {
      if (w.token >= 0) key[0] = known_token_key(w.token);
      return;
    }
    const TreeView t = tree_view(in, first, r, M, dp != nullptr, a.vocab_size);
    const float inv_t = inverse_temperature(t.temperature);
    const MergedRow m = merge_row(gathered, world, s.rows, t.first_row + w.node);
    const auto* row = tp + (t.first_row + w.node) * V;
    const auto* qrow = dp ? dp + (t.first_row + w.node) * V : nullptr;  // null: no race reaches here
    std::tie(key[0], key[1]) = shard_two_races(
        row, V, start, inv_t, t.seed, t.offset, Purpose::kTreeResample, static_cast<uint32_t>(w.node),
        [&](int64_t v, int64_t, float xs) {
          const float rv = tree_residual(m.p.prob(xs), w.c, qrow ? m.q.prob(scaled_logit(load(qrow, v), inv_t)) : 0.0f);
          return rv > 0.0f ? logf(rv) : -INFINITY;
        });
  });
  return {keys, num_accepted, num_emitted};
}

// ---------------------------------------------------------------------------------------
// Both families: place the gathered race winner.

void verify_shard_finish(at::Tensor& out, const at::Tensor& num_accepted, const at::Tensor& num_emitted,
                         const at::Tensor& race_keys, int64_t world) {
  const int64_t R = out.size(0), C = out.size(1);
  const uint64_t* keys = reinterpret_cast<const uint64_t*>(race_keys.data_ptr<int64_t>());
  for (int64_t r = 0; r < R; ++r) {
    const int64_t a = num_accepted.data_ptr<int64_t>()[r];
    if (num_emitted.data_ptr<int64_t>()[r] <= a || a < 0 || a >= C) continue;
    out.data_ptr<int64_t>()[r * C + a] = gathered_race_token(keys, world, R, r);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CPU, m) {
  ShardOps<&verify_chain_shard_stats, &verify_chain_shard_decide, &verify_tree_shard_stats, &verify_tree_shard_walk,
           &verify_tree_shard_race, &verify_shard_finish>::register_all(m);
}

}  // namespace dspark::cpu
