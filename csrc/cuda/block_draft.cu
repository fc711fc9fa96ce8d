// CUDA kernels of the block-draft helpers (SPEC §7): rms_norm, qk_norm_rope and
// append_context_kv. No torch headers: launchers take raw pointers (see block_draft.h). The
// arithmetic mirrors csrc/cpu/block_draft.cpp. block_attention's kernels are in
// block_attention.cu.
#include <cmath>

#include "cuda/block_draft.h"
#include "cuda/common.cuh"
#include "dspark/rope.h"

namespace dspark::cuda {
namespace {

template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return to_float(from_float<T>(x));
}

template <typename T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ weight, T* __restrict__ out,
                                int64_t rows, int64_t dim, float eps) {
  __shared__ float scratch[kWarpSize];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * dim;
    float ss = 0.0f;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      const float v = to_float(xr[d]);
      ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float rs = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x)
      out[row * dim + d] = from_float<T>(to_float(weight[d]) * round_to<T>(to_float(xr[d]) * rs));
  }
}

// y = RoPE(RMSNorm(x) * w) at `position` for one head row, by one warp (dspark/rope.h).
template <typename T>
__device__ __forceinline__ void warp_norm_rope(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                               int64_t dh, int64_t position, float eps, const RopeParams& rope,
                                               int lane) {
  float ss = 0.0f;
  for (int64_t d = lane; d < dh; d += kWarpSize) {
    const float v = to_float(x[d]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  const float rs = 1.0f / sqrtf(ss / static_cast<float>(dh) + eps);
  const int64_t half = dh / 2;
  for (int64_t i = lane; i < half; i += kWarpSize) {
    const float a = round_to<T>(to_float(w[i]) * round_to<T>(to_float(x[i]) * rs));
    const float b = round_to<T>(to_float(w[i + half]) * round_to<T>(to_float(x[i + half]) * rs));
    const float angle = rope_angle(position, i, dh, rope);
    const float c = round_to<T>(cosf(angle) * rope.scaling), s = round_to<T>(sinf(angle) * rope.scaling);
    y[i] = from_float<T>(round_to<T>(a * c) - round_to<T>(b * s));
    y[i + half] = from_float<T>(round_to<T>(b * c) + round_to<T>(a * s));
  }
}

template <typename T>
__global__ void qk_norm_rope_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ qw,
                                    const T* __restrict__ kw, const int64_t* __restrict__ positions,
                                    T* __restrict__ q_out, T* __restrict__ k_out, int64_t tokens, int64_t hq,
                                    int64_t hk, int64_t dh, float eps, const RopeParams rope) {
  const int warps_per_block = blockDim.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t rows = tokens * (hq + hk);
  for (int64_t wi = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / kWarpSize; wi < rows;
       wi += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    const int64_t n = wi / (hq + hk), h = wi % (hq + hk);
    if (h < hq)
      warp_norm_rope(q + (n * hq + h) * dh, qw, q_out + (n * hq + h) * dh, dh, positions[n], eps, rope, lane);
    else
      warp_norm_rope(k + (n * hk + h - hq) * dh, kw, k_out + (n * hk + h - hq) * dh, dh, positions[n], eps, rope, lane);
  }
}

template <typename T>
__global__ void append_context_kv_kernel(const AppendContextArgs a) {
  const int warps_per_block = blockDim.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t rows = a.requests * a.chunk * a.kv_heads;
  T* k_cache = static_cast<T*>(a.k_cache);
  T* v_cache = static_cast<T*>(a.v_cache);
  const T* k_new = static_cast<const T*>(a.k_new);
  const T* v_new = static_cast<const T*>(a.v_new);
  const T* kw = static_cast<const T*>(a.k_norm_weight);
  for (int64_t wi = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / kWarpSize; wi < rows;
       wi += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    const int64_t r = wi / (a.chunk * a.kv_heads), rem = wi % (a.chunk * a.kv_heads);
    const int64_t i = rem / a.kv_heads, h = rem % a.kv_heads;
    // Padding entries and slots outside the cache are skipped (uniform per warp); compared as
    // start < Lmax - i so that start near 2^63 cannot overflow start + i.
    const int64_t first = a.start[r];
    if (i >= a.num_new[r] || first < 0 || first >= a.max_len - i) continue;
    const int64_t slot = first + i;
    const int64_t src = ((r * a.chunk + i) * a.kv_heads + h) * a.head_dim;
    warp_norm_rope(k_new + src, kw, k_cache + r * a.k_stride_r + slot * a.k_stride_l + h * a.k_stride_h, a.head_dim,
                   slot, a.eps, a.rope, lane);
    T* vdst = v_cache + r * a.v_stride_r + slot * a.v_stride_l + h * a.v_stride_h;
    for (int64_t d = lane; d < a.head_dim; d += kWarpSize) vdst[d] = v_new[src + d];
  }
}

unsigned warp_grid(int64_t warps, int threads) {
  const int64_t per_block = threads / kWarpSize;
  int64_t blocks = (warps + per_block - 1) / per_block;
  if (blocks > (1 << 20)) blocks = 1 << 20;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

}  // namespace

cudaError_t launch_rms_norm(const void* x, const void* weight, void* out, int64_t rows, int64_t dim, float eps,
                            DType dtype, cudaStream_t stream) {
  if (rows == 0 || dim == 0) return cudaSuccess;
  const int threads = dim >= 1024 ? 256 : (dim >= 256 ? 128 : 64);
  const unsigned blocks = static_cast<unsigned>(rows < 65535 ? rows : 65535);
  return DSPARK_DISPATCH_FLOAT(dtype, T, [&]() -> cudaError_t {
    rms_norm_kernel<T><<<blocks, threads, 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(weight),
                                                       static_cast<T*>(out), rows, dim, eps);
    return cudaGetLastError();
  });
}

cudaError_t launch_qk_norm_rope(const void* q, const void* k, const void* q_norm_weight, const void* k_norm_weight,
                                const int64_t* positions, void* q_out, void* k_out, int64_t tokens, int64_t q_heads,
                                int64_t kv_heads, int64_t head_dim, float eps, const RopeParams& rope, DType dtype,
                                cudaStream_t stream) {
  const int64_t rows = tokens * (q_heads + kv_heads);
  if (rows == 0 || head_dim == 0) return cudaSuccess;
  const int threads = 256;
  return DSPARK_DISPATCH_FLOAT(dtype, T, [&]() -> cudaError_t {
    qk_norm_rope_kernel<T><<<warp_grid(rows, threads), threads, 0, stream>>>(
        static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(q_norm_weight),
        static_cast<const T*>(k_norm_weight), positions, static_cast<T*>(q_out), static_cast<T*>(k_out), tokens,
        q_heads, kv_heads, head_dim, eps, rope);
    return cudaGetLastError();
  });
}

cudaError_t launch_append_context_kv(const AppendContextArgs& a, DType dtype, cudaStream_t stream) {
  const int64_t rows = a.requests * a.chunk * a.kv_heads;
  if (rows == 0 || a.head_dim == 0) return cudaSuccess;
  const int threads = 256;
  return DSPARK_DISPATCH_FLOAT(dtype, T, [&]() -> cudaError_t {
    append_context_kv_kernel<T><<<warp_grid(rows, threads), threads, 0, stream>>>(a);
    return cudaGetLastError();
  });
}

}  // namespace dspark::cuda
