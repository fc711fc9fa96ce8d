// Sort-free SPEC §9 filter threshold of one row on CUDA: the θ that dspark/filters.h defines
// (cpu/filter_threshold.h finds it on the host), found by a block of threads with a fixed
// number of streamed passes per stage and no sort:
//   row max; min_p: one min pass; top_k / top_p: a search for the largest t in [θ, max] whose
//   count (top_k) or mass (top_p) of {s >= t} still reaches the target. Each search pass also
//   returns the nearest row values on both sides of its pivot, so the bracket always jumps to
//   row values and shrinks fast (as FlashInfer's pivot searches do); it ends on a row value.
// Every reduction has a fixed order (per-thread strides, then cuda/reduce.cuh's butterflies), so
// the same row gives the same θ on every run. Rows whose filter is off return -inf without a pass.
#pragma once

#include "cuda/common.cuh"
#include "cuda/reduce.cuh"
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

struct FilterScratch {
  float f[32];
  uint32_t u[32];
  unsigned long long n[32];
};

// θ of one row scaled by inv_temperature = 1/T, for filter f, the row read through each(fn),
// which calls fn(z, index) for every raw logit z of the row (extra entries must be NaN: they
// read as -inf and count nowhere), each thread in an order that depends only on the row's
// length. All threads of the block call it and get the same value.
template <typename Each>
__device__ float block_filter_threshold_each(Each&& each, float inv_temperature, const RowFilter& f,
                                             FilterScratch& sh) {
  if (f.off()) return -INFINITY;
  auto fmax_op = [](float a, float b) { return a > b ? a : b; };
  auto fmin_op = [](float a, float b) { return a < b ? a : b; };
  auto umin_op = [](uint32_t a, uint32_t b) { return a < b ? a : b; };
  auto umax_op = [](uint32_t a, uint32_t b) { return a > b ? a : b; };

  float m = -INFINITY;
  each([&](float z, int64_t) { m = fmaxf(m, scaled_logit(z, inv_temperature)); });
  m = block_reduce(m, sh.f, -INFINITY, fmax_op);
  if (!isfinite(m)) return -INFINITY;
  float theta = -INFINITY;
  if (f.min_p > 0.0f) {
    float lo = m;
    each([&](float z, int64_t) {
      const float s = scaled_logit(z, inv_temperature);
      if (s < lo && filter_weight(s, m) >= f.min_p) lo = s;
    });
    theta = block_reduce(lo, sh.f, INFINITY, fmin_op);
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
      each([&](float z, int64_t) {
        const float s = scaled_logit(z, inv_temperature);
        if (!(s >= theta) || !(s > -INFINITY)) return;
        const uint32_t key = ordered_key(s);
        if (s >= pivot) {
          measure = add(measure, weight(s));
          above = key < above ? key : above;
        } else {
          below = key > below ? key : below;
        }
      });
      measure = block_reduce(measure, scratch, decltype(target){0}, add);
      above = block_reduce(above, sh.u, 0xFFFFFFFFu, umin_op);
      below = block_reduce(below, sh.u, 0u, umax_op);
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
    each([&](float z, int64_t) {
      const float s = scaled_logit(z, inv_temperature);
      kept += (s >= theta && s > -INFINITY) ? 1 : 0;
    });
    kept = block_sum(kept, sh.n);
    const auto k = static_cast<unsigned long long>(f.top_k);
    if (kept > k) search([](float) { return 1ull; }, k, Sum{}, sh.n);
  }
  if (f.top_p < 1.0f) {
    float total = 0.0f;
    each([&](float z, int64_t) {
      const float s = scaled_logit(z, inv_temperature);
      if (s >= theta && s > -INFINITY) total += filter_weight(s, m);
    });
    total = block_sum(total, sh.f);
    search([&](float s) { return filter_weight(s, m); }, f.top_p * total, Sum{}, sh.f);
  }
  return theta;
}

// θ of row [V] (logits of type T, read VEC at a time: vec_size on the host). L = Load::kL2 for
// a row written earlier in the same launch (markov_draft's own draft logits).
template <int VEC, Load L = Load::kReadOnly, typename T>
__device__ float block_filter_threshold(const T* __restrict__ row, int64_t vocab, float inv_temperature,
                                        const RowFilter& f, FilterScratch& sh) {
  auto each = [&](auto&& fn) { block_for_each<VEC, L>(row, 0, vocab, fn); };
  return block_filter_threshold_each(each, inv_temperature, f, sh);
}

}  // namespace dspark::cuda
