// CPU kernels of dspark::tree_metadata and dspark::verify_tree (SPEC §5, §9, §10): requests in
// parallel, each tree walked from the root. Per visited node the target row is read once:
// greedy argmax, or (sampling) into per-thread scratch as its scaled, filtered logits and
// softmax statistics (cpu/row_dist.h); the scratch is then raced for y ~ p_i / the bonus token,
// or, with a draft q, swept once more per rejected child that is followed by another child and
// once for the residual race when every child is rejected (dspark/tree_sampling.h gives the
// closed form of the residuals). A sparse q (draft_ids) is read through its K listed entries.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "common/verify_tree_args.h"
#include "cpu/dispatch.h"
#include "cpu/row_dist.h"
#include "cpu/row_ops.h"
#include "dspark/eos.h"
#include "dspark/tree_sampling.h"

namespace dspark::cpu {
namespace {

// ---------------------------------------------------------------------------------------
// tree_metadata

// parents [R, M], num_nodes [R], prefix_lens [R] -> attn_mask [R, M, M] bool,
// positions [R, M], depth [R, M]. A node whose parent is out of [0, i) (only possible where
// value checks are off) is detached: it and its descendants are laid out like padding rows.
std::tuple<at::Tensor, at::Tensor, at::Tensor> tree_metadata(const at::Tensor& parents, const at::Tensor& num_nodes,
                                                             const at::Tensor& prefix_lens) {
  const TreeSizes s = check_tree_metadata_args(parents, num_nodes, prefix_lens);
  const int64_t R = s.requests, M = s.width;
  auto attn_mask = at::zeros({R, M, M}, parents.options().dtype(at::kBool));
  auto positions = at::full({R, M}, -1, parents.options());
  auto depth = at::full({R, M}, -1, parents.options());
  if (R == 0 || M == 0) return {attn_mask, positions, depth};
  const auto par = parents.contiguous(), cnt = num_nodes.contiguous(), pre = prefix_lens.contiguous();
  const int64_t* pp = par.data_ptr<int64_t>();
  const int64_t* np = cnt.data_ptr<int64_t>();
  const int64_t* lp = pre.data_ptr<int64_t>();
  bool* mp = attn_mask.data_ptr<bool>();
  int64_t* posp = positions.data_ptr<int64_t>();
  int64_t* dp = depth.data_ptr<int64_t>();
  at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = std::min(std::max<int64_t>(np[r], 0), M);
      const int64_t* pr = pp + r * M;
      bool* mask = mp + r * M * M;
      int64_t* d = dp + r * M;
      for (int64_t i = 0; i < M; ++i) {
        bool* row = mask + i * M;
        row[i] = true;
        if (i >= n) continue;
        if (i == 0) {
          d[0] = 0;
        } else {
          const int64_t parent = pr[i];
          if (parent < 0 || parent >= i || d[parent] < 0) continue;  // detached
          d[i] = d[parent] + 1;
          const bool* above = mask + parent * M;
          for (int64_t j = 0; j < i; ++j) row[j] = above[j];
        }
        posp[r * M + i] = tree_position(lp[r], d[i]);
      }
    }
  });
  return {attn_mask, positions, depth};
}

// ---------------------------------------------------------------------------------------
// verify_tree

struct TreeRequest {
  const int64_t* tokens;   // [M] node tokens (tokens[0] is the anchor, never read)
  const int64_t* parents;  // [M]
  int64_t nodes;           // n_r, cut to the rows that exist
  int64_t first_row;       // index of this request's node 0 in target_logits
  float temperature;
  int64_t seed, offset;
  RowFilter filter;
  int64_t* out;        // [M] output tokens, pre-filled with -1
  int64_t* out_nodes;  // [M] accepted node indices, pre-filled with -1
};

// The draft side of the batch: node row i's q is row i of [N, W] logits or probabilities,
// dense (W = V) or sparse with ids [N, W].
template <typename TD>
struct TreeDrafts {
  const TD* logits;    // [N, W] or nullptr
  const float* probs;  // [N, W] or nullptr
  const int64_t* ids;  // [N, W] or nullptr
  int64_t width, vocab;

  bool given() const { return logits || probs; }
  DraftRow<TD> row(int64_t row, float inv_temperature, RowScratch& sc) const {
    const int64_t at = row * width;
    return draft_row(logits ? logits + at : nullptr, probs ? probs + at : nullptr, ids ? ids + at : nullptr, width,
                     vocab, inv_temperature, sc);
  }
};

// The first child of `node` whose token is `token` (-1: none).
int64_t child_with_token(const TreeRequest& q, int64_t node, int64_t token) {
  for (int64_t j = node + 1; j < q.nodes; ++j)
    if (q.parents[j] == node && q.tokens[j] == token) return j;
  return -1;
}

// The first child of `node` at index >= from with an in-range token (-1: none). Children
// with a token outside [0, V) cannot have been drawn from q_i: they are skipped entirely
// (no coin, no residual update), which keeps the remaining children i.i.d. from q_i.
int64_t next_valid_child(const TreeRequest& q, int64_t node, int64_t from, int64_t vocab) {
  for (int64_t j = from; j < q.nodes; ++j)
    if (q.parents[j] == node && q.tokens[j] >= 0 && q.tokens[j] < vocab) return j;
  return -1;
}

// Recursive rejection sampling at `node` (which has at least one valid child `first`) with
// the node's (filtered) target row p and draft row q.
// Returns (accepted child or -1, emitted token or -1).
template <typename TD>
std::pair<int64_t, int64_t> recursive_rejection(const TreeRequest& t, int64_t node, int64_t first, const TargetRow& p,
                                                const DraftRow<TD>& q, int64_t vocab, RowScratch& sc) {
  DraftSweep<TD> sweep(q, sc);
  float c = 0.0f, D = 1.0f;  // p' = max(0, p - c q) / D (dspark/tree_sampling.h)
  for (int64_t j = first; j >= 0;) {
    const int64_t x = t.tokens[j];
    const float px = p.prob(x), qx = q.prob(x);
    const float coin = random_uniform(t.seed, t.offset, Purpose::kTreeCoin, static_cast<uint32_t>(node),
                                      static_cast<uint64_t>(j));
    if (coin * qx < tree_residual_prob(px, qx, c, D)) return {j, -1};
    c += D;
    j = next_valid_child(t, node, j + 1, vocab);
    if (j < 0) break;
    float mass = 0.0f;
    sweep.restart();
    for (int64_t v = 0; v < vocab; ++v) {
      const float r = tree_residual(p.prob(v), c, sweep.at(v));
      if (r > 0.0f) mass += r;
    }
    if (!(mass > 0.0f)) break;  // p' has no mass left: no later child is accepted
    D = mass;
  }
  // Emit from the final p' = norm(max(0, p - c q)); from p if that has no mass. An entry's
  // residual is at most p_v (c q >= 0), so an entry that cannot win either race with the bound
  // of log p_v skips its exponentials and logarithm too.
  BoundedRace residual, fallback;
  sweep.restart();
  const LogProbBound log_p = p.log_prob_bound();
  for_each_uniform(vocab, t.seed, t.offset, Purpose::kTreeResample, static_cast<uint32_t>(node), sc,
                   [&](int64_t v, float u) {
                     const float xv = p.s[v];
                     if (cannot_win(residual, log_p(xv), u) && cannot_win(fallback, xv, u)) return;
                     const float r = tree_residual(p.prob(v), c, sweep.at(v));
                     const float lr = r > 0.0f ? logf(r) : -INFINITY;
                     const bool use_r = !residual.hopeless(lr), use_f = !fallback.hopeless(xv);
                     if (!use_r && !use_f) return;
                     const float g = gumbel_from_uniform(u);
                     if (use_r) residual.add(lr, g, v);
                     if (use_f) fallback.add(xv, g, v);
                   });
  return {-1, residual.race.empty() ? fallback.race.index() : residual.race.index()};
}

// target: [N, V]. Returns (num_accepted, num_emitted).
template <typename TT, typename TD>
std::pair<int64_t, int64_t> verify_one(const TreeRequest& t, const TT* target, const TreeDrafts<TD>& drafts,
                                       int64_t vocab, const int64_t* eos, int64_t num_eos, RowScratch& sc) {
  if (t.nodes <= 0) return {0, 0};
  const bool greedy = is_greedy(t.temperature);
  const float inv_t = inverse_temperature(t.temperature);
  int64_t node = 0, accepted = 0;
  while (true) {
    const TT* prow = target + (t.first_row + node) * vocab;
    int64_t next = -1, emitted = -1;
    if (greedy) {
      const int64_t best = row_argmax(prow, vocab);
      next = child_with_token(t, node, best);
      if (next < 0) emitted = best;
    } else {
      const TargetRow p = target_row(prow, vocab, inv_t, t.filter, sc);
      const int64_t first = drafts.given() ? next_valid_child(t, node, node + 1, vocab) : -1;
      if (first >= 0) {
        const DraftRow<TD> q = drafts.row(t.first_row + node, inv_t, sc);
        std::tie(next, emitted) = recursive_rejection(t, node, first, p, q, vocab, sc);
      } else {
        // y ~ p_node; with a draft q this node has no valid child and y is the bonus token.
        BoundedRace race;
        for_each_uniform(vocab, t.seed, t.offset, Purpose::kTreeResample, static_cast<uint32_t>(node), sc,
                         [&](int64_t v, float u) { race_add(race, p.s[v], u, v); });
        const int64_t y = race.race.index();
        next = drafts.given() ? -1 : child_with_token(t, node, y);
        if (next < 0) emitted = y;
      }
    }
    if (next < 0) {
      t.out[accepted] = emitted;
      return {accepted, accepted + 1};
    }
    t.out[accepted] = t.tokens[next];
    t.out_nodes[accepted++] = next;
    if (is_eos(t.tokens[next], eos, num_eos)) return {accepted, accepted};
    node = next;
  }
}

// Arguments checked by verify_tree_op (common/verify_tree_args.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> verify_tree(const VerifyTreeArgs& a, const TreeSizes& s) {
  const auto& [target_logits, tree_tokens, parents, num_nodes, temperature, seed, offset, draft_logits, eos_ids, top_k,
               top_p, min_p, draft_probs, draft_ids] = a;
  const int64_t R = s.requests, M = s.width;
  const auto opts = tree_tokens.options();
  auto out_tokens = at::full({R, M}, -1, opts);
  auto accepted_nodes = at::full({R, M}, -1, opts);
  auto num_accepted = at::zeros({R}, opts);
  auto num_emitted = at::zeros({R}, opts);
  if (R == 0 || M == 0) return {out_tokens, accepted_nodes, num_accepted, num_emitted};

  const auto target = target_logits.contiguous();
  const auto tokens = tree_tokens.contiguous(), par = parents.contiguous(), cnt = num_nodes.contiguous();
  const auto dlogits = contiguous_or_none(draft_logits), dprobs = contiguous_or_none(draft_probs),
             dids = contiguous_or_none(draft_ids);
  const auto tk = contiguous_or_none(top_k), tp = contiguous_or_none(top_p), mp = contiguous_or_none(min_p);
  const auto eos = eos_ids ? eos_ids->contiguous() : at::empty({0}, opts);
  const auto temp = temperature.contiguous(), sd = seed.contiguous(), off = offset.contiguous();

  // Row starts: request r's nodes begin after Σ_{r' < r} n_r'.
  std::vector<int64_t> first_row(R);
  const int64_t* np = cnt.data_ptr<int64_t>();
  for (int64_t r = 0, acc = 0; r < R; ++r) {
    first_row[r] = acc;
    acc += np[r];
  }
  const int64_t* kp = data_or_null<int64_t>(tk);
  const float *pp = data_or_null<float>(tp), *mpp = data_or_null<float>(mp);

  dispatch_target_draft("dspark::verify_tree", target, dlogits, [&]<typename TT, typename TD>() {
    const TT* tgt = target.data_ptr<TT>();
    const TreeDrafts<TD> dr{data_or_null<TD>(dlogits), data_or_null<float>(dprobs), data_or_null<int64_t>(dids),
                            s.q.width, s.vocab};
    at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
      RowScratch sc;
      for (int64_t r = begin; r < end; ++r) {
        const RowFilter f = make_row_filter(kp ? kp[r] : 0, pp ? pp[r] : 1.0f, mpp ? mpp[r] : 0.0f, s.vocab);
        TreeRequest t{tokens.data_ptr<int64_t>() + r * M,
                      par.data_ptr<int64_t>() + r * M,
                      np[r],
                      first_row[r],
                      temp.data_ptr<float>()[r],
                      sd.data_ptr<int64_t>()[r],
                      off.data_ptr<int64_t>()[r],
                      f,
                      out_tokens.data_ptr<int64_t>() + r * M,
                      accepted_nodes.data_ptr<int64_t>() + r * M};
        std::tie(num_accepted.data_ptr<int64_t>()[r], num_emitted.data_ptr<int64_t>()[r]) = verify_one(
            t, tgt, dr, s.vocab, eos.data_ptr<int64_t>(), s.num_eos, sc);
      }
    });
  });
  return {out_tokens, accepted_nodes, num_accepted, num_emitted};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CPU, m) { register_tree_ops<&tree_metadata, &verify_tree>(m); }

}  // namespace dspark::cpu
