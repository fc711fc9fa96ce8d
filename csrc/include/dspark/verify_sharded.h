// Vocab-parallel verification (SPEC §11), host + device: the per-request logic shared by the
// CPU and CUDA kernels of the per-rank phase ops. A rank holds the vocabulary ids
// [vocab_start, vocab_start + V_i) of every logit row. Each phase reads only its shard and
// emits a few numbers per row or per request; dspark_ops/distributed.py all-gathers them and
// the next phase merges the W ranks' numbers in rank order, so every rank computes the same
// bits and every rank's outputs are identical.
//
// Exchanged records (int64 tensors, reinterpreted as these structs):
//   ShardRowStats [N, 5]  per logit row: softmax statistics of p (and q) over the shard, the
//                         scaled logits of the row's draft token when the shard owns it (-inf
//                         otherwise), the greedy argmax key and the Gumbel race key of p.
//   race keys   [R, 2]    per request: the shard's winner of the residual race and of the
//                         fallback race over p (SPEC: "if that mass is 0, from p").
//   partial mass [R]      verify_tree with draft_logits: the shard's part of
//                         D = Σ_v max(0, p(v) - c q(v)) (dspark/tree_sampling.h).
// Race keys are built with GLOBAL vocabulary ids (race_key orders by score, then by the lower
// id), so the max over ranks picks the single-device winner whatever the rank order, and the
// Gumbel noise of id v is the single-device noise of v (Philox index = global id).
#pragma once

#include <cstdint>

#include "dspark/eos.h"
#include "dspark/sampling.h"
#include "dspark/tree_sampling.h"

namespace dspark {

struct ShardRowStats {
  float p_max, p_sum;  // SoftmaxStats of the target row / T over the shard
  float q_max, q_sum;  // SoftmaxStats of the draft row / T over the shard (unused: 0)
  float p_x, q_x;      // scaled target / draft logit of the row's draft token; -inf if not here
  uint64_t argmax_key;  // greedy: argmax key of the raw target logits over the shard (0: none)
  uint64_t race_key;    // verify_tree: race over target row / T, Purpose::kTreeResample (0: none)
};
static_assert(sizeof(ShardRowStats) == 40, "ShardRowStats is exchanged as 5 int64 words");
constexpr int64_t kShardStatsWords = 5;
constexpr int64_t kRaceKeyWords = 2;  // residual, fallback

DSPARK_HD ShardRowStats empty_row_stats() {
  return ShardRowStats{-INFINITY, 0.0f, -INFINITY, 0.0f, -INFINITY, -INFINITY, 0, 0};
}

// Greedy argmax as a race key: NaN never wins; -0 counts as +0 (ArgMax compares values, so
// the two zeros tie and the lower id wins there too); an all-NaN row keeps key 0 (token 0).
DSPARK_HD uint64_t argmax_key(float value, int64_t global_id) {
  if (!(value == value)) return 0;
  return race_key(value == 0.0f ? 0.0f : value, global_id);
}

// A token that every rank already knows (greedy, or a race decided by the gathered stats):
// every rank sends the same key, so the max over ranks returns it.
DSPARK_HD uint64_t known_token_key(int64_t token) { return race_key(0.0f, token); }

DSPARK_HD uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

// The rows' statistics merged over the W ranks in rank order (the same bits on every rank).
struct MergedRow {
  SoftmaxStats p, q;
  float p_x = -INFINITY, q_x = -INFINITY;
  uint64_t argmax = 0, race = 0;
};

// gathered: [W, rows] records; returns the merge of row `row`.
DSPARK_HD MergedRow merge_row(const ShardRowStats* gathered, int64_t world, int64_t rows, int64_t row) {
  MergedRow m;
  for (int64_t w = 0; w < world; ++w) {
    const ShardRowStats& s = gathered[w * rows + row];
    SoftmaxStats ps, qs;
    ps.max = s.p_max;
    ps.sum = s.p_sum;
    qs.max = s.q_max;
    qs.sum = s.q_sum;
    m.p.merge(ps);
    m.q.merge(qs);
    m.p_x = s.p_x > m.p_x ? s.p_x : m.p_x;
    m.q_x = s.q_x > m.q_x ? s.q_x : m.q_x;
    m.argmax = max_u64(m.argmax, s.argmax_key);
    m.race = max_u64(m.race, s.race_key);
  }
  return m;
}

// The token of request r from the gathered race keys [W, R, 2]: the residual race's winner,
// or the fallback race's when no rank has residual mass (token 0 when neither has a candidate,
// as in the single-device ops).
DSPARK_HD int64_t gathered_race_token(const uint64_t* keys, int64_t world, int64_t requests, int64_t r) {
  uint64_t residual = 0, fallback = 0;
  for (int64_t w = 0; w < world; ++w) {
    residual = max_u64(residual, keys[(w * requests + r) * kRaceKeyWords]);
    fallback = max_u64(fallback, keys[(w * requests + r) * kRaceKeyWords + 1]);
  }
  return race_index(residual != 0 ? residual : fallback);
}

// log Σ exp of a row from merged statistics (-inf for a row without a finite logit), the
// normaliser verify_chain uses: p(v) = exp(x_v - log_norm).
DSPARK_HD float log_norm(const SoftmaxStats& s) { return s.sum > 0.0f ? s.max + logf(s.sum) : -INFINITY; }

DSPARK_HD float prob_from_log_norm(float x, float lognorm) {
  return (lognorm > -INFINITY && x > -INFINITY) ? expf(x - lognorm) : 0.0f;
}

// Calls visit(local_id, global_id, bits) for the shard's local ids [0, count), global id
// start + local, with the words of (seed, offset, purpose, position, global id): one Philox
// call per group of four global ids. Groups are visited from `group_begin` in steps of
// `group_step` (0, 1 on the CPU; threadIdx.x, blockDim.x on CUDA).
template <typename Visit>
DSPARK_HD void for_each_shard_bits(int64_t start, int64_t count, int64_t seed, int64_t offset, Purpose purpose,
                                   uint32_t position, int64_t group_begin, int64_t group_step, Visit&& visit) {
  const int64_t first_group = start >> 2, end = start + count;
  const int64_t groups = ((end + 3) >> 2) - first_group;
  for (int64_t g = group_begin; g < groups; g += group_step) {
    const int64_t base = (first_group + g) << 2;
    const Philox4 bits = random_block(seed, offset, purpose, position, static_cast<uint64_t>(base));
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t id = base + lane;
      if (id >= start && id < end) visit(id - start, id, bits.v[lane]);
    }
  }
}

// A request's rows go past the rows that exist only when unchecked values are inconsistent
// (CUDA without DSPARK_CHECK): such a request is absent (SPEC §2).
DSPARK_HD bool rows_exist(int64_t first_row, int64_t count, int64_t rows) {
  return first_row >= 0 && count >= 0 && first_row + count <= rows;
}

// ---------------------------------------------------------------------------------------
// verify_chain (SPEC §4) on merged statistics.

// How the emitted token of a chain request is drawn once the walk has stopped.
enum ChainEmit : int32_t {
  kEmitNone = 0,       // stopped at an accepted EOS: nothing emitted
  kEmitKnown = 1,      // greedy: the token is known from the merged argmax
  kEmitFromP = 2,      // bonus token, or an invalid draft: race over p (the scaled logits)
  kEmitPMinusQ = 3,    // rejection with draft_logits: race over log max(0, p - q)
  kEmitPMinusOne = 4,  // rejection of a deterministic draft x: race over p without x
};

struct ChainDecision {
  int64_t accepted = 0;
  int32_t emit = kEmitNone;
  int64_t row = 0;          // the target row the token is drawn from (and draft row k - 1)
  uint32_t position = 0;    // Philox position of Purpose::kChainResample (k, or ℓ + 1)
  int64_t token = -1;       // kEmitKnown: the token; kEmitPMinusOne: the draft x
  float p_log_norm = -INFINITY, q_log_norm = -INFINITY;
};

// Walks request r's chain on the gathered stats [W, rows] and writes its accepted drafts to
// out [γ + 1]. length is ℓ (already in [0, γ]); draft row k - 1 of the request is q_k.
DSPARK_HD ChainDecision chain_decide(const int64_t* drafts, int64_t length, int64_t first_row, float temperature,
                                     int64_t seed, int64_t offset, const ShardRowStats* gathered, int64_t world,
                                     int64_t rows, bool has_draft, int64_t vocab_size, const int64_t* eos,
                                     int64_t num_eos, int64_t* out) {
  ChainDecision d;
  const bool greedy = is_greedy(temperature);
  for (int64_t k = 1; k <= length + 1; ++k) {
    const int64_t row = first_row + k - 1;
    const MergedRow m = merge_row(gathered, world, rows, row);
    d.row = row;
    d.position = static_cast<uint32_t>(k);
    if (greedy) {
      d.emit = kEmitKnown;
      d.token = race_index(m.argmax);
    } else {
      d.emit = kEmitFromP;
      d.p_log_norm = log_norm(m.p);
      d.q_log_norm = log_norm(m.q);
    }
    if (k == length + 1) return d;  // every draft accepted: the bonus token
    const int64_t x = drafts[k - 1];
    const bool valid = x >= 0 && x < vocab_size;
    bool accept;
    if (greedy) {
      accept = valid && x == d.token;
    } else {
      // An invalid draft ends the chain with a token drawn from p itself (SPEC §4).
      const float p_x = valid ? prob_from_log_norm(m.p_x, d.p_log_norm) : 0.0f;
      const float q_x = valid && has_draft ? prob_from_log_norm(m.q_x, d.q_log_norm) : 1.0f;
      const float coin = random_uniform(seed, offset, Purpose::kChainCoin, static_cast<uint32_t>(k), 0);
      accept = coin * q_x < p_x;
      if (!accept && valid) {
        d.emit = has_draft ? kEmitPMinusQ : kEmitPMinusOne;
        d.token = x;
      }
    }
    if (!accept) return d;
    out[d.accepted++] = x;
    if (is_eos(x, eos, num_eos)) {
      d.emit = kEmitNone;
      return d;
    }
  }
  return d;  // not reached
}

// Log-weight of shard entry v in the race of a chain decision (kEmitPMinusQ, kEmitPMinusOne):
// log max(0, p(v) - q(v)), computed as verify_chain computes its residual row; -inf for no mass.
DSPARK_HD float chain_residual_log_weight(const ChainDecision& d, float xs, float qs, int64_t global_id) {
  const float p = prob_from_log_norm(xs, d.p_log_norm);
  float q;
  if (d.emit == kEmitPMinusQ) {
    q = prob_from_log_norm(qs, d.q_log_norm);
  } else {
    q = global_id == d.token ? 1.0f : 0.0f;
  }
  const float r = p - q;
  return r > 0.0f ? logf(r) : -INFINITY;
}

// ---------------------------------------------------------------------------------------
// verify_tree (SPEC §5) on merged statistics: a resumable walk. With draft_logits each
// rejection that is followed by another child needs the residual mass D over the whole
// vocabulary, i.e. a collective: the walk stops in kWalkNeedMass and resumes with the
// gathered partial masses.

enum TreeWalkStatus : int32_t {
  kWalkActive = 0,    // walking (only between steps of tree_advance)
  kWalkNeedMass = 1,  // waiting for D of node `node` with the current c; then test `child`
  kWalkNeedRace = 2,  // every child of `node` rejected: emit from max(0, p - c q) (or p)
  kWalkDone = 3,      // finished: `token` emitted, or -1 after an accepted EOS
};

struct TreeWalk {
  int64_t node;      // current node
  int64_t child;     // child under test (-1: node not entered yet)
  int64_t accepted;  // accepted nodes so far
  int64_t token;     // kWalkDone: the emitted token (-1: none)
  float c, D;        // residual state p' = max(0, p - c q) / D (dspark/tree_sampling.h)
  int32_t status, unused;
};
static_assert(sizeof(TreeWalk) == 48, "TreeWalk is stored as 6 int64 words");
constexpr int64_t kTreeWalkWords = 6;

DSPARK_HD TreeWalk tree_walk_start() { return TreeWalk{0, -1, 0, -1, 0.0f, 1.0f, kWalkActive, 0}; }

// One request's tree: tokens/parents [M], n nodes, rows first_row.. of the stats.
struct TreeView {
  const int64_t* tokens;
  const int64_t* parents;
  int64_t nodes, first_row;
  float temperature;
  int64_t seed, offset;
  bool has_draft;
  int64_t vocab_size;
};

// The first child of `node` with `token` (-1: none), as verify_tree.
DSPARK_HD int64_t tree_child_with_token(const TreeView& t, int64_t node, int64_t token) {
  for (int64_t j = node + 1; j < t.nodes; ++j)
    if (t.parents[j] == node && t.tokens[j] == token) return j;
  return -1;
}

// The first child of `node` at index >= from with a token in [0, V) (-1: none).
DSPARK_HD int64_t tree_next_valid_child(const TreeView& t, int64_t node, int64_t from) {
  for (int64_t j = from; j < t.nodes; ++j)
    if (t.parents[j] == node && t.tokens[j] >= 0 && t.tokens[j] < t.vocab_size) return j;
  return -1;
}

// Advances the walk as far as the gathered stats allow. `mass` is the gathered D for a walk in
// kWalkNeedMass (ignored otherwise). Accepted nodes go to out / out_nodes [M].
DSPARK_HD void tree_advance(TreeWalk& w, const TreeView& t, const ShardRowStats* gathered, int64_t world, int64_t rows,
                            float mass, const int64_t* eos, int64_t num_eos, int64_t* out, int64_t* out_nodes) {
  if (w.status == kWalkNeedMass) {
    if (!(mass > 0.0f)) {  // p' has no mass left: no later child is accepted
      w.status = kWalkNeedRace;
      return;
    }
    w.D = mass;
    w.status = kWalkActive;
  }
  const bool greedy = is_greedy(t.temperature);
  while (w.status == kWalkActive) {
    const MergedRow m = merge_row(gathered, world, rows, t.first_row + w.node);
    int64_t next = -1;
    if (w.child < 0) {  // entering the node
      const int64_t first = t.has_draft && !greedy ? tree_next_valid_child(t, w.node, w.node + 1) : -1;
      if (first >= 0) {
        w.child = first;
        w.c = 0.0f;
        w.D = 1.0f;
      } else {
        const int64_t y = race_index(greedy ? m.argmax : m.race);
        next = greedy || !t.has_draft ? tree_child_with_token(t, w.node, y) : -1;
        if (next < 0) {
          w.status = kWalkDone;
          w.token = y;
          return;
        }
      }
    }
    if (next < 0) {  // recursive rejection sampling at child w.child
      const int64_t j = w.child;
      const MergedRow mj = merge_row(gathered, world, rows, t.first_row + j);
      const float px = m.p.prob(mj.p_x), qx = m.q.prob(mj.q_x);
      const float coin = random_uniform(t.seed, t.offset, Purpose::kTreeCoin, static_cast<uint32_t>(w.node),
                                        static_cast<uint64_t>(j));
      if (coin * qx < tree_residual_prob(px, qx, w.c, w.D)) {
        next = j;
      } else {
        w.c += w.D;
        const int64_t following = tree_next_valid_child(t, w.node, j + 1);
        if (following < 0) {
          w.status = kWalkNeedRace;
        } else {
          w.child = following;
          w.status = kWalkNeedMass;
        }
        return;
      }
    }
    out[w.accepted] = t.tokens[next];
    out_nodes[w.accepted++] = next;
    if (is_eos(t.tokens[next], eos, num_eos)) {
      w.status = kWalkDone;
      w.token = -1;
      return;
    }
    w.node = next;
    w.child = -1;
  }
}

}  // namespace dspark
