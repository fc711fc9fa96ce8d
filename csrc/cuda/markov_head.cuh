// The sequential head of markov_draft / markov_draft_topk on CUDA (SPEC §3), run by one block
// of kThreads threads for one request and position: e_k = w1[x_{k-1}], the head vector P_k that
// multiplies w2 (vanilla / gated / RNN, advancing the RNN state), and the confidence c_k.
// Mirrors MarkovHeadCpu (csrc/cpu/markov_head.h). Shared by the dense cooperative kernel
// (markov_draft.cu, phase A) and the pruned kernel (markov_draft_topk.cu).
#pragma once

#include "common/markov_draft_kinds.h"
#include "cuda/common.cuh"
#include "cuda/markov_draft.h"
#include "dspark/filters.h"

namespace dspark::cuda::markov {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;  // 8

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// The head at position k (1-based) for request q with x_{k-1} = prev: writes
// p.head_vector[q] [r] (and p.state[q] for the RNN head) and p.confidence_out[q, k-1]. Every
// thread of the block (kThreads) calls it; smem holds 3r floats of scratch. Ends with a block
// barrier, so the head vector is visible to the whole block on return.
template <typename T>
__device__ void head_step(const MarkovDraftParams& p, int64_t q, int64_t k, int64_t prev, float* smem) {
  const int64_t r = p.rank, d = p.hidden_size;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  float* e = smem;          // [r]  e_k
  float* z = smem + r;      // [2r] [s_{k-1} ; e_k] (RNN)
  const T* w1row = static_cast<const T*>(p.w1) + prev * r;
  float* P = p.head_vector + q * r;
  for (int64_t i = threadIdx.x; i < r; i += blockDim.x) {
    const float ei = to_float(w1row[i]);
    e[i] = ei;
    if (p.head == static_cast<int>(MarkovHead::kVanilla)) P[i] = ei;
    if (p.head == static_cast<int>(MarkovHead::kRnn)) {
      z[i] = p.state[q * r + i];
      z[r + i] = ei;
    }
  }
  __syncthreads();
  const int64_t pos = q * p.gamma + (k - 1);
  const T* h = p.hidden ? static_cast<const T*>(p.hidden) + pos * d : nullptr;  // h_k [d]
  const T* hw = static_cast<const T*>(p.head_weight);
  const T* hb = static_cast<const T*>(p.head_bias);
  if (p.head == static_cast<int>(MarkovHead::kGated)) {
    for (int64_t i = warp; i < r; i += kWarps) {  // g_i = sigmoid(W_i . [h_k ; e_k] + b_i)
      const T* row = hw + i * (d + r);
      float acc = 0.0f;
      for (int64_t j = lane; j < d; j += kWarpSize) acc += to_float(row[j]) * to_float(h[j]);
      for (int64_t j = lane; j < r; j += kWarpSize) acc += to_float(row[d + j]) * e[j];
      acc = warp_sum(acc);
      if (lane == 0) P[i] = sigmoidf(acc + to_float(hb[i])) * e[i];
    }
  } else if (p.head == static_cast<int>(MarkovHead::kRnn)) {
    const int64_t stride = 2 * r + d;
    for (int64_t i = warp; i < r; i += kWarps) {  // rows i, r + i, 2r + i of W . [s ; e ; h]
      float acc[3];
      for (int c = 0; c < 3; ++c) {
        const T* row = hw + (c * r + i) * stride;
        float a = 0.0f;
        for (int64_t j = lane; j < 2 * r; j += kWarpSize) a += to_float(row[j]) * z[j];
        for (int64_t j = lane; j < d; j += kWarpSize) a += to_float(row[2 * r + j]) * to_float(h[j]);
        acc[c] = warp_sum(a) + to_float(hb[c * r + i]);
      }
      if (lane == 0) {
        const float a = sigmoidf(acc[0]);
        p.state[q * r + i] = a * z[i] + (1.0f - a) * tanhf(acc[1]);  // z holds s_{k-1}: no race
        P[i] = tanhf(acc[2]);
      }
    }
  }
  if (p.confidence != static_cast<int>(ConfidenceInput::kNone) && warp == kWarps - 1) {
    const T* cw = static_cast<const T*>(p.conf_weight);
    float acc = 0.0f;
    for (int64_t j = lane; j < d; j += kWarpSize) acc += to_float(cw[j]) * to_float(h[j]);
    if (p.confidence == static_cast<int>(ConfidenceInput::kHiddenEmbedding))
      for (int64_t j = lane; j < r; j += kWarpSize) acc += to_float(cw[d + j]) * e[j];
    acc = warp_sum(acc);
    if (lane == 0) {
      const float scale = p.conf_scale ? p.conf_scale[k - 1] : 1.0f;
      p.confidence_out[pos] = sigmoidf(scale * (acc + to_float(static_cast<const T*>(p.conf_bias)[0])));
    }
  }
  __syncthreads();  // e / z are reused by the next request of this block
}

// The SPEC §9 filter of request q over rows of `entries` values (off without filter tensors).
__device__ __forceinline__ RowFilter request_filter(const MarkovDraftParams& p, int64_t q, int64_t entries) {
  return make_row_filter(p.top_k ? p.top_k[q] : 0, p.top_p ? p.top_p[q] : 1.0f, p.min_p ? p.min_p[q] : 0.0f, entries);
}

}  // namespace dspark::cuda::markov
