// Warp and block reductions of the CUDA kernels, in one fixed order: a butterfly over the
// lanes (xor 16, 8, 4, 2, 1), then, for a block, the same butterfly over the per-warp results
// in shared memory. The order depends only on blockDim, never on timing or on the batch, so a
// request's result is the same whether it runs alone or in a batch (SPEC §2 (a)).
//
// warp_reduce(v, op) / block_reduce(v, scratch, identity, op) take any `op(a, b)`; the named
// helpers below are the reductions the kernels use. Every lane (thread) gets the result.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dspark/sampling.h"

namespace dspark::cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xFFFFFFFFu;

// __shfl_xor_sync for the scalar types and the accumulators of dspark/sampling.h.
template <typename V>
__device__ __forceinline__ V shfl_xor(V v, int lane_mask) {
  return __shfl_xor_sync(kFullMask, v, lane_mask);
}
template <>
__device__ __forceinline__ SoftmaxStats shfl_xor(SoftmaxStats s, int lane_mask) {
  return {shfl_xor(s.max, lane_mask), shfl_xor(s.sum, lane_mask)};
}
template <>
__device__ __forceinline__ ArgMax shfl_xor(ArgMax a, int lane_mask) {
  return {shfl_xor(a.value, lane_mask), shfl_xor(a.index, lane_mask)};
}

// LANES < 32: the reduction within each aligned group of LANES lanes (xor LANES / 2, ..., 1).
template <int LANES = kWarpSize, typename V, typename Op>
__device__ __forceinline__ V warp_reduce(V v, Op op) {
#pragma unroll
  for (int o = LANES / 2; o > 0; o >>= 1) v = op(v, shfl_xor(v, o));
  return v;
}

// Every thread of the block calls it and gets the block's result: warp_fn reduces within each
// warp, then every warp reduces the per-warp results. `scratch` is shared memory of at least
// blockDim.x / 32 elements; the call ends with the scratch free for reuse. The second level
// runs in every warp on the same scratch, so all threads get the same bits.
template <typename V, typename WarpFn>
__device__ __forceinline__ V block_reduce_with(V v, V* scratch, V identity, WarpFn warp_fn) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  v = warp_fn(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : identity;
  v = warp_fn(v);
  __syncthreads();
  return v;
}

template <typename V, typename Op>
__device__ __forceinline__ V block_reduce(V v, V* scratch, V identity, Op op) {
  return block_reduce_with(v, scratch, identity, [op](V x) { return warp_reduce(x, op); });
}

struct Sum {
  template <typename V>
  __device__ __forceinline__ V operator()(V a, V b) const {
    return a + b;
  }
};
struct Max {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
  __device__ __forceinline__ uint64_t operator()(uint64_t a, uint64_t b) const { return a > b ? a : b; }
};
struct Min {
  __device__ __forceinline__ int operator()(int a, int b) const { return min(a, b); }
};
// The accumulators' own merge (SoftmaxStats, ArgMax).
struct Merge {
  template <typename Acc>
  __device__ __forceinline__ Acc operator()(Acc a, const Acc& b) const {
    a.merge(b);
    return a;
  }
};

// a + b == b + a bit for bit, so a sum butterfly leaves every lane with the same value.
template <typename V>
__device__ __forceinline__ V warp_sum(V v) {
  return warp_reduce(v, Sum{});
}
__device__ __forceinline__ float warp_max(float v) { return warp_reduce(v, Max{}); }
// The exact 64-bit maximum with two redux.sync (sm_80+) instead of a 64-bit butterfly (five
// rounds of two shuffles and a 64-bit compare): the largest high word, then the largest low
// word among the lanes that hold it.
__device__ __forceinline__ uint64_t warp_max_u64(uint64_t v) {
  const unsigned hi = __reduce_max_sync(kFullMask, static_cast<unsigned>(v >> 32));
  const unsigned lo = __reduce_max_sync(kFullMask,
                                        static_cast<unsigned>(v >> 32) == hi ? static_cast<unsigned>(v) : 0u);
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
__device__ __forceinline__ int warp_min(int v) { return warp_reduce(v, Min{}); }

__device__ __forceinline__ SoftmaxStats warp_merge(SoftmaxStats s) {
  s = warp_reduce(s, Merge{});
  // The butterfly alone does not leave every lane with the same bits: nvcc contracts
  // merge()'s `sum * e + o.sum * e'` into fma(sum, e, o.sum * e'), which is not symmetric in
  // its rounding, so partner lanes i and i^o can round differently. Callers branch on the
  // result (verify_chain's decide walk compares coin * q(x) < p(x) on every lane, then keeps
  // shuffling with a full mask), so lanes must agree bit for bit: take lane 0's result.
  // Through block_merge (every warp reduces the same scratch) this makes it block-uniform too.
  s.max = __shfl_sync(kFullMask, s.max, 0);
  s.sum = __shfl_sync(kFullMask, s.sum, 0);
  return s;
}

// Softmax statistics of the entries x[0..N) of each lane of a group of LANES lanes (-inf or NaN:
// no entry), the same on every lane of the group: (M, sum of exp(x - M)) from a max butterfly,
// each lane's sum in index order, and a sum butterfly; cheaper than merging running statistics
// (two exponentials per merge). x = M counts 1, so entries at M = +inf count 1 each.
template <int LANES, int N>
__device__ __forceinline__ SoftmaxStats group_stats(const float (&x)[N]) {
  float m = -INFINITY;
#pragma unroll
  for (int e = 0; e < N; ++e) m = x[e] > m ? x[e] : m;
  SoftmaxStats s;
  s.max = warp_reduce<LANES>(m, Max{});
  float sum = 0.0f;
#pragma unroll
  for (int e = 0; e < N; ++e)
    if (x[e] > -INFINITY) sum += x[e] == s.max ? 1.0f : expf(x[e] - s.max);
  s.sum = warp_reduce<LANES>(sum, Sum{});
  return s;
}

// An exact total order (value, then lowest index): every lane gets the same winner.
__device__ __forceinline__ ArgMax warp_merge(ArgMax a) { return warp_reduce(a, Merge{}); }

template <typename V>
__device__ __forceinline__ V block_sum(V v, V* scratch) {
  return block_reduce(v, scratch, V{}, Sum{});
}
__device__ __forceinline__ uint64_t block_max_u64(uint64_t v, uint64_t* scratch) {
  return block_reduce(v, scratch, uint64_t{0}, Max{});
}

// Block merge of SoftmaxStats / ArgMax; the lane-0 broadcast of warp_merge makes it uniform.
template <typename Acc>
__device__ __forceinline__ Acc block_merge(Acc a, Acc* scratch) {
  return block_reduce_with(a, scratch, Acc{}, [](Acc x) { return warp_merge(x); });
}

}  // namespace dspark::cuda
