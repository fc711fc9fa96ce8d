// CPU kernel of dspark::verify_chain (SPEC §4, §9, §10): requests in parallel, each walked left
// to right. A sampling row is read once into per-thread scratch (scaled, filtered, its softmax
// statistics) and the drawing row is raced once more over that scratch; rows after the first
// rejection are never read. No ATen op runs per request (cpu/row_dist.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "common/verify_chain_args.h"
#include "cpu/dispatch.h"
#include "cpu/row_dist.h"
#include "cpu/row_ops.h"
#include "dspark/eos.h"

namespace dspark::cpu {
namespace {

struct ChainRequest {
  const int64_t* drafts;  // [γ] this request's proposed tokens
  int64_t length;         // ℓ
  int64_t first_row;      // index of this request's row 0 in target_logits
  float temperature;
  int64_t seed, offset;
  RowFilter filter;
  int64_t* out;  // [γ + 1] output row, pre-filled with -1
};

// The draft side of the batch: q rows of request r at position k are row (r * γ + k - 1).
template <typename TD>
struct ChainDrafts {
  const TD* logits;      // [R, γ, W] or nullptr
  const float* probs;    // [R, γ, W] or nullptr
  const int64_t* ids;    // [R, γ, W] or nullptr (dense: W = V)
  int64_t width, gamma, vocab;

  bool given() const { return logits || probs; }
  DraftRow<TD> row(int64_t request, int64_t k, float inv_temperature, RowScratch& sc) const {
    const int64_t at = (request * gamma + k - 1) * width;
    return draft_row(logits ? logits + at : nullptr, probs ? probs + at : nullptr, ids ? ids + at : nullptr, width,
                     vocab, inv_temperature, sc);
  }
};

// The token drawn at `position` from norm(max(0, p - q)), or from p itself when q is null or
// the residual has no mass: Gumbel races with noise keyed by vocabulary id, as on CUDA.
template <typename TD>
int64_t draw(const TargetRow& p, const DraftRow<TD>* q, const ChainRequest& c, uint32_t position, int64_t vocab,
             RowScratch& sc) {
  BoundedRace residual, plain;
  const LogProbBound log_p = p.log_prob_bound();
  std::optional<DraftSweep<TD>> sweep;
  if (q) sweep.emplace(*q, sc);
  for_each_uniform(vocab, c.seed, c.offset, Purpose::kChainResample, position, sc, [&](int64_t v, float u) {
    const float xv = p.s[v];
    race_add(plain, xv, u, v);
    if (q && !cannot_win(residual, log_p(xv), u)) {  // log p_v bounds log(p_v - q_v)
      const float pv = p.prob(v), qv = sweep->at(v);
      race_add(residual, pv > qv ? logf(pv - qv) : -INFINITY, u, v);
    }
  });
  return (q && !residual.race.empty()) ? residual.race.index() : plain.race.index();
}

// target: [N, V]. Returns (num_accepted, num_emitted).
template <typename TT, typename TD>
std::pair<int64_t, int64_t> verify_one(const ChainRequest& c, const TT* target, const ChainDrafts<TD>& drafts,
                                       int64_t request, int64_t vocab, const int64_t* eos, int64_t num_eos,
                                       RowScratch& sc) {
  const bool greedy = is_greedy(c.temperature);
  const float inv_t = inverse_temperature(c.temperature);
  int64_t accepted = 0;
  for (int64_t k = 1; k <= c.length; ++k) {
    const TT* prow = target + (c.first_row + k - 1) * vocab;
    const int64_t x = c.drafts[k - 1];
    const bool valid = x >= 0 && x < vocab;
    int64_t emitted = -1;
    if (greedy) {
      const int64_t best = row_argmax(prow, vocab);
      if (!valid || x != best) emitted = best;
    } else {
      const TargetRow p = target_row(prow, vocab, inv_t, c.filter, sc);
      if (!valid) {
        // Not drawn from q_k: the chain ends here with a draw from p_k, as if ℓ were k - 1.
        emitted = draw<TD>(p, nullptr, c, static_cast<uint32_t>(k), vocab, sc);
      } else {
        const DraftRow<TD> q = drafts.given() ? drafts.row(request, k, inv_t, sc) : one_hot_row<TD>(x);
        const float coin = random_uniform(c.seed, c.offset, Purpose::kChainCoin, static_cast<uint32_t>(k), 0);
        if (!(coin * q.prob(x) < p.prob(x))) emitted = draw(p, &q, c, static_cast<uint32_t>(k), vocab, sc);
      }
    }
    if (emitted >= 0) {
      c.out[accepted] = emitted;
      return {accepted, accepted + 1};
    }
    c.out[accepted++] = x;
    if (is_eos(x, eos, num_eos)) return {accepted, accepted};
  }
  // Every draft accepted: the bonus token from p_{ℓ+1}.
  const TT* prow = target + (c.first_row + c.length) * vocab;
  const uint32_t position = static_cast<uint32_t>(c.length + 1);
  c.out[accepted] = greedy ? row_argmax(prow, vocab)
                           : draw<TD>(target_row(prow, vocab, inv_t, c.filter, sc), nullptr, c, position, vocab, sc);
  return {accepted, accepted + 1};
}

// Arguments checked by verify_chain_op (common/verify_chain_args.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_chain(const VerifyChainArgs& a, const VerifyChainSizes& s) {
  const auto& [target_logits, draft_tokens, lengths, temperature, seed, offset, draft_logits, eos_ids, top_k, top_p,
               min_p, draft_probs, draft_ids] = a;
  const auto opts = draft_tokens.options();
  auto [out_tokens, num_accepted, num_emitted] = initial_chain_outputs(s, opts);
  if (s.requests == 0) return {out_tokens, num_accepted, num_emitted};

  const auto target = target_logits.contiguous();
  const auto drafts = draft_tokens.contiguous();
  const auto dlogits = contiguous_or_none(draft_logits), dprobs = contiguous_or_none(draft_probs),
             dids = contiguous_or_none(draft_ids);
  const auto tk = contiguous_or_none(top_k), tp = contiguous_or_none(top_p), mp = contiguous_or_none(min_p);
  const auto eos = eos_ids ? eos_ids->contiguous() : at::empty({0}, opts);
  const auto len = lengths.contiguous(), temp = temperature.contiguous();
  const auto sd = seed.contiguous(), off = offset.contiguous();

  // Row starts: request r's rows begin after Σ_{r' < r} (ℓ_r' + 1).
  std::vector<int64_t> first_row(s.requests);
  const int64_t* lp = len.data_ptr<int64_t>();
  for (int64_t r = 0, acc = 0; r < s.requests; ++r) {
    first_row[r] = acc;
    acc += lp[r] + 1;
  }
  const int64_t* tok = drafts.data_ptr<int64_t>();
  const float* tmp = temp.data_ptr<float>();
  const int64_t *sdp = sd.data_ptr<int64_t>(), *offp = off.data_ptr<int64_t>(), *eosp = eos.data_ptr<int64_t>();
  const int64_t* kp = data_or_null<int64_t>(tk);
  const float *pp = data_or_null<float>(tp), *mpp = data_or_null<float>(mp);
  int64_t *outp = out_tokens.data_ptr<int64_t>(), *accp = num_accepted.data_ptr<int64_t>();
  int64_t* emitp = num_emitted.data_ptr<int64_t>();

  dispatch_target_draft("dspark::verify_chain", target, dlogits, [&]<typename TT, typename TD>() {
    const TT* tgt = target.data_ptr<TT>();
    const ChainDrafts<TD> dr{data_or_null<TD>(dlogits),
                             data_or_null<float>(dprobs),
                             data_or_null<int64_t>(dids),
                             s.q.width,
                             s.gamma,
                             s.vocab};
    at::parallel_for(0, s.requests, 1, [&](int64_t begin, int64_t end) {
      RowScratch sc;
      for (int64_t r = begin; r < end; ++r) {
        const RowFilter f = make_row_filter(kp ? kp[r] : 0, pp ? pp[r] : 1.0f, mpp ? mpp[r] : 0.0f, s.vocab);
        const ChainRequest c{tok + r * s.gamma,       lp[r], first_row[r], tmp[r], sdp[r], offp[r], f,
                             outp + r * (s.gamma + 1)};
        std::tie(accp[r], emitp[r]) = verify_one(c, tgt, dr, r, s.vocab, eosp, s.num_eos, sc);
      }
    });
  });
  return {out_tokens, num_accepted, num_emitted};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CPU, m) { m.impl("verify_chain", &verify_chain_op<verify_chain>); }

}  // namespace dspark::cpu
