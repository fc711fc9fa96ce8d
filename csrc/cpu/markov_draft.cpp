// CPU kernel of dspark::markov_draft (SPEC §3). Position by position over the whole batch:
//   1. the head step: P_k [R, r] from e_k = w1[x_{k-1}] (and h_k, s_{k-1}), and the
//      confidence step (cpu/markov_head.h);
//   2. L_k = U_k + P_k w2^T over all R requests, tiled over w2 rows (w2 read once per
//      position), with fixed-order dot products so results never depend on the batch
//      (cpu/markov_products.h);
//   3. one fused pass per request: round L_k to the storage dtype, write draft_logits, and
//      from the rounded values find the Gumbel-max sample (or argmax) and the softmax
//      statistics for log q_k(x_k) (cpu/markov_sample.h).
// Gumbel noise for a position comes from the shared Philox (Purpose::kDraftSample,
// position k, index = vocab id); its two logs run through ATen's vectorised log, exactly the
// operations of the pure-PyTorch reference.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/markov_draft_args.h"
#include "cpu/dispatch.h"
#include "cpu/markov_head.h"
#include "cpu/markov_products.h"
#include "cpu/markov_sample.h"

namespace dspark::cpu {
namespace {

// Arguments checked by markov_draft_op (common/markov_draft_args.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> markov_draft(const MarkovDraftArgs& a,
                                                                        const MarkovDraftSizes& s) {
  const int64_t R = s.requests, G = s.gamma, V = s.vocab;
  const auto fopts = a.base_logits.options().dtype(at::kFloat);
  auto tokens = at::empty({R, G}, a.anchor.options());
  auto draft_logits = at::empty({R, G, V}, a.base_logits.options());
  auto token_logprob = at::zeros({R, G}, fopts);
  auto confidence = at::ones({R, G}, fopts);
  if (R == 0 || G == 0) return {tokens, draft_logits, token_logprob, confidence};

  const auto U = a.base_logits.contiguous();
  const auto w2c = a.w2.contiguous();  // [V, r]: storage dtype, converted inside the product
  const auto temp = a.temperature.contiguous(), sd = a.seed.contiguous(), off = a.offset.contiguous();
  const float* tp = temp.data_ptr<float>();
  const int64_t* sp = sd.data_ptr<int64_t>();
  const int64_t* op = off.data_ptr<int64_t>();
  const auto filters = markov::row_filters(a.top_k, a.top_p, a.min_p, R, V);
  MarkovHeadCpu head(s, a);

  auto x = a.anchor.contiguous();  // x_{k-1}, [R]
  auto noise = at::empty({R, V}, fopts);  // per-request scratch: Gumbel noise, then the scaled row
  int64_t* tok = tokens.data_ptr<int64_t>();
  float* lp = token_logprob.data_ptr<float>();
  for (int64_t k = 1; k <= G; ++k) {
    const auto e = head.embed(x);  // e_k [R, r]
    const auto p = head.head_step(k, e);
    head.confidence_step(k, e, confidence);
    const auto L = markov::rows_times_weight(p, w2c);  // [R, V] fp32, P_k w2^T (U_k added in the fused pass)
    DSPARK_CPU_DISPATCH_FLOAT(U.scalar_type(), "dspark::markov_draft", "base_logits", [&] {
      const float* lptr = L.data_ptr<float>();
      scalar_t* dl = draft_logits.data_ptr<scalar_t>();
      const scalar_t* up = U.data_ptr<scalar_t>();
      at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
        markov::FilterScratch scratch;
        for (int64_t i = begin; i < end; ++i) {
          float* row = noise.data_ptr<float>() + i * V;
          if (!is_greedy(tp[i])) markov::fill_gumbel(row, V, markov::DenseIds{}, sp[i], op[i], k);
          const int64_t at_k = i * G + k - 1;
          auto [token, logprob] = markov::round_and_sample<scalar_t>(up + at_k * V, markov::DenseIds{}, lptr + i * V,
                                                                     dl + at_k * V, row, V, tp[i], filters[i], scratch);
          tok[at_k] = token;
          lp[at_k] = logprob;
        }
      });
    });
    x = tokens.select(1, k - 1).contiguous();
  }
  return {tokens, draft_logits, token_logprob, confidence};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CPU, m) { m.impl("markov_draft", &markov_draft_op<markov_draft>); }

}  // namespace dspark::cpu
