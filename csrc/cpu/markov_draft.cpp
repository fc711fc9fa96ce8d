// CPU kernel of dspark::markov_draft (SPEC §3). Position by position over the whole batch:
//   1. the head's vector P_k [R, r] from e_k = w1[x_{k-1}] with small ATen GEMMs (the parts
//      that depend on hidden only are computed once for all positions before the loop);
//   2. L_k = U_k + P_k w2^T as ONE GEMM over all R requests (w2 read once per position);
//   3. one fused pass per request: round L_k to the storage dtype, write draft_logits, and
//      from the rounded values find the Gumbel-max sample (or argmax) and the softmax
//      statistics for log q_k(x_k).
// Gumbel noise for a position comes from the shared Philox (Purpose::kDraftSample,
// position k, index = vocab id); its two logs run through ATen's vectorised log, exactly the
// operations of the pure-PyTorch reference.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "common/markov_draft_args.h"
#include "cpu/row_ops.h"

namespace dspark::cpu {
namespace {

// Fills u[0..vocab) with the open uniforms (0, 1) of (seed, offset, kDraftSample, position, v).
void fill_open_uniforms(float* u, int64_t vocab, int64_t seed, int64_t offset, uint32_t position) {
  int64_t base = 0;
  for (; base + 4 <= vocab; base += 4) {
    const Philox4 b = random_block(seed, offset, Purpose::kDraftSample, position, static_cast<uint64_t>(base));
    u[base] = bits_to_open_uniform(b.v[0]);
    u[base + 1] = bits_to_open_uniform(b.v[1]);
    u[base + 2] = bits_to_open_uniform(b.v[2]);
    u[base + 3] = bits_to_open_uniform(b.v[3]);
  }
  if (base < vocab) {
    const Philox4 b = random_block(seed, offset, Purpose::kDraftSample, position, static_cast<uint64_t>(base));
    for (int64_t lane = 0; base + lane < vocab; ++lane) u[base + lane] = bits_to_open_uniform(b.v[lane]);
  }
}

// Rounds `logits` (float32 [V]) to T, writes them to `out`, and samples from the rounded
// values. Returns (token, log q(token)); greedy requests return (argmax, 0).
template <typename T>
std::pair<int64_t, float> round_and_sample(const float* logits, T* out, const float* noise, int64_t vocab,
                                           float temperature) {
  if (is_greedy(temperature)) {
    ArgMax best;
    for (int64_t v = 0; v < vocab; ++v) {
      const T rounded = static_cast<T>(logits[v]);
      out[v] = rounded;
      const float x = static_cast<float>(rounded);
      best.add(x == x ? x : -INFINITY, v);
    }
    return {best.result(), 0.0f};
  }
  // Pass 1 (fused): round, store, max of the scaled row, Gumbel race.
  float max = -INFINITY;
  Race race;
  for (int64_t v = 0; v < vocab; ++v) {
    const T rounded = static_cast<T>(logits[v]);
    out[v] = rounded;
    const float x = scaled_logit(static_cast<float>(rounded), temperature);
    max = x > max ? x : max;
    race.add(x, noise[v], v);
  }
  const int64_t token = race.index();
  // Pass 2 over the (cache-hot) rounded row: the normaliser.
  float sum = 0.0f;
  if (max > -INFINITY) {
    for (int64_t v = 0; v < vocab; ++v) {
      const float x = scaled_logit(static_cast<float>(out[v]), temperature);
      sum += std::exp(x - max);
    }
  }
  const float xt = scaled_logit(static_cast<float>(out[token]), temperature);
  const float logprob = (sum > 0.0f && xt > -INFINITY) ? (xt - max) - std::log(sum) : -INFINITY;
  return {token, logprob};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> markov_draft(
    const at::Tensor& base_logits, const at::Tensor& anchor, const at::Tensor& w1, const at::Tensor& w2,
    const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
    const std::optional<at::Tensor>& hidden, const std::optional<at::Tensor>& gate_weight,
    const std::optional<at::Tensor>& gate_bias, const std::optional<at::Tensor>& rnn_weight,
    const std::optional<at::Tensor>& rnn_bias, const std::optional<at::Tensor>& conf_weight,
    const std::optional<at::Tensor>& conf_bias, const std::optional<at::Tensor>& conf_scale) {
  const MarkovDraftSizes s = check_markov_draft_args(base_logits, anchor, w1, w2, temperature, seed, offset, hidden,
                                                     gate_weight, gate_bias, rnn_weight, rnn_bias, conf_weight,
                                                     conf_bias, conf_scale);
  const int64_t R = s.requests, G = s.gamma, V = s.vocab, r = s.rank, d = s.hidden;
  const auto fopts = base_logits.options().dtype(at::kFloat);
  auto tokens = at::empty({R, G}, anchor.options());
  auto draft_logits = at::empty({R, G, V}, base_logits.options());
  auto token_logprob = at::zeros({R, G}, fopts);
  auto confidence = at::ones({R, G}, fopts);
  if (R == 0 || G == 0) return {tokens, draft_logits, token_logprob, confidence};

  const auto U = base_logits.contiguous();
  const auto w1f = w1.to(at::kFloat).contiguous();       // [V, r]
  const auto w2t = w2.to(at::kFloat).t();                 // [r, V] view for the GEMM
  const auto temp = temperature.contiguous(), sd = seed.contiguous(), off = offset.contiguous();
  const float* tp = temp.data_ptr<float>();
  const int64_t* sp = sd.data_ptr<int64_t>();
  const int64_t* op = off.data_ptr<int64_t>();
  bool any_sampled = false;
  for (int64_t i = 0; i < R; ++i) any_sampled = any_sampled || !is_greedy(tp[i]);

  // Hidden-only parts of every head, for all positions at once.
  at::Tensor hf, gate_h, gate_e, rnn_h, rnn_se, state, conf_h, conf_e, scale;
  if (hidden) hf = hidden->to(at::kFloat);  // [R, γ, d]
  if (s.head == MarkovHead::kGated) {
    const auto gw = gate_weight->to(at::kFloat);                                // [r, d + r]
    gate_h = at::matmul(hf, gw.narrow(1, 0, d).t()) + gate_bias->to(at::kFloat);  // [R, γ, r]
    gate_e = gw.narrow(1, d, r).t();                                            // [r, r]
  } else if (s.head == MarkovHead::kRnn) {
    const auto rw = rnn_weight->to(at::kFloat);                                     // [3r, 2r + d]
    rnn_h = at::matmul(hf, rw.narrow(1, 2 * r, d).t()) + rnn_bias->to(at::kFloat);  // [R, γ, 3r]
    rnn_se = rw.narrow(1, 0, 2 * r).t();                                            // [2r, 3r]
    state = at::zeros({R, r}, fopts);                                               // s_0 = 0
  }
  if (s.confidence != ConfidenceInput::kNone) {
    const auto cw = conf_weight->to(at::kFloat);
    conf_h = at::matmul(hf, cw.narrow(0, 0, d)) + conf_bias->to(at::kFloat);  // [R, γ]
    if (s.confidence == ConfidenceInput::kHiddenEmbedding) conf_e = cw.narrow(0, d, r);  // [r]
    scale = conf_scale ? conf_scale->contiguous() : at::ones({G}, fopts);
  }

  auto x = anchor.contiguous();  // x_{k-1}, [R]
  auto noise = any_sampled ? at::empty({R, V}, fopts) : at::Tensor();
  int64_t* tok = tokens.data_ptr<int64_t>();
  float* lp = token_logprob.data_ptr<float>();
  for (int64_t k = 1; k <= G; ++k) {
    const auto e = w1f.index_select(0, x);  // e_k [R, r]
    at::Tensor p;                           // the vector that multiplies w2
    if (s.head == MarkovHead::kVanilla) {
      p = e;
    } else if (s.head == MarkovHead::kGated) {
      p = at::sigmoid(at::addmm(gate_h.select(1, k - 1), e, gate_e)) * e;
    } else {
      const auto z = at::addmm(rnn_h.select(1, k - 1), at::cat({state, e}, 1), rnn_se);  // [R, 3r]
      const auto a = at::sigmoid(z.narrow(1, 0, r));
      state = a * state + (1 - a) * at::tanh(z.narrow(1, r, r));
      p = at::tanh(z.narrow(1, 2 * r, r));
    }
    if (s.confidence != ConfidenceInput::kNone) {
      auto logit = conf_h.select(1, k - 1);
      if (conf_e.defined()) logit = logit + at::mv(e, conf_e);
      confidence.select(1, k - 1).copy_(at::sigmoid(logit * scale[k - 1]));
    }
    const auto L = at::addmm(U.select(1, k - 1).to(at::kFloat), p, w2t).contiguous();  // [R, V] fp32
    if (any_sampled) {
      at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          if (!is_greedy(tp[i]))
            fill_open_uniforms(noise.data_ptr<float>() + i * V, V, sp[i], op[i], static_cast<uint32_t>(k));
      });
      noise.log_().neg_().log_().neg_();  // Gumbel: -log(-log(u)), as reference.rng.gumbel
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, U.scalar_type(), "markov_draft_cpu", [&] {
      const float* lptr = L.data_ptr<float>();
      scalar_t* dl = draft_logits.data_ptr<scalar_t>();
      const float* np = any_sampled ? noise.data_ptr<float>() : nullptr;
      at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          auto [token, logprob] = round_and_sample<scalar_t>(lptr + i * V, dl + (i * G + k - 1) * V,
                                                             np ? np + i * V : nullptr, V, tp[i]);
          tok[i * G + k - 1] = token;
          lp[i * G + k - 1] = logprob;
        }
      });
    });
    x = tokens.select(1, k - 1).contiguous();
  }
  return {tokens, draft_logits, token_logprob, confidence};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CPU, m) { m.impl("markov_draft", &markov_draft); }

}  // namespace dspark::cpu
