// CPU kernels of the block-draft ops (SPEC §7): block_attention and the fused helpers
// rms_norm, qk_norm_rope and append_context_kv. Arithmetic is float32 whatever the storage
// dtype; the rounding points of RMSNorm and RoPE follow dspark/rope.h (Hugging Face's
// Qwen3 code). The CUDA kernels in csrc/cuda/block_draft.cu compute the same things.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/block_draft_args.h"
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

struct CacheStrides {
  int64_t request, slot, head;  // in elements; the head dimension is contiguous
};

// Dot product with four independent partial sums (lets the compiler vectorise).
inline float dot(const float* a, const float* b, int64_t n) {
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
  int64_t d = 0;
  for (; d + 4 <= n; d += 4) {
    s0 += a[d] * b[d];
    s1 += a[d + 1] * b[d + 1];
    s2 += a[d + 2] * b[d + 2];
    s3 += a[d + 3] * b[d + 3];
  }
  for (; d < n; ++d) s0 += a[d] * b[d];
  return (s0 + s1) + (s2 + s3);
}

// One task per (request, kv head): its γ·G query rows share every key/value row, which is
// converted to float32 once and used by all of them (the CPU twin of the CUDA tiling).
template <typename T>
void block_attention_kernel(const BlockAttentionSizes& s, const T* q, const T* k_cache, const T* v_cache,
                            CacheStrides kcs, CacheStrides vcs, const int64_t* cache_lens, const T* k_block,
                            const T* v_block, float scale, T* out) {
  const int64_t group = s.q_heads / s.kv_heads, dh = s.head_dim, gamma = s.gamma;
  const int64_t rows = gamma * group;
  at::parallel_for(0, s.requests * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(rows * dh), acc(rows * dh), kv(dh), scores, mx(rows), sum(rows);
    for (int64_t rh = begin; rh < end; ++rh) {
      const int64_t r = rh / s.kv_heads, h = rh % s.kv_heads;
      const int64_t len = std::clamp<int64_t>(cache_lens[r], 0, s.max_len);
      const int64_t keys = len + gamma;
      // Key j < len is cache slot j; key len + t is block key t.
      auto key = [&](int64_t j) -> const T* {
        return j < len ? k_cache + r * kcs.request + j * kcs.slot + h * kcs.head
                       : k_block + ((r * gamma + (j - len)) * s.kv_heads + h) * dh;
      };
      auto value = [&](int64_t j) -> const T* {
        return j < len ? v_cache + r * vcs.request + j * vcs.slot + h * vcs.head
                       : v_block + ((r * gamma + (j - len)) * s.kv_heads + h) * dh;
      };
      // Local row i = t·G + g is block position t, query head h·G + g.
      auto q_index = [&](int64_t i) { return (r * gamma + i / group) * s.q_heads + h * group + i % group; };
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t d = 0; d < dh; ++d) qf[i * dh + d] = static_cast<float>(q[q_index(i) * dh + d]);
      scores.resize(rows * keys);
      std::fill(mx.begin(), mx.end(), -INFINITY);
      for (int64_t j = 0; j < keys; ++j) {
        const T* kp = key(j);
        for (int64_t d = 0; d < dh; ++d) kv[d] = static_cast<float>(kp[d]);
        for (int64_t i = 0; i < rows; ++i) {
          const float sc = dot(&qf[i * dh], kv.data(), dh) * scale;
          scores[i * keys + j] = sc;
          mx[i] = std::max(mx[i], sc);
        }
      }
      std::fill(sum.begin(), sum.end(), 0.0f);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < keys; ++j) {
          const float p = std::exp(scores[i * keys + j] - mx[i]);
          scores[i * keys + j] = p;
          sum[i] += p;
        }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < keys; ++j) {
        const T* vp = value(j);
        for (int64_t d = 0; d < dh; ++d) kv[d] = static_cast<float>(vp[d]);
        for (int64_t i = 0; i < rows; ++i) {
          const float p = scores[i * keys + j];
          float* a = &acc[i * dh];
          for (int64_t d = 0; d < dh; ++d) a[d] += p * kv[d];
        }
      }
      for (int64_t i = 0; i < rows; ++i) {
        const float inv = 1.0f / sum[i];
        T* o = out + q_index(i) * dh;
        for (int64_t d = 0; d < dh; ++d) o[d] = static_cast<T>(acc[i * dh + d] * inv);
      }
    }
  });
}

// q [R, γ, Hq, Dh]; k_cache, v_cache [R, Lmax, Hkv, Dh]; cache_lens [R]; k_block, v_block
// [R, γ, Hkv, Dh] -> [R, γ, Hq, Dh].
at::Tensor block_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& cache_lens, const at::Tensor& k_block, const at::Tensor& v_block,
                           double scale) {
  const auto s = check_block_attention_args(q, k_cache, v_cache, cache_lens, k_block, v_block, scale);
  auto out = at::empty({s.requests, s.gamma, s.q_heads, s.head_dim}, q.options());
  if (out.numel() == 0) return out;
  const auto qc = q.contiguous(), kb = k_block.contiguous(), vb = v_block.contiguous();
  const auto lens = cache_lens.contiguous();
  // The caches are read through their strides (no copy) when the head dimension is contiguous.
  const auto kc = k_cache.stride(3) == 1 ? k_cache : k_cache.contiguous();
  const auto vc = v_cache.stride(3) == 1 ? v_cache : v_cache.contiguous();
  const CacheStrides kcs{kc.stride(0), kc.stride(1), kc.stride(2)}, vcs{vc.stride(0), vc.stride(1), vc.stride(2)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "block_attention_cpu", [&] {
    block_attention_kernel<scalar_t>(s, qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>(), kcs,
                                     vcs, lens.data_ptr<int64_t>(), kb.data_ptr<scalar_t>(), vb.data_ptr<scalar_t>(),
                                     static_cast<float>(scale), out.data_ptr<scalar_t>());
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm_cpu", [&] {
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "qk_norm_rope_cpu", [&] {
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, k_cache.scalar_type(), "append_context_kv_cpu", [&] {
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
