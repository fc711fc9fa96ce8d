// CPU kernels of the block-draft ops (SPEC §7): block_attention and the fused helpers
// rms_norm, qk_norm_rope and append_context_kv. Arithmetic is float32 whatever the storage
// dtype; the rounding points of RMSNorm and RoPE follow dspark/rope.h (Hugging Face's
// Qwen3 code). The CUDA kernels in csrc/cuda/block_draft.cu compute the same things.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/block_draft_args.h"
#include "cpu/dispatch.h"
#include "dspark/rope.h"

namespace dspark::cpu {
namespace {

// x rounded to the storage type T and read back (the identity for float).
template <typename T>
inline float round_to(float x) {
  return static_cast<float>(static_cast<T>(x));
}

// y[0:Dh] = RoPE(RMSNorm(x) * w) at `position` (dspark/rope.h). y may alias x.
template <typename T>
void norm_rope_row(const T* x, const T* w, T* y, int64_t dh, int64_t position, float eps, float theta) {
  float ss = 0.0f;
  for (int64_t d = 0; d < dh; ++d) {
    const float v = static_cast<float>(x[d]);
    ss += v * v;
  }
  const float rs = 1.0f / std::sqrt(ss / static_cast<float>(dh) + eps);
  const int64_t half = dh / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = round_to<T>(static_cast<float>(w[i]) * round_to<T>(static_cast<float>(x[i]) * rs));
    const float b =
        round_to<T>(static_cast<float>(w[i + half]) * round_to<T>(static_cast<float>(x[i + half]) * rs));
    const float angle = rope_angle(position, i, dh, theta);
    const float c = round_to<T>(std::cos(angle)), s = round_to<T>(std::sin(angle));
    y[i] = static_cast<T>(round_to<T>(a * c) - round_to<T>(b * s));
    y[i + half] = static_cast<T>(round_to<T>(b * c) + round_to<T>(a * s));
  }
}

// ---------------------------------------------------------------------------------------
// block_attention

// q [R, γ, Hq, Dh]; k_cache, v_cache [R, Lmax, Hkv, Dh]; cache_lens [R]; k_block, v_block
// [R, γ, Hkv, Dh] -> [R, γ, Hq, Dh].
// One task per request: its keys are the first cache_lens[r] cache slots followed by the γ
// block keys, and all γ·G query rows of a KV head share them through one batched product
// per head (ATen's vectorised GEMM and softmax, float32), the CPU twin of the CUDA tiling.
at::Tensor block_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& cache_lens, const at::Tensor& k_block, const at::Tensor& v_block,
                           double scale) {
  const auto s = check_block_attention_args(q, k_cache, v_cache, cache_lens, k_block, v_block, scale);
  auto out = at::empty({s.requests, s.gamma, s.q_heads, s.head_dim}, q.options());
  if (out.numel() == 0) return out;
  const int64_t group = s.q_heads / s.kv_heads;
  const auto lens = cache_lens.contiguous();
  const int64_t* lp = lens.data_ptr<int64_t>();
  at::parallel_for(0, s.requests, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t len = std::clamp<int64_t>(lp[r], 0, s.max_len);
      // [Hkv, len + γ, Dh] keys and values of request r.
      const auto keys = at::cat({k_cache[r].narrow(0, 0, len), k_block[r]}, 0).to(at::kFloat).transpose(0, 1);
      const auto values = at::cat({v_cache[r].narrow(0, 0, len), v_block[r]}, 0).to(at::kFloat).transpose(0, 1);
      // [Hkv, γ·G, Dh] queries: row t·G + g is block position t, query head h·G + g.
      const auto queries = q[r].to(at::kFloat).view({s.gamma, s.kv_heads, group, s.head_dim})
                               .permute({1, 0, 2, 3}).reshape({s.kv_heads, s.gamma * group, s.head_dim});
      const auto probs = at::bmm(queries, keys.transpose(1, 2)).mul_(scale).softmax(-1);
      const auto o = at::bmm(probs, values);  // [Hkv, γ·G, Dh]
      out[r].copy_(o.view({s.kv_heads, s.gamma, group, s.head_dim}).permute({1, 0, 2, 3})
                       .reshape({s.gamma, s.q_heads, s.head_dim}));
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------
// rms_norm

// x [..., D]; weight [D] -> [..., D].
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_rms_norm_args(x, weight, eps);
  auto out = at::empty(x.sizes(), x.options());
  const int64_t dim = x.size(-1);
  if (out.numel() == 0 || dim == 0) return out;
  const int64_t rows = x.numel() / dim;
  const auto xc = x.contiguous(), wc = weight.contiguous();
  DSPARK_CPU_DISPATCH_FLOAT(x.scalar_type(), "dspark::rms_norm", "x", [&] {
    using T = scalar_t;
    const T* xp = xc.data_ptr<T>();
    const T* wp = wc.data_ptr<T>();
    T* op = out.data_ptr<T>();
    const float e = static_cast<float>(eps);
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const T* row = xp + i * dim;
        float ss = 0.0f;
        for (int64_t d = 0; d < dim; ++d) {
          const float v = static_cast<float>(row[d]);
          ss += v * v;
        }
        const float rs = 1.0f / std::sqrt(ss / static_cast<float>(dim) + e);
        for (int64_t d = 0; d < dim; ++d)
          op[i * dim + d] = static_cast<T>(static_cast<float>(wp[d]) * round_to<T>(static_cast<float>(row[d]) * rs));
      }
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------
// qk_norm_rope

// q [..., Hq, Dh]; k [..., Hkv, Dh]; norm weights [Dh]; positions [...] -> (q', k').
std::tuple<at::Tensor, at::Tensor> qk_norm_rope(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& q_norm_weight, const at::Tensor& k_norm_weight,
                                                const at::Tensor& positions, double eps, double rope_theta) {
  check_qk_norm_rope_args(q, k, q_norm_weight, k_norm_weight, positions, eps, rope_theta);
  auto q_out = at::empty(q.sizes(), q.options());
  auto k_out = at::empty(k.sizes(), k.options());
  const int64_t dh = q.size(-1), hq = q.size(-2), hk = k.size(-2);
  const int64_t tokens = positions.numel();
  if (tokens == 0 || dh == 0) return {q_out, k_out};
  const auto qc = q.contiguous(), kc = k.contiguous(), qw = q_norm_weight.contiguous(),
             kw = k_norm_weight.contiguous(), pos = positions.contiguous();
  DSPARK_CPU_DISPATCH_FLOAT(q.scalar_type(), "dspark::qk_norm_rope", "q", [&] {
    using T = scalar_t;
    const T *qp = qc.data_ptr<T>(), *kp = kc.data_ptr<T>(), *qwp = qw.data_ptr<T>(), *kwp = kw.data_ptr<T>();
    const int64_t* pp = pos.data_ptr<int64_t>();
    T *qo = q_out.data_ptr<T>(), *ko = k_out.data_ptr<T>();
    const float e = static_cast<float>(eps), theta = static_cast<float>(rope_theta);
    at::parallel_for(0, tokens * (hq + hk), 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / (hq + hk), h = i % (hq + hk);
        if (h < hq)
          norm_rope_row(qp + (n * hq + h) * dh, qwp, qo + (n * hq + h) * dh, dh, pp[n], e, theta);
        else
          norm_rope_row(kp + (n * hk + h - hq) * dh, kwp, ko + (n * hk + h - hq) * dh, dh, pp[n], e, theta);
      }
    });
  });
  return {q_out, k_out};
}

// ---------------------------------------------------------------------------------------
// append_context_kv

struct CacheStrides {
  int64_t request, slot, head;  // in elements; the head dimension is contiguous
};

// k_cache, v_cache [R, Lmax, Hkv, Dh] written in place: for i < num_new[r], slot start[r] + i
// gets RoPE(k_norm(k_new[r, i])) at position start[r] + i, and v_new[r, i].
void append_context_kv(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k_new,
                       const at::Tensor& v_new, const at::Tensor& k_norm_weight, const at::Tensor& start,
                       const at::Tensor& num_new, double eps, double rope_theta) {
  const auto s = check_append_context_kv_args(k_cache, v_cache, k_new, v_new, k_norm_weight, start, num_new, eps,
                                              rope_theta);
  if (s.requests == 0 || s.chunk == 0 || s.kv_heads == 0 || s.head_dim == 0) return;
  const auto kn = k_new.contiguous(), vn = v_new.contiguous(), kw = k_norm_weight.contiguous();
  const auto st = start.contiguous(), nn = num_new.contiguous();
  const CacheStrides kcs{k_cache.stride(0), k_cache.stride(1), k_cache.stride(2)};
  const CacheStrides vcs{v_cache.stride(0), v_cache.stride(1), v_cache.stride(2)};
  DSPARK_CPU_DISPATCH_FLOAT(k_cache.scalar_type(), "dspark::append_context_kv", "k_cache", [&] {
    using T = scalar_t;
    T *kcp = k_cache.data_ptr<T>(), *vcp = v_cache.data_ptr<T>();
    const T *knp = kn.data_ptr<T>(), *vnp = vn.data_ptr<T>(), *kwp = kw.data_ptr<T>();
    const int64_t *stp = st.data_ptr<int64_t>(), *nnp = nn.data_ptr<int64_t>();
    const float e = static_cast<float>(eps), theta = static_cast<float>(rope_theta);
    const int64_t dh = s.head_dim;
    at::parallel_for(0, s.requests * s.chunk, 4, [&](int64_t begin, int64_t end) {
      for (int64_t ri = begin; ri < end; ++ri) {
        const int64_t r = ri / s.chunk, i = ri % s.chunk;
        const int64_t slot = stp[r] + i;
        // Entries past num_new[r] are padding; slots outside the cache are never written.
        if (i >= nnp[r] || slot < 0 || slot >= s.max_len) continue;
        for (int64_t h = 0; h < s.kv_heads; ++h) {
          const int64_t src = ((r * s.chunk + i) * s.kv_heads + h) * dh;
          norm_rope_row(knp + src, kwp, kcp + r * kcs.request + slot * kcs.slot + h * kcs.head, dh, slot, e, theta);
          T* vdst = vcp + r * vcs.request + slot * vcs.slot + h * vcs.head;
          for (int64_t d = 0; d < dh; ++d) vdst[d] = vnp[src + d];
        }
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CPU, m) {
  m.impl("block_attention", &block_attention);
  m.impl("rms_norm", &rms_norm);
  m.impl("qk_norm_rope", &qk_norm_rope);
  m.impl("append_context_kv", &append_context_kv);
}

}  // namespace dspark::cpu
