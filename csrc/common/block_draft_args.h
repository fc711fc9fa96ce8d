// Argument checks of the block-draft ops (SPEC §7), shared by the CPU and CUDA bindings:
// block_attention and the fused helpers rms_norm, qk_norm_rope and append_context_kv.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <string>

#include "dspark/checks.h"
#include "dspark/rope.h"

namespace dspark {

// A K/V tensor [R, L, Hkv, Dh] beside `ref` (named ref_name in messages): ref's device and
// dtype, R and Dh from ref, Hkv from k_cache; L is each argument's own (checked by the caller).
inline void check_kv_like(const at::Tensor& t, const char* op, const char* name, const at::Tensor& ref,
                          const char* ref_name, int64_t requests, int64_t kv_heads, int64_t head_dim) {
  check_device(t, op, name, ref);
  DSPARK_CHECK(t.scalar_type() == ref.scalar_type(), op, name, "must have the dtype of ", ref_name, " (",
               ref.scalar_type(), "), got ", t.scalar_type());
  check_dim(t, op, name, 4);
  check_size(t, op, name, 0, requests, (std::string("R, from ") + ref_name).c_str());
  check_size(t, op, name, 2, kv_heads, "Hkv, from k_cache");
  check_size(t, op, name, 3, head_dim, (std::string("Dh, from ") + ref_name).c_str());
}

struct BlockAttentionSizes {
  int64_t requests;  // R
  int64_t gamma;     // γ, block queries (and block keys) per request
  int64_t q_heads;   // Hq
  int64_t kv_heads;  // Hkv
  int64_t head_dim;  // Dh
  int64_t max_len;   // Lmax, cache capacity
};

// q [R, γ, Hq, Dh]; k_cache, v_cache [R, Lmax, Hkv, Dh]; cache_lens [R] int64;
// k_block, v_block [R, γ, Hkv, Dh]; one float dtype for q, caches and block keys/values.
inline BlockAttentionSizes check_block_attention_args(const at::Tensor& q, const at::Tensor& k_cache,
                                                      const at::Tensor& v_cache, const at::Tensor& cache_lens,
                                                      const at::Tensor& k_block, const at::Tensor& v_block,
                                                      double scale) {
  constexpr const char* op = "dspark::block_attention";
  check_float_dtype(q, op, "q");
  check_dim(q, op, "q", 4);
  BlockAttentionSizes s{q.size(0), q.size(1), q.size(2), 0, q.size(3), 0};
  check_dim(k_cache, op, "k_cache", 4);
  s.kv_heads = k_cache.size(2);
  s.max_len = k_cache.size(1);
  for (auto [t, name] : {std::pair{&k_cache, "k_cache"}, std::pair{&v_cache, "v_cache"}, std::pair{&k_block, "k_block"},
                         std::pair{&v_block, "v_block"}}) {
    check_kv_like(*t, op, name, q, "q", s.requests, s.kv_heads, s.head_dim);
  }
  check_size(v_cache, op, "v_cache", 1, s.max_len, "Lmax, from k_cache");
  check_size(k_block, op, "k_block", 1, s.gamma, "gamma, from q");
  check_size(v_block, op, "v_block", 1, s.gamma, "gamma, from q");
  DSPARK_CHECK(s.kv_heads > 0 && s.q_heads % s.kv_heads == 0, op, "q",
               "must have a head count divisible by the key/value head count (GQA), got Hq = ", s.q_heads,
               " and Hkv = ", s.kv_heads);
  DSPARK_CHECK(s.head_dim > 0, op, "q", "must have a head dimension > 0, got shape ", q.sizes());
  check_index_vector(cache_lens, op, "cache_lens", s.requests, "R", q);
  DSPARK_CHECK(std::isfinite(scale), op, "scale", "must be finite, got ", scale);
  if (value_checks_enabled(cache_lens) && s.requests > 0) {
    const auto lens = cache_lens.cpu();
    const auto lo = lens.min().item<int64_t>(), hi = lens.max().item<int64_t>();
    DSPARK_CHECK(lo >= 0 && hi <= s.max_len, op, "cache_lens", "must be in [0, Lmax = ", s.max_len,
                 "], got values in [", lo, ", ", hi, "]");
  }
  return s;
}

// x [..., D]; weight [D], same dtype as x.
inline void check_rms_norm_args(const at::Tensor& x, const at::Tensor& weight, double eps) {
  constexpr const char* op = "dspark::rms_norm";
  check_float_dtype(x, op, "x");
  DSPARK_CHECK(x.dim() >= 1, op, "x", "must have at least 1 dimension, got shape ", x.sizes());
  check_device(weight, op, "weight", x);
  DSPARK_CHECK(weight.scalar_type() == x.scalar_type(), op, "weight", "must have the dtype of x (", x.scalar_type(),
               "), got ", weight.scalar_type());
  check_dim(weight, op, "weight", 1);
  check_size(weight, op, "weight", 0, x.size(-1), "the last dimension of x");
  DSPARK_CHECK(eps >= 0.0, op, "eps", "must be >= 0, got ", eps);
}

// inv_freq [Dh/2] float32 on `like`'s device, or none; attention_scaling finite and > 0.
inline void check_rope_scaling_args(const std::optional<at::Tensor>& inv_freq, double attention_scaling,
                                    int64_t head_dim, const at::Tensor& like, const char* op) {
  if (inv_freq.has_value()) {
    check_device(*inv_freq, op, "inv_freq", like);
    check_dtype(*inv_freq, op, "inv_freq", {at::kFloat});
    check_dim(*inv_freq, op, "inv_freq", 1);
    check_size(*inv_freq, op, "inv_freq", 0, head_dim / 2, "Dh / 2");
  }
  DSPARK_CHECK(std::isfinite(attention_scaling) && attention_scaling > 0.0, op, "attention_scaling",
               "must be finite and > 0, got ", attention_scaling);
}

// The RoPE of a call; `table` keeps the contiguous inv_freq [Dh/2] alive while it is read.
inline RopeParams rope_params(double rope_theta, const std::optional<at::Tensor>& inv_freq, double attention_scaling,
                              at::Tensor& table) {
  if (inv_freq.has_value()) table = inv_freq->contiguous();
  return RopeParams{static_cast<float>(rope_theta), inv_freq.has_value() ? table.data_ptr<float>() : nullptr,
                    static_cast<float>(attention_scaling)};
}

// q [..., Hq, Dh]; k [..., Hkv, Dh] with the same leading shape; norm weights [Dh];
// positions [...] int64 (the leading shape).
inline void check_qk_norm_rope_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_norm_weight,
                                    const at::Tensor& k_norm_weight, const at::Tensor& positions, double eps,
                                    double rope_theta, const std::optional<at::Tensor>& inv_freq,
                                    double attention_scaling) {
  constexpr const char* op = "dspark::qk_norm_rope";
  check_float_dtype(q, op, "q");
  DSPARK_CHECK(q.dim() >= 2, op, "q", "must have at least 2 dimensions ([..., Hq, Dh]), got shape ", q.sizes());
  check_device(k, op, "k", q);
  DSPARK_CHECK(k.scalar_type() == q.scalar_type(), op, "k", "must have the dtype of q (", q.scalar_type(), "), got ",
               k.scalar_type());
  DSPARK_CHECK(k.dim() == q.dim() && k.sizes().slice(0, q.dim() - 2) == q.sizes().slice(0, q.dim() - 2), op, "k",
               "must have the leading shape of q (", q.sizes().slice(0, q.dim() - 2),
               ") and be [..., Hkv, Dh], got shape ", k.sizes());
  const int64_t dh = q.size(-1);
  check_size(k, op, "k", k.dim() - 1, dh, "Dh, from q");
  DSPARK_CHECK(dh % 2 == 0, op, "q", "must have an even head dimension (rotate-half RoPE), got ", dh);
  for (auto [t, name] : {std::pair{&q_norm_weight, "q_norm_weight"}, std::pair{&k_norm_weight, "k_norm_weight"}}) {
    check_device(*t, op, name, q);
    DSPARK_CHECK(t->scalar_type() == q.scalar_type(), op, name, "must have the dtype of q (", q.scalar_type(),
                 "), got ", t->scalar_type());
    check_dim(*t, op, name, 1);
    check_size(*t, op, name, 0, dh, "Dh, from q");
  }
  check_device(positions, op, "positions", q);
  check_dtype(positions, op, "positions", {at::kLong});
  DSPARK_CHECK(positions.sizes() == q.sizes().slice(0, q.dim() - 2), op, "positions",
               "must have the leading shape of q (", q.sizes().slice(0, q.dim() - 2), "), got shape ",
               positions.sizes());
  DSPARK_CHECK(eps >= 0.0, op, "eps", "must be >= 0, got ", eps);
  DSPARK_CHECK(rope_theta > 0.0, op, "rope_theta", "must be > 0, got ", rope_theta);
  check_rope_scaling_args(inv_freq, attention_scaling, dh, q, op);
}

struct AppendSizes {
  int64_t requests;  // R
  int64_t max_len;   // Lmax
  int64_t kv_heads;  // Hkv
  int64_t head_dim;  // Dh
  int64_t chunk;     // C, the padded number of new entries per request
};

// k_cache, v_cache [R, Lmax, Hkv, Dh] (written); k_new, v_new [R, C, Hkv, Dh];
// k_norm_weight [Dh]; start, num_new [R] int64.
inline AppendSizes check_append_context_kv_args(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                                const at::Tensor& k_new, const at::Tensor& v_new,
                                                const at::Tensor& k_norm_weight, const at::Tensor& start,
                                                const at::Tensor& num_new, double eps, double rope_theta,
                                                const std::optional<at::Tensor>& inv_freq, double attention_scaling) {
  constexpr const char* op = "dspark::append_context_kv";
  check_float_dtype(k_cache, op, "k_cache");
  check_dim(k_cache, op, "k_cache", 4);
  AppendSizes s{k_cache.size(0), k_cache.size(1), k_cache.size(2), k_cache.size(3), 0};
  check_dim(k_new, op, "k_new", 4);
  s.chunk = k_new.size(1);
  for (auto [t, name] : {std::pair{&v_cache, "v_cache"}, std::pair{&k_new, "k_new"}, std::pair{&v_new, "v_new"}}) {
    check_kv_like(*t, op, name, k_cache, "k_cache", s.requests, s.kv_heads, s.head_dim);
  }
  check_size(v_cache, op, "v_cache", 1, s.max_len, "Lmax, from k_cache");
  check_size(v_new, op, "v_new", 1, s.chunk, "C, from k_new");
  DSPARK_CHECK(s.head_dim % 2 == 0, op, "k_cache", "must have an even head dimension (rotate-half RoPE), got ",
               s.head_dim);
  DSPARK_CHECK(k_cache.stride(3) == 1, op, "k_cache", "must have a contiguous last dimension (it is written in place)");
  DSPARK_CHECK(v_cache.stride(3) == 1, op, "v_cache", "must have a contiguous last dimension (it is written in place)");
  check_device(k_norm_weight, op, "k_norm_weight", k_cache);
  DSPARK_CHECK(k_norm_weight.scalar_type() == k_cache.scalar_type(), op, "k_norm_weight",
               "must have the dtype of k_cache (", k_cache.scalar_type(), "), got ", k_norm_weight.scalar_type());
  check_dim(k_norm_weight, op, "k_norm_weight", 1);
  check_size(k_norm_weight, op, "k_norm_weight", 0, s.head_dim, "Dh, from k_cache");
  check_index_vector(start, op, "start", s.requests, "R", k_cache);
  check_index_vector(num_new, op, "num_new", s.requests, "R", k_cache);
  DSPARK_CHECK(eps >= 0.0, op, "eps", "must be >= 0, got ", eps);
  DSPARK_CHECK(rope_theta > 0.0, op, "rope_theta", "must be > 0, got ", rope_theta);
  check_rope_scaling_args(inv_freq, attention_scaling, s.head_dim, k_cache, op);
  // Written in place from parallel threads: no element of a cache may alias another, and no
  // input may share memory with a cache.
  check_no_internal_overlap(k_cache, op, "k_cache");
  check_no_internal_overlap(v_cache, op, "v_cache");
  check_no_overlap(k_cache, op, "k_cache", v_cache, "v_cache");
  for (const auto& cache : {std::pair{&k_cache, "k_cache"}, std::pair{&v_cache, "v_cache"}})
    for (auto [t, name] :
         {std::pair{&k_new, "k_new"}, std::pair{&v_new, "v_new"}, std::pair{&k_norm_weight, "k_norm_weight"},
          std::pair{&start, "start"}, std::pair{&num_new, "num_new"}})
      check_no_overlap(*cache.first, op, cache.second, *t, name);
  if (value_checks_enabled(start) && s.requests > 0) {
    const auto st = start.cpu(), nn = num_new.cpu();
    DSPARK_CHECK(nn.min().item<int64_t>() >= 0 && nn.max().item<int64_t>() <= s.chunk, op, "num_new",
                 "must be in [0, C = ", s.chunk, "], got ", nn);
    // Bounds first, so that the sum below cannot overflow (start near 2^63 used to wrap and pass).
    DSPARK_CHECK(st.min().item<int64_t>() >= 0 && st.max().item<int64_t>() <= s.max_len, op, "start",
                 "must be in [0, Lmax = ", s.max_len, "], got ", st);
    DSPARK_CHECK((st + nn).max().item<int64_t>() <= s.max_len, op, "start",
                 "must satisfy start + num_new <= Lmax = ", s.max_len, ", got start ", st, " and num_new ", nn);
  }
  return s;
}

}  // namespace dspark
