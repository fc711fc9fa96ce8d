// Launchers of the block-draft CUDA kernels (defined in block_draft.cu, no torch headers).
// Every tensor is a raw pointer; the head dimension of every tensor is contiguous. Sizes and
// offsets are int64. Each launcher returns the launch's cudaError_t.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dspark/dtype.h"
#include "dspark/rope.h"

namespace dspark::cuda {

struct BlockAttentionArgs {
  const void* q;        // [R, γ, Hq, Dh] contiguous
  const void* k_cache;  // [R, Lmax, Hkv, Dh] with strides (elements) below
  const void* v_cache;
  int64_t k_stride_r, k_stride_l, k_stride_h;
  int64_t v_stride_r, v_stride_l, v_stride_h;
  const int64_t* cache_lens;  // [R]
  const void* k_block;        // [R, γ, Hkv, Dh] contiguous
  const void* v_block;
  void* out;  // [R, γ, Hq, Dh] contiguous
  int64_t requests, gamma, q_heads, kv_heads, head_dim, max_len;
  float scale;
  int splits;         // from block_attention_splits
  float* partial_o;   // [R * γ * Hq, splits, Dh] when splits > 1
  float* partial_ml;  // [R * γ * Hq, splits, 2] when splits > 1
};

// True when block_attention has a CUDA kernel for this head dimension (64, 128, 256).
bool block_attention_supports_head_dim(int64_t head_dim);

// The number of key splits (split-K) per (request, kv head, row slice), chosen from the
// shapes, the kernel's occupancy and the device's SM count (never from cache_lens, so a
// launch can be captured in a CUDA graph). `a` needs its pointers, strides and sizes set.
int block_attention_splits(const BlockAttentionArgs& a, DType dtype, int device);

cudaError_t launch_block_attention(const BlockAttentionArgs& a, DType dtype, cudaStream_t stream);

// x [rows, dim] contiguous, weight [dim] -> out [rows, dim].
cudaError_t launch_rms_norm(const void* x, const void* weight, void* out, int64_t rows, int64_t dim, float eps,
                            DType dtype, cudaStream_t stream);

// q [N, Hq, Dh], k [N, Hkv, Dh] contiguous; weights [Dh]; positions [N] -> q_out, k_out.
// rope.inv_freq, when set, points to [Dh/2] float32 on the device.
cudaError_t launch_qk_norm_rope(const void* q, const void* k, const void* q_norm_weight, const void* k_norm_weight,
                                const int64_t* positions, void* q_out, void* k_out, int64_t tokens, int64_t q_heads,
                                int64_t kv_heads, int64_t head_dim, float eps, const RopeParams& rope, DType dtype,
                                cudaStream_t stream);

struct AppendContextArgs {
  void* k_cache;  // [R, Lmax, Hkv, Dh] with strides (elements) below
  void* v_cache;
  int64_t k_stride_r, k_stride_l, k_stride_h;
  int64_t v_stride_r, v_stride_l, v_stride_h;
  const void* k_new;  // [R, C, Hkv, Dh] contiguous
  const void* v_new;
  const void* k_norm_weight;  // [Dh]
  const int64_t* start;       // [R]
  const int64_t* num_new;     // [R]
  int64_t requests, max_len, kv_heads, head_dim, chunk;
  float eps;
  RopeParams rope;  // inv_freq, when set, is [Dh/2] float32 on the device
};

cudaError_t launch_append_context_kv(const AppendContextArgs& a, DType dtype, cudaStream_t stream);

}  // namespace dspark::cuda
