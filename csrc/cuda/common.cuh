// Device helpers shared by the CUDA kernels: dtype dispatch, conversions to and from float32,
// and a block-wide row loop; reductions are in cuda/reduce.cuh, the vector type in
// cuda/vec.cuh. No torch headers here, so the .cu files compile quickly for every architecture.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/reduce.cuh"
#include "cuda/vec.cuh"
#include "dspark/dtype.h"
#include "dspark/sampling.h"

namespace dspark::cuda {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}

// Runs the lambda body with `using T = <storage type of dtype>`. The bindings map only the
// three planned dtypes to DType (cuda/torch_dtype.h raises a RuntimeError naming the argument
// for any other), so the default branch means a corrupt value: fail loudly, never guess float.
#define DSPARK_DISPATCH_FLOAT(dtype, T, ...)                                                                          \
  [&] {                                                                                                               \
    switch (dtype) {                                                                                                  \
      DSPARK_DISPATCH_CASE(::dspark::DType::kBFloat16, T, __nv_bfloat16, __VA_ARGS__)                                 \
      DSPARK_DISPATCH_CASE(::dspark::DType::kFloat16, T, __half, __VA_ARGS__)                                         \
      DSPARK_DISPATCH_CASE(::dspark::DType::kFloat32, T, float, __VA_ARGS__)                                          \
      default:                                                                                                        \
        throw std::runtime_error("dspark: no CUDA kernel for dtype code " + std::to_string(static_cast<int>(dtype))); \
    }                                                                                                                 \
  }()

// Calls f(value, index) for every index in [begin, end) of `row`, spread over the block's
// threads, reading vec_t<T, VEC> vectors (VEC from vec_size on the host: `row + begin` is
// then aligned to VEC elements) so that HBM sees wide loads; the tail past the last whole
// vector one element at a time. The per-thread order depends only on VEC, i.e. on the tensor.
// L = Load::kL2 for a row written earlier in the same launch (see vec.cuh).
template <int VEC, Load L = Load::kReadOnly, typename T, typename F>
__device__ __forceinline__ void block_for_each(const T* __restrict__ row, int64_t begin, int64_t end, F&& f) {
  const int64_t vectors = (end - begin) / VEC;
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
    vec_t<T, VEC> vals;
    vals.template load<L>(row + begin + i * VEC);
#pragma unroll
    for (int j = 0; j < VEC; ++j) f(to_float(vals[j]), begin + i * VEC + j);
  }
  for (int64_t v = begin + vectors * VEC + threadIdx.x; v < end; v += blockDim.x) {
    vec_t<T, 1> val;
    val.template load<L>(row + v);
    f(to_float(val[0]), v);
  }
}

}  // namespace dspark::cuda
