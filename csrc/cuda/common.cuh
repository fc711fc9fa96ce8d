// Device helpers shared by the CUDA kernels: dtype dispatch, loads to float32, and
// block-wide reductions of the accumulators in dspark/sampling.h. No torch headers here,
// so the .cu files compile quickly for every architecture.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "dspark/dtype.h"
#include "dspark/sampling.h"

namespace dspark::cuda {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

// Runs the lambda body with `using T = <storage type of dtype>`.
#define DSPARK_DISPATCH_FLOAT(dtype, T, ...)             \
  [&] {                                                  \
    switch (dtype) {                                     \
      case ::dspark::DType::kBFloat16: {                 \
        using T = __nv_bfloat16;                         \
        return __VA_ARGS__();                            \
      }                                                  \
      case ::dspark::DType::kFloat16: {                  \
        using T = __half;                                \
        return __VA_ARGS__();                            \
      }                                                  \
      default: {                                         \
        using T = float;                                 \
        return __VA_ARGS__();                            \
      }                                                  \
    }                                                    \
  }()

constexpr int kWarpSize = 32;

// True when every row of a [rows, vocab] tensor starting at `base` is 16-byte aligned, so the
// rows can be read with vector loads. It depends only on the tensor, never on a row's place in
// the batch, which keeps the per-thread summation order (and the float rounding) of a row the
// same whether its request runs alone or in a batch (SPEC §2 (a)).
template <typename T>
__device__ __forceinline__ bool rows_vectorizable(const void* base, int64_t vocab) {
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && (vocab * static_cast<int64_t>(sizeof(T))) % 16 == 0;
}

// Calls f(value, index) for every index in [begin, end) of `row`, spread over the block's
// threads. With `vectorize` (see rows_vectorizable; `row + begin` must then be 16-byte
// aligned) it reads 16-byte vectors (8 bf16/fp16 or 4 fp32 per load), which HBM needs to
// approach its bandwidth; otherwise one element at a time, so any V and any row start work.
template <typename T, typename F>
__device__ __forceinline__ void block_for_each(const T* __restrict__ row, int64_t begin, int64_t end, bool vectorize,
                                               F&& f) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t vectors = vectorize ? (end - begin) / kVec : 0;
  const uint4* vec = reinterpret_cast<const uint4*>(row + begin);
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
    const uint4 raw = __ldg(vec + i);
    const T* vals = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int j = 0; j < kVec; ++j) f(to_float(vals[j]), begin + i * kVec + j);
  }
  for (int64_t v = begin + vectors * kVec + threadIdx.x; v < end; v += blockDim.x) f(to_float(row[v]), v);
}

__device__ __forceinline__ uint64_t warp_max_u64(uint64_t v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) {
    const uint64_t other = __shfl_xor_sync(0xFFFFFFFFu, v, o);
    v = other > v ? other : v;
  }
  return v;
}

__device__ __forceinline__ SoftmaxStats warp_merge(SoftmaxStats s) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) {
    SoftmaxStats other;
    other.max = __shfl_xor_sync(0xFFFFFFFFu, s.max, o);
    other.sum = __shfl_xor_sync(0xFFFFFFFFu, s.sum, o);
    s.merge(other);
  }
  // The butterfly alone does not leave every lane with the same bits: nvcc contracts
  // merge()'s `sum * e + o.sum * e'` into fma(sum, e, o.sum * e'), which is not symmetric in
  // its rounding, so partner lanes i and i^o can round differently. Callers branch on the
  // result (verify_chain's decide walk compares coin * q(x) < p(x) on every lane, then keeps
  // shuffling with a full mask), so lanes must agree bit for bit: take lane 0's result.
  // Through block_merge (every warp reduces the same scratch) this makes it block-uniform too.
  s.max = __shfl_sync(0xFFFFFFFFu, s.max, 0);
  s.sum = __shfl_sync(0xFFFFFFFFu, s.sum, 0);
  return s;
}

__device__ __forceinline__ ArgMax warp_merge(ArgMax a) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) {
    ArgMax other;
    other.value = __shfl_xor_sync(0xFFFFFFFFu, a.value, o);
    other.index = __shfl_xor_sync(0xFFFFFFFFu, a.index, o);
    a.merge(other);
  }
  return a;
}

// Block-wide reductions: every thread of the block calls them and gets the block's result.
// `scratch` is shared memory of at least blockDim.x / 32 elements; the call ends with the
// scratch free for reuse.
__device__ __forceinline__ uint64_t block_max_u64(uint64_t v, uint64_t* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  v = warp_max_u64(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0;
  v = warp_max_u64(v);
  __syncthreads();
  return v;
}

template <typename Acc>
__device__ __forceinline__ Acc block_merge(Acc a, Acc* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  a = warp_merge(a);
  if (lane == 0) scratch[warp] = a;
  __syncthreads();
  a = lane < warps ? scratch[lane] : Acc{};
  a = warp_merge(a);
  __syncthreads();
  return a;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

__device__ __forceinline__ long long warp_sum(long long v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

// Block sums whose result every thread reads from one shared slot; the summation order is
// fixed by the block size, so a row always sums to the same bits.
template <typename V>
__device__ __forceinline__ V block_sum(V v, V* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? scratch[lane] : V{};
    v = warp_sum(v);
  }
  __syncthreads();
  if (threadIdx.x == 0) scratch[0] = v;
  __syncthreads();
  v = scratch[0];
  __syncthreads();
  return v;
}

}  // namespace dspark::cuda
