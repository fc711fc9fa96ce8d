// The sequential head of markov_draft / markov_draft_topk on CUDA (SPEC §3) at one position:
// e_k = w1[x_{k-1}], the head vector P_k that multiplies w2 (vanilla / gated / RNN, advancing
// the RNN state), and the confidence c_k. Mirrors MarkovHeadCpu (csrc/cpu/markov_head.h). Two
// drivers share the per-row dot products: head_step, one block for one request (the pruned
// kernel, markov_draft_topk.cu; the dense kernel's vanilla head and its legacy variant), and
// head_units, the dense kernel's gated / RNN head spread over the whole grid (markov_draft.cu,
// phase A2).
#pragma once

#include "common/markov_draft_kinds.h"
#include "cuda/common.cuh"
#include "cuda/markov_draft.h"
#include "dspark/filters.h"

namespace dspark::cuda::markov {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;  // 8

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// ---- the per-row dot products of the head, one warp each ----------------------------------
// One definition for both ways the head runs: head_step (one block per request; e_k and
// s_{k-1} read from shared memory) and head_units (the dense kernel's phase A2, spread over
// the grid; e_k and s_{k-1} read from global memory). `x(j)` returns element j of the vector a
// row multiplies, as float; to_float of the stored dtype is exact, so both readers give the
// same floats and the same bits.

// Adds w_c[j] * x(j) to acc[c] (c < N rows) for j = lane, lane + 32, ... < n, in increasing j
// (one fmaf chain per lane and row: the order is fixed whatever reads x). The loads of kBatch
// steps (16 for one row, 8 for three: 32 loads per lane) are issued before their FMAs, so a
// lone warp keeps many row loads in flight (at R = 1 one warp per row is all the parallelism
// there is); the FMAs keep the order. No spill under the legacy kernel's 128 registers.
template <int N, typename T, typename X>
__device__ __forceinline__ void strided_dots(const T* const (&w)[N], int64_t n, int lane, X x, float (&acc)[N]) {
  constexpr int kBatch = N == 1 ? 16 : 8;
  int64_t j = lane;
  for (; j + (kBatch - 1) * kWarpSize < n; j += kBatch * kWarpSize) {
    float xv[kBatch], wv[N][kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      xv[b] = x(j + b * kWarpSize);
#pragma unroll
      for (int c = 0; c < N; ++c) wv[c][b] = to_float(w[c][j + b * kWarpSize]);
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b)
#pragma unroll
      for (int c = 0; c < N; ++c) acc[c] = fmaf(wv[c][b], xv[b], acc[c]);
  }
  for (; j < n; j += kWarpSize) {
    const float xj = x(j);
#pragma unroll
    for (int c = 0; c < N; ++c) acc[c] = fmaf(to_float(w[c][j]), xj, acc[c]);
  }
}

// h_k of request q [d] (null without hidden states).
template <typename T>
__device__ __forceinline__ const T* head_hidden(const MarkovDraftParams& p, int64_t q, int64_t k) {
  return p.hidden ? static_cast<const T*>(p.hidden) + (q * p.gamma + (k - 1)) * p.hidden_size : nullptr;
}

// Gated head, rows i0 .. i0 + N - 1: P_i = sigmoid(W_i . [h_k ; e_k] + b_i) * e_i, with
// e(j) = e_k[j], into g[i - i0]. Every lane of the warp calls it and gets every P_i. The N rows
// share each load of h_k (each row keeps its own chain in j order: the bits do not depend on N).
template <int N, typename T, typename E>
__device__ __forceinline__ void gated_rows(const MarkovDraftParams& p, const T* h, int64_t i0, int lane, E e,
                                           float (&g)[N]) {
  const int64_t r = p.rank, d = p.hidden_size;
  const T* rows = static_cast<const T*>(p.head_weight) + i0 * (d + r);
  const T* over_h[N];
  const T* over_e[N];
#pragma unroll
  for (int c = 0; c < N; ++c) {
    over_h[c] = rows + c * (d + r);
    over_e[c] = over_h[c] + d;
  }
  float acc[N] = {};
  strided_dots(over_h, d, lane, [h](int64_t j) { return to_float(h[j]); }, acc);
  strided_dots(over_e, r, lane, e, acc);
#pragma unroll
  for (int c = 0; c < N; ++c)
    g[c] = sigmoidf(warp_sum(acc[c]) + to_float(static_cast<const T*>(p.head_bias)[i0 + c])) * e(i0 + c);
}

// RNN head, rows i, r + i, 2r + i of W . [s_{k-1} ; e_k ; h_k] + b (gate a, candidate, output),
// with z(j) = [s_{k-1} ; e_k][j] for j < 2r. Every lane gets {s_k[i], P_i}. The three rows
// share one pass (three times the loads in flight), each its own chain in head order.
template <typename T, typename Z>
__device__ __forceinline__ float2 rnn_unit(const MarkovDraftParams& p, const T* h, int64_t i, int lane, Z z) {
  const int64_t r = p.rank, d = p.hidden_size, stride = 2 * r + d;
  const T* hw = static_cast<const T*>(p.head_weight);
  const T* hb = static_cast<const T*>(p.head_bias);
  const T* const over_z[3] = {hw + i * stride, hw + (r + i) * stride, hw + (2 * r + i) * stride};
  const T* const over_h[3] = {over_z[0] + 2 * r, over_z[1] + 2 * r, over_z[2] + 2 * r};
  float acc[3] = {0.0f, 0.0f, 0.0f};
  strided_dots(over_z, 2 * r, lane, z, acc);
  strided_dots(over_h, d, lane, [h](int64_t j) { return to_float(h[j]); }, acc);
  const float a = sigmoidf(warp_sum(acc[0]) + to_float(hb[i]));
  const float cand = tanhf(warp_sum(acc[1]) + to_float(hb[r + i]));
  const float out = tanhf(warp_sum(acc[2]) + to_float(hb[2 * r + i]));
  // Written as one fmaf so that no caller's context can contract it differently.
  return make_float2(fmaf(a, z(i), (1.0f - a) * cand), out);
}

// Confidence head at position k: sigmoid(scale_k (w . h_k [+ w' . e_k] + b)), e(j) = e_k[j].
// Every lane of the warp calls it and gets c_k.
template <typename T, typename E>
__device__ __forceinline__ float confidence_unit(const MarkovDraftParams& p, int64_t k, const T* h, int lane, E e) {
  const int64_t d = p.hidden_size;
  const T* const cw[1] = {static_cast<const T*>(p.conf_weight)};
  float acc[1] = {0.0f};
  strided_dots(cw, d, lane, [h](int64_t j) { return to_float(h[j]); }, acc);
  if (p.confidence == static_cast<int>(ConfidenceInput::kHiddenEmbedding)) {
    const T* const ce[1] = {cw[0] + d};
    strided_dots(ce, p.rank, lane, e, acc);
  }
  const float scale = p.conf_scale ? p.conf_scale[k - 1] : 1.0f;
  return sigmoidf(scale * (warp_sum(acc[0]) + to_float(static_cast<const T*>(p.conf_bias)[0])));
}

// The head at position k (1-based) for request q with x_{k-1} = prev, run by one block:
// writes p.head_vector[q] [r] (and p.state[q] [r], read and updated in place, for the RNN
// head) and p.confidence_out[q, k-1]. Every thread of the block (kThreads) calls it; smem
// holds 3r floats of scratch. Ends with a block barrier, so the head vector is visible to the
// whole block on return. Used by the pruned kernel, by the dense kernel's vanilla head and by
// its legacy variant (the reference of head_units).
template <typename T>
__device__ void head_step(const MarkovDraftParams& p, int64_t q, int64_t k, int64_t prev, float* smem) {
  const int64_t r = p.rank;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  float* e = smem;      // [r]  e_k
  float* z = smem + r;  // [2r] [s_{k-1} ; e_k] (RNN)
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
  const T* h = head_hidden<T>(p, q, k);
  const auto e_at = [e](int64_t j) { return e[j]; };
  if (p.head == static_cast<int>(MarkovHead::kGated)) {
    for (int64_t i = warp; i < r; i += kWarps) {
      float g[1];
      gated_rows<1, T>(p, h, i, lane, e_at, g);
      if (lane == 0) P[i] = g[0];
    }
  } else if (p.head == static_cast<int>(MarkovHead::kRnn)) {
    for (int64_t i = warp; i < r; i += kWarps) {
      const float2 o = rnn_unit<T>(p, h, i, lane, [z](int64_t j) { return z[j]; });
      if (lane == 0) {
        p.state[q * r + i] = o.x;  // z holds s_{k-1}: no race
        P[i] = o.y;
      }
    }
  }
  if (p.confidence != static_cast<int>(ConfidenceInput::kNone) && warp == kWarps - 1) {
    const float c = confidence_unit<T>(p, k, h, lane, e_at);
    if (lane == 0) p.confidence_out[q * p.gamma + (k - 1)] = c;
  }
  __syncthreads();  // e / z are reused by the next request of this block
}

// x_{k-1} of request q at position k of the dense kernel: the anchor, clamped (SPEC §2: never
// read out of bounds), or tokens[q, k-2], which phase A1 wrote (already clamped) in this launch
// (read through L2).
__device__ __forceinline__ int64_t previous_token(const MarkovDraftParams& p, int64_t q, int64_t k) {
  if (k > 1) return __ldcg(p.tokens + q * p.gamma + (k - 2));
  const int64_t a = p.anchor[q];
  return a < 0 ? 0 : (a >= p.vocab ? p.vocab - 1 : a);
}

// Phase A2 of the dense kernel for the gated and RNN heads at position k: the head spread over
// every warp of the grid instead of one block per request (whose single SM read the whole
// 2-7 MB of head weights per position at d = 4096). Units u = b * R + q: row block b of request
// q (gated: rows 4b .. 4b + 3, which share each load of h_k, once R r / 4 >= warps, else row b;
// RNN: rows b, r + b, 2r + b; with a
// confidence head, the last block is request q's confidence), in contiguous ranges of
// ~units / warps per warp, warps numbered block by block. Block-major units make a warp's
// consecutive units share the weight rows, the bulk of the bytes (r (d + r) or 3r (2r + d)
// elements against R d of hidden states): each row comes from HBM about once and then from the
// SM's L1 for the next requests. Each unit re-reads its request's h_k (d elements) from L2:
// R d r / 4 (gated) or R d r (RNN) elements per position (34 / 134 MB at R = 64, r = 256,
// d = 4096, bf16: an estimated 4-6 / 15-25 µs of L2 traffic per position). Each unit runs
// head_step's arithmetic (gated_rows / rnn_unit / confidence_unit) with e_k = w1[x_{k-1}] and
// s_{k-1} read from global memory, so the bits are the legacy kernel's. The RNN state is
// double-buffered ([2, R, r]: s_{k-1} in buffer (k-1) & 1, s_k written to k & 1) because units
// of other warps still read s_{k-1}[q, :].
template <typename T>
__device__ void head_units(const MarkovDraftParams& p, int64_t k) {
  constexpr int kGatedRows = 4;
  const int64_t R = p.requests, r = p.rank;
  const bool gated = p.head == static_cast<int>(MarkovHead::kGated);
  const bool conf = p.confidence != static_cast<int>(ConfidenceInput::kNone);
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  // Gated rows per unit: 4 once there are enough units to keep every warp busy, else 1 (at small
  // R one row per warp keeps more loads in flight). r % 4 == 0: the tiled kernels need
  // r * sizeof(T) % 16 == 0. The bits do not depend on it.
  const int rows = gated && R * (r / kGatedRows) >= warps ? kGatedRows : 1;
  const int64_t blocks = r / rows;  // row blocks per request
  const int64_t units = (blocks + (conf ? 1 : 0)) * R;
  const int64_t slot = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  const int64_t end = units * (slot + 1) / warps;
  for (int64_t u = units * slot / warps; u < end; ++u) {  // warp-uniform
    const int64_t b = u / R, q = u - b * R;
    const T* e = static_cast<const T*>(p.w1) + previous_token(p, q, k) * r;
    const auto e_at = [e](int64_t j) { return to_float(e[j]); };
    const T* h = head_hidden<T>(p, q, k);
    float* P = p.head_vector + q * r;
    if (b == blocks) {
      const float c = confidence_unit<T>(p, k, h, lane, e_at);
      if (lane == 0) p.confidence_out[q * p.gamma + (k - 1)] = c;
    } else if (gated && rows == kGatedRows) {
      float g[kGatedRows];
      gated_rows<kGatedRows, T>(p, h, b * kGatedRows, lane, e_at, g);
      if (lane == 0)
#pragma unroll
        for (int c = 0; c < kGatedRows; ++c) P[b * kGatedRows + c] = g[c];
    } else if (gated) {
      float g[1];
      gated_rows<1, T>(p, h, b, lane, e_at, g);
      if (lane == 0) P[b] = g[0];
    } else {
      const float* s = p.state + ((k - 1) & 1) * R * r + q * r;  // s_{k-1}, written by other blocks
      const float2 o = rnn_unit<T>(p, h, b, lane,
                                   [s, e, r](int64_t j) { return j < r ? __ldcg(s + j) : to_float(e[j - r]); });
      if (lane == 0) {
        p.state[(k & 1) * R * r + q * r + b] = o.x;
        P[b] = o.y;
      }
    }
  }
}

// The SPEC §9 filter of request q over rows of `entries` values (off without filter tensors).
__device__ __forceinline__ RowFilter request_filter(const MarkovDraftParams& p, int64_t q, int64_t entries) {
  return make_row_filter(p.top_k ? p.top_k[q] : 0, p.top_p ? p.top_p[q] : 1.0f, p.min_p ? p.min_p[q] : 0.0f, entries);
}

}  // namespace dspark::cuda::markov
