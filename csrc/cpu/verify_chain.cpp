// CPU kernel of dspark::verify_chain (SPEC §4): requests in parallel, each walked left to
// right. A row is read once for its statistics and once more only where a token is drawn
// from it (the rejection row or the bonus row); rows after the first rejection are never read.
// Sampling rows go through vectorised ATen passes (cpu/row_dist.h).
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
  int64_t length;         // ℓ, clamped to the rows that exist
  int64_t first_row;      // index of this request's row 0 in target_logits
  float temperature;
  int64_t seed, offset;
  int64_t* out;  // [γ + 1] output row, pre-filled with -1
};

// target: [N, V]; draft: [R, γ, V] or nullptr. Returns (num_accepted, num_emitted).
template <typename TT, typename TD>
std::pair<int64_t, int64_t> verify_one(const ChainRequest& q, const TT* target, const TD* draft,
                                       int64_t request, int64_t gamma, int64_t vocab,
                                       const int64_t* eos, int64_t num_eos) {
  const bool greedy = is_greedy(q.temperature);
  const float T = q.temperature;
  int64_t accepted = 0;
  for (int64_t k = 1; k <= q.length; ++k) {
    const TT* prow = target + (q.first_row + k - 1) * vocab;
    const int64_t x = q.drafts[k - 1];
    const bool valid = x >= 0 && x < vocab;
    int64_t emitted = -1;
    if (greedy) {
      const int64_t best = row_argmax(prow, vocab);
      if (!valid || x != best) emitted = best;
    } else {
      const RowDist pd = row_dist(prow, vocab, T);
      const TD* qrow = draft ? draft + (request * gamma + k - 1) * vocab : nullptr;
      const RowDist qd = qrow ? row_dist(qrow, vocab, T) : RowDist{};
      const float p_x = valid ? pd.prob_of(x) : 0.0f;
      const float q_x = !valid ? 1.0f : qrow ? qd.prob_of(x) : 1.0f;
      const float coin = random_uniform(q.seed, q.offset, Purpose::kChainCoin, k, 0);
      if (!(coin * q_x < p_x)) {
        // Residual norm(max(0, p - q)); if its mass is 0, p itself.
        const at::Tensor noise = gumbel_row(vocab, q.seed, q.offset, Purpose::kChainResample, k);
        at::Tensor residual = pd.probs();
        if (qrow) {
          residual.sub_(qd.probs());
        } else if (valid) {
          residual.data_ptr<float>()[x] -= 1.0f;
        }
        emitted = race_winner(residual.clamp_min_(0.0f).log_(), noise);
        if (emitted < 0) emitted = std::max<int64_t>(race_winner(pd.scaled, noise), 0);
      }
    }
    if (emitted >= 0) {
      q.out[accepted] = emitted;
      return {accepted, accepted + 1};
    }
    q.out[accepted++] = x;
    if (is_eos(x, eos, num_eos)) return {accepted, accepted};
  }
  // Every draft accepted: the bonus token from p_{ℓ+1}.
  const TT* prow = target + (q.first_row + q.length) * vocab;
  if (greedy) {
    q.out[accepted] = row_argmax(prow, vocab);
  } else {
    const at::Tensor noise =
        gumbel_row(vocab, q.seed, q.offset, Purpose::kChainResample, static_cast<uint32_t>(q.length + 1));
    q.out[accepted] = std::max<int64_t>(race_winner(row_dist(prow, vocab, T).scaled, noise), 0);
  }
  return {accepted, accepted + 1};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_chain(
    const at::Tensor& target_logits, const at::Tensor& draft_tokens, const at::Tensor& lengths,
    const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
    const std::optional<at::Tensor>& draft_logits, const std::optional<at::Tensor>& eos_ids) {
  const VerifyChainSizes s = check_verify_chain_args(target_logits, draft_tokens, lengths, temperature,
                                                     seed, offset, draft_logits, eos_ids);
  const auto opts = draft_tokens.options();
  auto out_tokens = at::full({s.requests, s.gamma + 1}, -1, opts);
  auto num_accepted = at::zeros({s.requests}, opts);
  auto num_emitted = at::zeros({s.requests}, opts);
  if (s.requests == 0) return {out_tokens, num_accepted, num_emitted};

  const auto target = target_logits.contiguous();
  const auto drafts = draft_tokens.contiguous();
  const auto draft = draft_logits ? std::optional<at::Tensor>(draft_logits->contiguous()) : std::nullopt;
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

  DSPARK_CPU_DISPATCH_FLOAT(target.scalar_type(), "dspark::verify_chain", "target_logits", [&] {
    using TT = scalar_t;
    const auto draft_type = draft ? draft->scalar_type() : target.scalar_type();
    DSPARK_CPU_DISPATCH_FLOAT(draft_type, "dspark::verify_chain", "draft_logits", [&] {
      using TD = scalar_t;
      const TT* tp = target.data_ptr<TT>();
      const TD* dp = draft ? draft->data_ptr<TD>() : nullptr;
      at::parallel_for(0, s.requests, 1, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          ChainRequest q{drafts.data_ptr<int64_t>() + r * s.gamma, lp[r], first_row[r],
                         temp.data_ptr<float>()[r], sd.data_ptr<int64_t>()[r],
                         off.data_ptr<int64_t>()[r], out_tokens.data_ptr<int64_t>() + r * (s.gamma + 1)};
          auto [acc, emit] = verify_one(q, tp, dp, r, s.gamma, s.vocab, eos.data_ptr<int64_t>(), s.num_eos);
          num_accepted.data_ptr<int64_t>()[r] = acc;
          num_emitted.data_ptr<int64_t>()[r] = emit;
        }
      });
    });
  });
  return {out_tokens, num_accepted, num_emitted};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CPU, m) { m.impl("verify_chain", &verify_chain); }

}  // namespace dspark::cpu
