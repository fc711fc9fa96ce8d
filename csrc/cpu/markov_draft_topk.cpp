// CPU kernel of dspark::markov_draft_topk (SPEC §10): markov_draft pruned to the K candidates
// of the backbone at every position. Per call:
//   1. candidate selection, for every (request, position) in parallel and before the
//      sequential loop (U_k does not depend on the drafted tokens): the K largest
//      race_key(U_k(v), v) (value first, then the lower id) in one pass over the row with a
//      running threshold (select_candidates), never a sort of the row;
//   2. position by position, the head and confidence steps shared with markov_draft
//      (cpu/markov_head.h), then per request the K products P_k . w2[c] over gathered w2 rows
//      (the dense op's fixed-order dot, so each candidate's logit is the dense op's bits), and
//      the shared round-and-sample over the K entries with noise keyed by vocabulary id.
// w2 traffic: K rows per request and position instead of V.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <optional>
#include <tuple>
#include <vector>

#include "common/markov_draft_args.h"
#include "cpu/dispatch.h"
#include "cpu/markov_head.h"
#include "cpu/markov_products.h"
#include "cpu/markov_sample.h"
#include "dspark/sampling.h"

namespace dspark::cpu {
namespace {

constexpr int64_t kBlock = 64;  // entries per block of the selection scan

// ids[0..K) = the K candidates of one row of base logits [V], best first: the K largest
// race_key(U(v), v) (larger value, NaN as -inf, then the lower id). One pass over the row
// keeps a buffer of at most 2K keys and the value of its K-th best once it has been full
// (thr): an entry can enter the final K only if its value is above thr (an equal value has a
// higher id than every buffered key, so it ranks below the K-th). A block of entries whose
// max (a vectorised loop) is not above thr is skipped whole, which is almost every block
// once thr has settled; when the buffer fills, it is cut back to its best K.
template <typename T>
void select_candidates(const T* row, int64_t V, int64_t K, int64_t* ids, std::vector<uint64_t>& buffer) {
  buffer.clear();
  float thr = -INFINITY;
  bool settled = false;  // thr holds the K-th best value seen
  for (int64_t b = 0; b < V; b += kBlock) {
    const int64_t n = std::min(kBlock, V - b);
    if (settled) {
      float m = -INFINITY;
      for (int64_t i = 0; i < n; ++i) {
        const float x = static_cast<float>(row[b + i]);
        m = x > m ? x : m;  // NaN never wins
      }
      if (!(m > thr)) continue;
    }
    for (int64_t v = b; v < b + n; ++v) {
      float x = static_cast<float>(row[v]);
      x = x == x ? x : -INFINITY;
      if (settled && !(x > thr)) continue;
      buffer.push_back(race_key(x, v));
      if (static_cast<int64_t>(buffer.size()) == 2 * K) {
        std::nth_element(buffer.begin(), buffer.begin() + (K - 1), buffer.end(), std::greater<uint64_t>());
        buffer.resize(K);
        const uint32_t ordered = static_cast<uint32_t>(buffer[K - 1] >> 32);  // race_key's value bits, undone
        const uint32_t bits = (ordered & 0x80000000u) ? (ordered & 0x7FFFFFFFu) : ~ordered;
        std::memcpy(&thr, &bits, sizeof(thr));
        settled = true;
      }
    }
  }
  if (static_cast<int64_t>(buffer.size()) > K)
    std::nth_element(buffer.begin(), buffer.begin() + (K - 1), buffer.end(), std::greater<uint64_t>());
  std::sort(buffer.begin(), buffer.begin() + K, std::greater<uint64_t>());
  for (int64_t j = 0; j < K; ++j) ids[j] = race_index(buffer[j]);
}

// Arguments checked by markov_draft_topk_op (common/markov_draft_args.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> markov_draft_topk(const MarkovDraftArgs& a,
                                                                                         const MarkovDraftSizes& s,
                                                                                         int64_t num_candidates) {
  const int64_t R = s.requests, G = s.gamma, V = s.vocab, r = s.rank, K = num_candidates;
  const auto fopts = a.base_logits.options().dtype(at::kFloat);
  auto tokens = at::empty({R, G}, a.anchor.options());
  auto draft_ids = at::empty({R, G, K}, a.anchor.options());
  auto draft_logits = at::empty({R, G, K}, a.base_logits.options());
  auto token_logprob = at::zeros({R, G}, fopts);
  auto confidence = at::ones({R, G}, fopts);
  if (R == 0 || G == 0) return {tokens, draft_ids, draft_logits, token_logprob, confidence};

  const auto U = a.base_logits.contiguous();
  const auto w2c = a.w2.contiguous();
  const auto temp = a.temperature.contiguous(), sd = a.seed.contiguous(), off = a.offset.contiguous();
  const float* tp = temp.data_ptr<float>();
  const int64_t* sp = sd.data_ptr<int64_t>();
  const int64_t* op = off.data_ptr<int64_t>();
  int64_t* idp = draft_ids.data_ptr<int64_t>();
  const auto filters = markov::row_filters(a.top_k, a.top_p, a.min_p, R, K);
  MarkovHeadCpu head(s, a);

  DSPARK_CPU_DISPATCH_FLOAT(U.scalar_type(), "dspark::markov_draft_topk", "base_logits", [&] {
    const scalar_t* up = U.data_ptr<scalar_t>();
    at::parallel_for(0, R * G, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint64_t> buffer;
      buffer.reserve(static_cast<size_t>(2 * K));
      for (int64_t row = begin; row < end; ++row) select_candidates(up + row * V, V, K, idp + row * K, buffer);
    });
  });

  auto x = a.anchor.contiguous();  // x_{k-1}, [R]
  auto product = at::empty({R, K}, fopts);  // P_k . w2[c] per candidate
  auto noise = at::empty({R, K}, fopts);    // Gumbel noise, then the scaled row
  int64_t* tok = tokens.data_ptr<int64_t>();
  float* lp = token_logprob.data_ptr<float>();
  for (int64_t k = 1; k <= G; ++k) {
    const auto e = head.embed(x);  // e_k [R, r]
    const auto p = head.head_step(k, e).contiguous();
    head.confidence_step(k, e, confidence);
    DSPARK_CPU_DISPATCH_FLOAT(U.scalar_type(), "dspark::markov_draft_topk", "base_logits", [&] {
      const scalar_t* up = U.data_ptr<scalar_t>();
      const scalar_t* wp = w2c.data_ptr<scalar_t>();
      scalar_t* dl = draft_logits.data_ptr<scalar_t>();
      at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
        markov::FilterScratch scratch;
        for (int64_t i = begin; i < end; ++i) {
          const int64_t at_k = i * G + k - 1;
          const markov::CandidateIds ids{idp + at_k * K};
          float* prod = product.data_ptr<float>() + i * K;
          float* row = noise.data_ptr<float>() + i * K;
          markov::gathered_dot(p.data_ptr<float>() + i * r, wp, ids.ids, K, r, prod);
          if (!is_greedy(tp[i])) markov::fill_gumbel(row, K, ids, sp[i], op[i], k);
          auto [token, logprob] = markov::round_and_sample<scalar_t>(up + at_k * V, ids, prod, dl + at_k * K, row, K,
                                                                     tp[i], filters[i], scratch);
          tok[at_k] = token;
          lp[at_k] = logprob;
        }
      });
    });
    x = tokens.select(1, k - 1).contiguous();
  }
  return {tokens, draft_ids, draft_logits, token_logprob, confidence};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CPU, m) { m.impl("markov_draft_topk", &markov_draft_topk_op<markov_draft_topk>); }

}  // namespace dspark::cpu
