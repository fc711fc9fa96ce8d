// CUDA bindings of the block-draft ops (SPEC §7): checks (shared with the CPU), allocation,
// launch on the current stream. The kernels are in block_draft.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "common/block_draft_args.h"
#include "cuda/block_draft.h"
#include "cuda/launch_check.h"
#include "cuda/torch_dtype.h"

namespace dspark::cuda {
namespace {

// A cache read or written through its strides needs a contiguous head dimension.
at::Tensor with_contiguous_rows(const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); }

// The [R, Lmax, Hkv, Dh] caches of a BlockAttentionArgs or AppendContextArgs: pointers, strides
// (elements) and the sizes both ops share (`s` from their argument checks).
template <typename Args, typename Sizes>
void set_cache(Args& a, const at::Tensor& k_cache, const at::Tensor& v_cache, const Sizes& s) {
  a.k_cache = k_cache.data_ptr();
  a.v_cache = v_cache.data_ptr();
  a.requests = s.requests;
  a.max_len = s.max_len;
  a.kv_heads = s.kv_heads;
  a.head_dim = s.head_dim;
  a.k_stride_r = k_cache.stride(0);
  a.k_stride_l = k_cache.stride(1);
  a.k_stride_h = k_cache.stride(2);
  a.v_stride_r = v_cache.stride(0);
  a.v_stride_l = v_cache.stride(1);
  a.v_stride_h = v_cache.stride(2);
}

// Head dimensions without a specialised kernel (the kernels cover 64, 128 and 256): the same
// attention in float32 with ATen ops, the keys past cache_lens masked on the device (no host
// sync, so still capturable). Without it every other Dh raised on CUDA although the op is
// defined for any Dh (the CPU kernel and tests such as torch.compile with Dh = 16 use one).
at::Tensor block_attention_aten(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& cache_lens, const at::Tensor& k_block, const at::Tensor& v_block,
                                double scale, const BlockAttentionSizes& s) {
  const int64_t group = s.q_heads / s.kv_heads, keys_n = s.max_len + s.gamma;
  const auto j = at::arange(keys_n, cache_lens.options());
  const auto lens = cache_lens.clamp(0, s.max_len);
  // visible [R, Lmax + γ]: cache slots below the length, and every block key.
  const auto visible = j.unsqueeze(0).lt(lens.unsqueeze(1)).logical_or(j.ge(s.max_len).unsqueeze(0));
  const auto hidden = visible.logical_not();
  // [R, Hkv, Lmax + γ, Dh]; values past the length zeroed too (0 * NaN would poison the sum).
  const auto keys = at::cat({k_cache, k_block}, 1).to(at::kFloat).permute({0, 2, 1, 3});
  const auto values = at::cat({v_cache, v_block}, 1)
                          .to(at::kFloat)
                          .masked_fill(hidden.view({s.requests, keys_n, 1, 1}), 0.0)
                          .permute({0, 2, 1, 3});
  // [R, Hkv, γ·G, Dh]: row t·G + g is block position t, query head h·G + g.
  const auto queries = q.to(at::kFloat)
                           .reshape({s.requests, s.gamma, s.kv_heads, group, s.head_dim})
                           .permute({0, 2, 1, 3, 4})
                           .reshape({s.requests, s.kv_heads, s.gamma * group, s.head_dim});
  auto scores = at::matmul(queries, keys.transpose(-1, -2)).mul_(scale);  // [R, Hkv, γ·G, Lmax + γ]
  scores.masked_fill_(hidden.view({s.requests, 1, 1, keys_n}), -std::numeric_limits<float>::infinity());
  const auto o = at::matmul(scores.softmax(-1), values);  // [R, Hkv, γ·G, Dh]
  return o.view({s.requests, s.kv_heads, s.gamma, group, s.head_dim})
      .permute({0, 2, 1, 3, 4})
      .reshape({s.requests, s.gamma, s.q_heads, s.head_dim})
      .to(q.scalar_type())
      .contiguous();
}

at::Tensor block_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& cache_lens, const at::Tensor& k_block, const at::Tensor& v_block,
                           double scale) {
  const auto s = check_block_attention_args(q, k_cache, v_cache, cache_lens, k_block, v_block, scale);
  const c10::cuda::CUDAGuard guard(q.device());
  if (q.numel() == 0) return at::empty({s.requests, s.gamma, s.q_heads, s.head_dim}, q.options());
  if (!block_attention_supports_head_dim(s.head_dim))
    return block_attention_aten(q, k_cache, v_cache, cache_lens, k_block, v_block, scale, s);
  auto out = at::empty({s.requests, s.gamma, s.q_heads, s.head_dim}, q.options());
  const auto qc = q.contiguous(), kb = k_block.contiguous(), vb = v_block.contiguous(), lens = cache_lens.contiguous();
  const auto kc = with_contiguous_rows(k_cache), vc = with_contiguous_rows(v_cache);
  BlockAttentionArgs a{};
  a.q = qc.data_ptr();
  set_cache(a, kc, vc, s);
  a.cache_lens = lens.data_ptr<int64_t>();
  a.k_block = kb.data_ptr();
  a.v_block = vb.data_ptr();
  a.out = out.data_ptr();
  a.gamma = s.gamma;
  a.q_heads = s.q_heads;
  a.scale = static_cast<float>(scale);
  a.splits = block_attention_splits(a, to_dtype(q, "dspark::block_attention", "q"), q.get_device());
  at::Tensor partial_o, partial_ml;
  if (a.splits > 1) {
    const int64_t rows = s.requests * s.gamma * s.q_heads;
    partial_o = at::empty({rows, a.splits, s.head_dim}, q.options().dtype(at::kFloat));
    partial_ml = at::empty({rows, a.splits, 2}, q.options().dtype(at::kFloat));
    a.partial_o = partial_o.data_ptr<float>();
    a.partial_ml = partial_ml.data_ptr<float>();
  }
  DSPARK_CUDA_CHECK(
      launch_block_attention(a, to_dtype(q, "dspark::block_attention", "q"), c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_rms_norm_args(x, weight, eps);
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty(x.sizes(), x.options());
  const int64_t dim = x.size(-1);
  if (out.numel() == 0 || dim == 0) return out;
  const auto xc = x.contiguous(), wc = weight.contiguous();
  DSPARK_CUDA_CHECK(launch_rms_norm(xc.data_ptr(), wc.data_ptr(), out.data_ptr(), x.numel() / dim, dim,
                                    static_cast<float>(eps), to_dtype(x, "dspark::rms_norm", "x"),
                                    c10::cuda::getCurrentCUDAStream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> qk_norm_rope(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& q_norm_weight, const at::Tensor& k_norm_weight,
                                                const at::Tensor& positions, double eps, double rope_theta,
                                                const std::optional<at::Tensor>& inv_freq, double attention_scaling) {
  check_qk_norm_rope_args(q, k, q_norm_weight, k_norm_weight, positions, eps, rope_theta, inv_freq, attention_scaling);
  const c10::cuda::CUDAGuard guard(q.device());
  auto q_out = at::empty(q.sizes(), q.options());
  auto k_out = at::empty(k.sizes(), k.options());
  const int64_t tokens = positions.numel();
  if (tokens == 0) return {q_out, k_out};
  const auto qc = q.contiguous(), kc = k.contiguous(), qw = q_norm_weight.contiguous(), kw = k_norm_weight.contiguous(),
             pos = positions.contiguous();
  at::Tensor table;
  const RopeParams rope = rope_params(rope_theta, inv_freq, attention_scaling, table);
  DSPARK_CUDA_CHECK(launch_qk_norm_rope(qc.data_ptr(), kc.data_ptr(), qw.data_ptr(), kw.data_ptr(),
                                        pos.data_ptr<int64_t>(), q_out.data_ptr(), k_out.data_ptr(), tokens, q.size(-2),
                                        k.size(-2), q.size(-1), static_cast<float>(eps), rope,
                                        to_dtype(q, "dspark::qk_norm_rope", "q"), c10::cuda::getCurrentCUDAStream()));
  return {q_out, k_out};
}

void append_context_kv(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k_new,
                       const at::Tensor& v_new, const at::Tensor& k_norm_weight, const at::Tensor& start,
                       const at::Tensor& num_new, double eps, double rope_theta,
                       const std::optional<at::Tensor>& inv_freq, double attention_scaling) {
  const auto s = check_append_context_kv_args(k_cache, v_cache, k_new, v_new, k_norm_weight, start, num_new, eps,
                                              rope_theta, inv_freq, attention_scaling);
  if (s.requests == 0 || s.chunk == 0 || s.kv_heads == 0 || s.head_dim == 0) return;
  const c10::cuda::CUDAGuard guard(k_cache.device());
  const auto kn = k_new.contiguous(), vn = v_new.contiguous(), kw = k_norm_weight.contiguous();
  const auto st = start.contiguous(), nn = num_new.contiguous();
  AppendContextArgs a{};
  set_cache(a, k_cache, v_cache, s);
  a.k_new = kn.data_ptr();
  a.v_new = vn.data_ptr();
  a.k_norm_weight = kw.data_ptr();
  a.start = st.data_ptr<int64_t>();
  a.num_new = nn.data_ptr<int64_t>();
  a.chunk = s.chunk;
  a.eps = static_cast<float>(eps);
  at::Tensor table;
  a.rope = rope_params(rope_theta, inv_freq, attention_scaling, table);
  DSPARK_CUDA_CHECK(launch_append_context_kv(a, to_dtype(k_cache, "dspark::append_context_kv", "k_cache"),
                                             c10::cuda::getCurrentCUDAStream()));
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CUDA, m) {
  m.impl("block_attention", &block_attention);
  m.impl("rms_norm", &rms_norm);
  m.impl("qk_norm_rope", &qk_norm_rope);
  m.impl("append_context_kv", &append_context_kv);
}

}  // namespace dspark::cuda
