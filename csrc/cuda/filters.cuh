// Sort-free SPEC §9 filter threshold of one row on CUDA: the same θ as filter_threshold in
// dspark/filters.h (which defines the filters), found by a block of threads with a fixed
// number of streamed passes per stage and no sort:
//   row max; min_p: one min pass; top_k / top_p: a search for the largest t in [θ, max] whose
//   count (top_k) or mass (top_p) of {s >= t} still reaches the target. Each search pass also
//   returns the nearest row values on both sides of its pivot, so the bracket always jumps to
//   row values and shrinks fast (as FlashInfer's pivot searches do); it ends on a row value.
// Every reduction has a fixed order (per-thread strides, then a fixed butterfly), so the same
// row gives the same θ on every run. Rows whose filter is off return -inf without a pass.
#pragma once

#include "cuda/common.cuh"
#include "dspark/filters.h"

namespace dspark::cuda {

// Order-preserving map of floats to uint32 (as race_key), and back.
__device__ __forceinline__ uint32_t ordered_key(float x) {
  const uint32_t bits = __float_as_uint(x);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

// Block-wide reduction with a fixed order; every thread gets the result. scratch: shared
// memory of blockDim.x / 32 elements, free again on return.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  v = __shfl_sync(0xFFFFFFFFu, v, 0);  // lane 0's bits on every lane (see warp_merge)
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T acc = scratch[0];
  for (int w = 1; w < warps; ++w) acc = op(acc, scratch[w]);  // same order on every thread
  __syncthreads();
  return acc;
}

struct FilterScratch {
  float f[32];
  uint32_t u[32];
  unsigned long long n[32];
};

// θ of row [V] (logits of type T) at temperature T for filter f; all threads of the block
// call it and get the same value.
template <typename T>
__device__ float block_filter_threshold(const T* __restrict__ row, int64_t vocab, float temperature,
                                        const RowFilter& f, bool vectorize, FilterScratch& sh) {
  if (f.off()) return -INFINITY;
  auto fmax_op = [](float a, float b) { return a > b ? a : b; };
  auto fmin_op = [](float a, float b) { return a < b ? a : b; };
  auto fsum_op = [](float a, float b) { return a + b; };
  auto umin_op = [](uint32_t a, uint32_t b) { return a < b ? a : b; };
  auto umax_op = [](uint32_t a, uint32_t b) { return a > b ? a : b; };
  auto nsum_op = [](unsigned long long a, unsigned long long b) { return a + b; };

  float m = -INFINITY;
  block_for_each(row, 0, vocab, vectorize, [&](float z, int64_t) { m = fmaxf(m, scaled_logit(z, temperature)); });
  m = block_reduce(m, fmax_op, sh.f);
  if (!isfinite(m)) return -INFINITY;
  float theta = -INFINITY;
  if (f.min_p > 0.0f) {
    float lo = m;
    block_for_each(row, 0, vocab, vectorize, [&](float z, int64_t) {
      const float s = scaled_logit(z, temperature);
      if (s < lo && filter_weight(s, m) >= f.min_p) lo = s;
    });
    theta = block_reduce(lo, fmin_op, sh.f);
  }
  // The largest row value t >= theta with measure(t) >= target, where measure(t) sums
  // weight(s) over the row values s >= t; measure(theta) >= target is known.
  auto search = [&](auto weight, auto target, auto add, decltype(target)* scratch) {
    uint32_t lo = ordered_key(theta), hi = ordered_key(m);
    while (lo < hi) {
      const uint32_t mid = lo + static_cast<uint32_t>((static_cast<uint64_t>(hi) - lo + 1) / 2);
      const float pivot = key_value(mid);
      decltype(target) measure = 0;
      uint32_t above = 0xFFFFFFFFu, below = 0;  // nearest row keys >= mid and < mid
      block_for_each(row, 0, vocab, vectorize, [&](float z, int64_t) {
        const float s = scaled_logit(z, temperature);
        if (!(s >= theta) || !(s > -INFINITY)) return;
        const uint32_t key = ordered_key(s);
        if (s >= pivot) {
          measure = add(measure, weight(s));
          above = key < above ? key : above;
        } else {
          below = key > below ? key : below;
        }
      });
      measure = block_reduce(measure, add, scratch);
      above = block_reduce(above, umin_op, sh.u);
      below = block_reduce(below, umax_op, sh.u);
      if (measure >= target) {
        lo = above;
      } else {
        hi = below;
      }
    }
    theta = key_value(lo);
  };
  if (f.top_k > 0) {
    unsigned long long kept = 0;
    block_for_each(row, 0, vocab, vectorize, [&](float z, int64_t) {
      const float s = scaled_logit(z, temperature);
      kept += (s >= theta && s > -INFINITY) ? 1 : 0;
    });
    kept = block_reduce(kept, nsum_op, sh.n);
    const auto k = static_cast<unsigned long long>(f.top_k);
    if (kept > k) search([](float) { return 1ull; }, k, nsum_op, sh.n);
  }
  if (f.top_p < 1.0f) {
    float total = 0.0f;
    block_for_each(row, 0, vocab, vectorize, [&](float z, int64_t) {
      const float s = scaled_logit(z, temperature);
      if (s >= theta && s > -INFINITY) total += filter_weight(s, m);
    });
    total = block_reduce(total, fsum_op, sh.f);
    search([&](float s) { return filter_weight(s, m); }, f.top_p * total, fsum_op, sh.f);
  }
  return theta;
}

}  // namespace dspark::cuda
