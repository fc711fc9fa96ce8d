// CPU kernel of dspark::markov_draft (SPEC §3). Position by position over the whole batch:
//   1. the head vector P_k [R, r] from e_k = w1[x_{k-1}] (and h_k, s_{k-1});
//   2. L_k = U_k + P_k w2^T over all R requests, tiled over w2 rows (w2 read once per
//      position), with fixed-order dot products so results never depend on the batch;
//   3. one fused pass per request: round L_k to the storage dtype, write draft_logits, and
//      from the rounded values find the Gumbel-max sample (or argmax) and the softmax
//      statistics for log q_k(x_k).
// Gumbel noise for a position comes from the shared Philox (Purpose::kDraftSample,
// position k, index = vocab id); its two logs run through ATen's vectorised log, exactly the
// operations of the pure-PyTorch reference.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

#include "common/markov_draft_args.h"
#include "cpu/cpu_features.h"
#include "cpu/dispatch.h"
#include "cpu/philox_batch.h"
#include "cpu/row_ops.h"

namespace dspark::cpu {
namespace {

// ---- Batch-invariant products -------------------------------------------------------
// Every dot product runs in one fixed order (16 interleaved partial sums, then a fixed tree),
// whatever the batch size or the row's place in it: a BLAS GEMM picks different kernels for
// different M (gemv for one row), which would make a request's logits depend on its batch
// (SPEC §2 (a)). The loop shape lets the compiler vectorise it; an AVX2+FMA build of the same
// code is picked at run time when the CPU has it (one choice per process, so results are
// reproducible on a machine).
constexpr int kLanes = 16;

// The fixed tree that ends every fixed-order dot product: lanes l and l + w, w = 8, 4, 2, 1.
DSPARK_ALWAYS_INLINE float lane_tree_sum(float* acc) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

// Four dot products a_i . b (i < 4) against one weight row b, each in the fixed order
// described above; four rows at once keep eight independent FMA chains in flight.
template <typename TW>
DSPARK_ALWAYS_INLINE void fixed_order_dot4(const float* a0, const float* a1, const float* a2, const float* a3,
                                           const TW* b, int64_t n, float* out) {
  float acc0[kLanes] = {}, acc1[kLanes] = {}, acc2[kLanes] = {}, acc3[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float w = static_cast<float>(b[j + l]);
      acc0[l] += a0[j + l] * w;
      acc1[l] += a1[j + l] * w;
      acc2[l] += a2[j + l] * w;
      acc3[l] += a3[j + l] * w;
    }
  for (int l = 0; j + l < n; ++l) {
    const float w = static_cast<float>(b[j + l]);
    acc0[l] += a0[j + l] * w;
    acc1[l] += a1[j + l] * w;
    acc2[l] += a2[j + l] * w;
    acc3[l] += a3[j + l] * w;
  }
  out[0] = lane_tree_sum(acc0);
  out[1] = lane_tree_sum(acc1);
  out[2] = lane_tree_sum(acc2);
  out[3] = lane_tree_sum(acc3);
}

// The same arithmetic as one output of fixed_order_dot4 (same lanes, same order, same
// contraction), for the last few weight rows of a tile. The batch-invariance test checks
// that the variants agree bit for bit.
template <typename TW>
DSPARK_ALWAYS_INLINE float fixed_order_dot1(const float* a0, const TW* b, int64_t n) {
  float acc0[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc0[l] += a0[j + l] * static_cast<float>(b[j + l]);
  for (int l = 0; j + l < n; ++l) acc0[l] += a0[j + l] * static_cast<float>(b[j + l]);
  return lane_tree_sum(acc0);
}

// One row against four weight rows: per output the arithmetic of fixed_order_dot1 (a * b is
// commutative, so lane l computes exactly the same fused multiply-adds), with eight
// independent chains in flight. Used for the rows left over when M is not a multiple of four
// (a single request, typically).
template <typename TW>
DSPARK_ALWAYS_INLINE void fixed_order_dot1x4(const float* a, const TW* b0, const TW* b1, const TW* b2, const TW* b3,
                                             int64_t n, float* out) {
  float acc0[kLanes] = {}, acc1[kLanes] = {}, acc2[kLanes] = {}, acc3[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float x = a[j + l];
      acc0[l] += x * static_cast<float>(b0[j + l]);
      acc1[l] += x * static_cast<float>(b1[j + l]);
      acc2[l] += x * static_cast<float>(b2[j + l]);
      acc3[l] += x * static_cast<float>(b3[j + l]);
    }
  for (int l = 0; j + l < n; ++l) {
    const float x = a[j + l];
    acc0[l] += x * static_cast<float>(b0[j + l]);
    acc1[l] += x * static_cast<float>(b1[j + l]);
    acc2[l] += x * static_cast<float>(b2[j + l]);
    acc3[l] += x * static_cast<float>(b3[j + l]);
  }
  out[0] = lane_tree_sum(acc0);
  out[1] = lane_tree_sum(acc1);
  out[2] = lane_tree_sum(acc2);
  out[3] = lane_tree_sum(acc3);
}

// out[m, n] = X[m] . W[n] for n in [n0, n1): X [M, K], W [N, K], out [M, N] (float32,
// row-major). W is walked in blocks of four rows (hot in L1) and each block is used for all
// M rows: groups of four rows of X, then the leftover rows one at a time.
template <typename TW>
DSPARK_ALWAYS_INLINE void rows_times_weight_impl(const float* X, const TW* W, float* out, int64_t M, int64_t N,
                                                int64_t K, int64_t n0, int64_t n1) {
  float res[4];
  const int64_t M4 = M / 4 * 4;
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const TW* w = W + n * K;
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t m = 0; m < M4; m += 4) {
        const float* x0 = X + m * K;
        fixed_order_dot4(x0, x0 + K, x0 + 2 * K, x0 + 3 * K, w + i * K, K, res);
        for (int64_t t = 0; t < 4; ++t) out[(m + t) * N + n + i] = res[t];
      }
    for (int64_t m = M4; m < M; ++m) {
      fixed_order_dot1x4(X + m * K, w, w + K, w + 2 * K, w + 3 * K, K, res);
      for (int64_t i = 0; i < 4; ++i) out[m * N + n + i] = res[i];
    }
  }
  for (; n < n1; ++n) {
    const TW* w = W + n * K;
    for (int64_t m = 0; m < M4; m += 4) {
      const float* x0 = X + m * K;
      fixed_order_dot4(x0, x0 + K, x0 + 2 * K, x0 + 3 * K, w, K, res);
      for (int64_t t = 0; t < 4; ++t) out[(m + t) * N + n] = res[t];
    }
    for (int64_t m = M4; m < M; ++m) out[m * N + n] = fixed_order_dot1(X + m * K, w, K);
  }
}

// The AVX2+FMA build of the same code (the baseline build where the compiler has no clones).
template <typename TW>
DSPARK_TARGET_AVX2 void rows_times_weight_avx2(const float* X, const TW* W, float* out, int64_t M, int64_t N,
                                               int64_t K, int64_t n0, int64_t n1) {
  rows_times_weight_impl(X, W, out, M, N, K, n0, n1);
}

template <typename TW>
void rows_times_weight_default(const float* X, const TW* W, float* out, int64_t M, int64_t N, int64_t K, int64_t n0,
                               int64_t n1) {
  rows_times_weight_impl(X, W, out, M, N, K, n0, n1);
}

// X [M, K] (float32) times W[N, K]^T (float32, bf16 or fp16, converted on the fly: a bf16 w2
// is never copied to float32) -> [M, N] float32, in parallel over tiles of W's rows.
at::Tensor rows_times_weight(const at::Tensor& X, const at::Tensor& W) {
  const auto x = X.contiguous(), w = W.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const bool avx2 = cpu_has_avx2();
  const int64_t grain = std::max<int64_t>(16, 32768 / std::max<int64_t>(1, M * K));
  DSPARK_CPU_DISPATCH_FLOAT(w.scalar_type(), "dspark::markov_draft", "w2", [&] {
    const scalar_t* wp = w.data_ptr<scalar_t>();
    at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
      if (avx2) rows_times_weight_avx2<scalar_t>(xp, wp, op, M, N, K, n0, n1);
      else rows_times_weight_default<scalar_t>(xp, wp, op, M, N, K, n0, n1);
    });
  });
  return out;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// Rounds L = base + product (float32) to T, writes them to `out`, and samples from the rounded
// values. Returns (token, log q(token)); greedy requests return (argmax, 0).
template <typename T>
std::pair<int64_t, float> round_and_sample(const T* base, const float* product, T* out, float* noise,
                                           int64_t vocab, float temperature) {
  if (is_greedy(temperature)) {
    ArgMax best;
    for (int64_t v = 0; v < vocab; ++v) {
      const T rounded = static_cast<T>(static_cast<float>(base[v]) + product[v]);
      out[v] = rounded;
      const float x = static_cast<float>(rounded);
      best.add(x == x ? x : -INFINITY, v);
    }
    return {best.result(), 0.0f};
  }
  // Pass 1 (fused): round, store, max of the scaled row, Gumbel race; the scaled values
  // replace the (consumed) noise in the row's scratch.
  float max = -INFINITY;
  Race race;
  for (int64_t v = 0; v < vocab; ++v) {
    const T rounded = static_cast<T>(static_cast<float>(base[v]) + product[v]);
    out[v] = rounded;
    const float x = scaled_logit(static_cast<float>(rounded), temperature);
    max = x > max ? x : max;
    race.add(x, noise[v], v);
    noise[v] = x;
  }
  const int64_t token = race.index();
  // Pass 2, vectorised by ATen over the cache-hot scratch row: the normaliser.
  float sum = 0.0f;
  if (max > -INFINITY)
    sum = at::from_blob(noise, {vocab}, at::TensorOptions().dtype(at::kFloat)).sub_(max).exp_().sum().item<float>();
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
  const int64_t R = s.requests, G = s.gamma, V = s.vocab, r = s.rank;
  const auto fopts = base_logits.options().dtype(at::kFloat);
  auto tokens = at::empty({R, G}, anchor.options());
  auto draft_logits = at::empty({R, G, V}, base_logits.options());
  auto token_logprob = at::zeros({R, G}, fopts);
  auto confidence = at::ones({R, G}, fopts);
  if (R == 0 || G == 0) return {tokens, draft_logits, token_logprob, confidence};

  const auto U = base_logits.contiguous();
  const auto w1c = w1.contiguous();  // [V, r]: rows gathered, then converted
  const auto w2c = w2.contiguous();  // [V, r]: storage dtype, converted inside the product
  const auto temp = temperature.contiguous(), sd = seed.contiguous(), off = offset.contiguous();
  const float* tp = temp.data_ptr<float>();
  const int64_t* sp = sd.data_ptr<int64_t>();
  const int64_t* op = off.data_ptr<int64_t>();
  bool any_sampled = false;
  for (int64_t i = 0; i < R; ++i) any_sampled = any_sampled || !is_greedy(tp[i]);

  // Head weights in float32 (arithmetic is float32 whatever the storage dtype).
  at::Tensor hf, head_w, head_b, state, conf_w, conf_b, scale;
  if (hidden) hf = hidden->to(at::kFloat);  // [R, γ, d]
  if (s.head == MarkovHead::kGated) {
    head_w = gate_weight->to(at::kFloat);  // [r, d + r], input [h_k ; e_k]
    head_b = gate_bias->to(at::kFloat).contiguous();  // read through a raw pointer below
  } else if (s.head == MarkovHead::kRnn) {
    head_w = rnn_weight->to(at::kFloat);  // [3r, 2r + d], input [s_{k-1} ; e_k ; h_k]
    head_b = rnn_bias->to(at::kFloat).contiguous();
    state = at::zeros({R, r}, fopts);     // s_0 = 0
  }
  if (s.confidence != ConfidenceInput::kNone) {
    conf_w = conf_weight->to(at::kFloat).reshape({1, -1});  // [1, d] or [1, d + r]
    conf_b = conf_bias->to(at::kFloat);
    scale = conf_scale ? conf_scale->contiguous() : at::ones({G}, fopts);
  }

  auto x = anchor.contiguous();  // x_{k-1}, [R]
  auto noise = any_sampled ? at::empty({R, V}, fopts) : at::Tensor();
  int64_t* tok = tokens.data_ptr<int64_t>();
  float* lp = token_logprob.data_ptr<float>();
  const float* hb = head_b.defined() ? head_b.data_ptr<float>() : nullptr;
  for (int64_t k = 1; k <= G; ++k) {
    const auto e = w1c.index_select(0, x).to(at::kFloat);  // e_k [R, r]
    const auto h = hf.defined() ? hf.select(1, k - 1) : at::Tensor();  // h_k [R, d]
    // The head vector P_k [R, r]; elementwise math in plain loops (ATen's vectorised
    // kernels treat a tensor's tail differently, which would depend on R).
    at::Tensor p;
    if (s.head == MarkovHead::kVanilla) {
      p = e;
    } else if (s.head == MarkovHead::kGated) {
      p = rows_times_weight(at::cat({h, e}, 1), head_w);  // pre-activation, then in place
      float* pp = p.data_ptr<float>();
      const float* ep = e.data_ptr<float>();
      for (int64_t i = 0; i < R * r; ++i) pp[i] = sigmoid(pp[i] + hb[i % r]) * ep[i];
    } else {
      const auto z = rows_times_weight(at::cat({state, e, h}, 1), head_w);  // [R, 3r]
      p = at::empty({R, r}, fopts);
      const float* zp = z.data_ptr<float>();
      float* sp_ = state.data_ptr<float>();
      float* pp = p.data_ptr<float>();
      for (int64_t q = 0; q < R; ++q)
        for (int64_t i = 0; i < r; ++i) {
          const float* zq = zp + q * 3 * r;
          const float a = sigmoid(zq[i] + hb[i]);
          const float b = std::tanh(zq[r + i] + hb[r + i]);
          sp_[q * r + i] = a * sp_[q * r + i] + (1.0f - a) * b;
          pp[q * r + i] = std::tanh(zq[2 * r + i] + hb[2 * r + i]);
        }
    }
    if (s.confidence != ConfidenceInput::kNone) {
      const auto f = s.confidence == ConfidenceInput::kHidden ? h : at::cat({h, e}, 1);
      const auto dots = rows_times_weight(f, conf_w);  // [R, 1]
      const float sc = scale.data_ptr<float>()[k - 1], cb = conf_b.data_ptr<float>()[0];
      for (int64_t q = 0; q < R; ++q)
        confidence.data_ptr<float>()[q * G + k - 1] = sigmoid(sc * (dots.data_ptr<float>()[q] + cb));
    }
    const auto L = rows_times_weight(p, w2c);  // [R, V] fp32, P_k w2^T (U_k added in the fused pass)
    if (any_sampled) {
      at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          if (!is_greedy(tp[i])) {
            float* row = noise.data_ptr<float>() + i * V;
            fill_open_uniforms(row, V, sp[i], op[i], Purpose::kDraftSample, static_cast<uint32_t>(k));
            // Gumbel -log(-log(u)) as reference.rng.gumbel, one row at a time (batch-invariant).
            at::from_blob(row, {V}, fopts).log_().neg_().log_().neg_();
          }
      });
    }
    DSPARK_CPU_DISPATCH_FLOAT(U.scalar_type(), "dspark::markov_draft", "base_logits", [&] {
      const float* lptr = L.data_ptr<float>();
      scalar_t* dl = draft_logits.data_ptr<scalar_t>();
      const scalar_t* up = U.data_ptr<scalar_t>();
      float* np = any_sampled ? noise.data_ptr<float>() : nullptr;
      at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          auto [token, logprob] = round_and_sample<scalar_t>(up + (i * G + k - 1) * V, lptr + i * V,
                                                             dl + (i * G + k - 1) * V, np ? np + i * V : nullptr,
                                                             V, tp[i]);
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
