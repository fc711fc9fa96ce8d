// The head and confidence steps of markov_draft / markov_draft_topk on the CPU (see
// markov_head.h). Products go through the fixed-order rows_times_weight, and elementwise math
// runs in plain loops (ATen's vectorised kernels treat a tensor's tail differently, which
// would make a request's values depend on R): results never depend on the batch.
#include "cpu/markov_head.h"

#include <cmath>

#include "cpu/markov_products.h"

namespace dspark::cpu {
namespace {

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

}  // namespace

MarkovHeadCpu::MarkovHeadCpu(const MarkovDraftSizes& s, const MarkovDraftArgs& a) : s_(s), w1_(a.w1.contiguous()) {
  const auto fopts = a.w1.options().dtype(at::kFloat);
  if (a.hidden) hidden_ = a.hidden->to(at::kFloat);
  if (s.head == MarkovHead::kGated) {
    head_w_ = a.gate_weight->to(at::kFloat);  // input [h_k ; e_k]
    head_b_ = a.gate_bias->to(at::kFloat).contiguous();
  } else if (s.head == MarkovHead::kRnn) {
    head_w_ = a.rnn_weight->to(at::kFloat);  // input [s_{k-1} ; e_k ; h_k]
    head_b_ = a.rnn_bias->to(at::kFloat).contiguous();
    state_ = at::zeros({s.requests, s.rank}, fopts);  // s_0 = 0
  }
  if (s.confidence != ConfidenceInput::kNone) {
    conf_w_ = a.conf_weight->to(at::kFloat).reshape({1, -1});
    conf_b_ = a.conf_bias->to(at::kFloat).contiguous();
    conf_scale_ = a.conf_scale ? a.conf_scale->contiguous() : at::ones({s.gamma}, fopts);
  }
}

at::Tensor MarkovHeadCpu::embed(const at::Tensor& prev) const { return w1_.index_select(0, prev).to(at::kFloat); }

at::Tensor MarkovHeadCpu::hidden_at(int64_t k) const {
  return hidden_.defined() ? hidden_.select(1, k - 1) : at::Tensor();
}

at::Tensor MarkovHeadCpu::head_step(int64_t k, const at::Tensor& e) {
  const int64_t R = s_.requests, r = s_.rank;
  if (s_.head == MarkovHead::kVanilla) return e;
  const auto h = hidden_at(k);
  const float* hb = head_b_.data_ptr<float>();
  if (s_.head == MarkovHead::kGated) {
    auto p = markov::rows_times_weight(at::cat({h, e}, 1), head_w_);  // pre-activation, then in place
    float* pp = p.data_ptr<float>();
    const float* ep = e.data_ptr<float>();
    for (int64_t i = 0; i < R * r; ++i) pp[i] = sigmoid(pp[i] + hb[i % r]) * ep[i];
    return p;
  }
  const auto z = markov::rows_times_weight(at::cat({state_, e, h}, 1), head_w_);  // [R, 3r]: chunks a, b, o
  auto p = at::empty({R, r}, e.options());
  const float* zp = z.data_ptr<float>();
  float* sp = state_.data_ptr<float>();
  float* pp = p.data_ptr<float>();
  for (int64_t q = 0; q < R; ++q)
    for (int64_t i = 0; i < r; ++i) {
      const float* zq = zp + q * 3 * r;
      const float a = sigmoid(zq[i] + hb[i]);
      const float b = std::tanh(zq[r + i] + hb[r + i]);
      sp[q * r + i] = a * sp[q * r + i] + (1.0f - a) * b;
      pp[q * r + i] = std::tanh(zq[2 * r + i] + hb[2 * r + i]);
    }
  return p;
}

void MarkovHeadCpu::confidence_step(int64_t k, const at::Tensor& e, at::Tensor& confidence) const {
  if (s_.confidence == ConfidenceInput::kNone) return;
  const int64_t R = s_.requests, G = s_.gamma;
  const auto h = hidden_at(k);
  const auto f = s_.confidence == ConfidenceInput::kHidden ? h : at::cat({h, e}, 1);  // f_k
  const auto dots = markov::rows_times_weight(f, conf_w_);                          // [R, 1]
  const float sc = conf_scale_.data_ptr<float>()[k - 1], cb = conf_b_.data_ptr<float>()[0];
  const float* dp = dots.data_ptr<float>();
  float* out = confidence.data_ptr<float>();
  for (int64_t q = 0; q < R; ++q) out[q * G + k - 1] = sigmoid(sc * (dp[q] + cb));
}

}  // namespace dspark::cpu
