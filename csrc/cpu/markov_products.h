// Batch-invariant products of the Markov heads on the CPU (dense markov_draft and the pruned
// markov_draft_topk share them, so a candidate's logit is the same bits in both ops).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "cpu/cpu_features.h"
#include "cpu/dispatch.h"

namespace dspark::cpu {
namespace markov {

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
DSPARK_TARGET_AVX2 void rows_times_weight_avx2(const float* X, const TW* W, float* out, int64_t M, int64_t N, int64_t K,
                                               int64_t n0, int64_t n1) {
  rows_times_weight_impl(X, W, out, M, N, K, n0, n1);
}

template <typename TW>
void rows_times_weight_default(const float* X, const TW* W, float* out, int64_t M, int64_t N, int64_t K, int64_t n0,
                               int64_t n1) {
  rows_times_weight_impl(X, W, out, M, N, K, n0, n1);
}

// X [M, K] (float32) times W[N, K]^T (float32, bf16 or fp16, converted on the fly: a bf16 w2
// is never copied to float32) -> [M, N] float32, in parallel over tiles of W's rows.
inline at::Tensor rows_times_weight(const at::Tensor& X, const at::Tensor& W) {
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
      if (avx2)
        rows_times_weight_avx2<scalar_t>(xp, wp, op, M, N, K, n0, n1);
      else
        rows_times_weight_default<scalar_t>(xp, wp, op, M, N, K, n0, n1);
    });
  });
  return out;
}

// out[j] = x . W[ids[j]] for j < n: one row against gathered weight rows (the pruned head's
// candidates), with exactly the arithmetic of rows_times_weight for that row (a single row
// takes fixed_order_dot1x4 / fixed_order_dot1 there too), so a candidate's product is the
// same bits as the dense op's. x [K] float32, W [V, K], ids [n] in [0, V), out [n].
template <typename TW>
DSPARK_ALWAYS_INLINE void gathered_dot_impl(const float* x, const TW* W, const int64_t* ids, int64_t n, int64_t K,
                                            float* out) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4)
    fixed_order_dot1x4(x, W + ids[j] * K, W + ids[j + 1] * K, W + ids[j + 2] * K, W + ids[j + 3] * K, K, out + j);
  for (; j < n; ++j) out[j] = fixed_order_dot1(x, W + ids[j] * K, K);
}

template <typename TW>
DSPARK_TARGET_AVX2 void gathered_dot_avx2(const float* x, const TW* W, const int64_t* ids, int64_t n, int64_t K,
                                          float* out) {
  gathered_dot_impl(x, W, ids, n, K, out);
}

template <typename TW>
void gathered_dot_default(const float* x, const TW* W, const int64_t* ids, int64_t n, int64_t K, float* out) {
  gathered_dot_impl(x, W, ids, n, K, out);
}

template <typename TW>
void gathered_dot(const float* x, const TW* W, const int64_t* ids, int64_t n, int64_t K, float* out) {
  if (cpu_has_avx2())
    gathered_dot_avx2(x, W, ids, n, K, out);
  else
    gathered_dot_default(x, W, ids, n, K, out);
}

}  // namespace markov
}  // namespace dspark::cpu
