// CUDA kernel of dspark::schedule_lengths (SPEC §6): the whole schedule in ONE thread block so
// it needs no host sync and no inter-block coordination (graph capturable):
//   1. every thread computes survival products of some requests and writes their 64-bit
//      candidate keys (dspark/schedule.h) into shared memory, zero-padded to a power of two;
//   2. a block-wide bitonic sort of the keys, descending (a desc, j asc, r asc; keys unique);
//   3. thread t owns sorted positions [16t, 16t+16): left-fold local sums, a Hillis-Steele
//      scan of the chunk totals in shared memory, then tau_i and Theta_i for its positions:
//      exactly the order the CPU kernel uses, so results agree bit for bit;
//   4. the kept prefix n by a block reduction (mode 0: first i with Theta_i <= Theta_{i-1};
//      mode 1: first argmax; mode 2: min(budget, K)), then lengths by atomicMax.
// Shared memory: 8 * next_pow2(R*γ) bytes of keys (128 KiB at the 16384 limit) + 8 KiB.
#include "cuda/common.cuh"
#include "cuda/schedule_lengths.h"
#include "dspark/schedule.h"

#include <climits>

namespace dspark::cuda {
namespace {

constexpr int kMaxThreads = 1024;
constexpr int kMaxChunks = static_cast<int>(kScheduleMaxCudaCandidates / kScheduleChunk);  // 1024

__device__ __forceinline__ int warp_min_int(int v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  return v;
}

// (value, index): larger value wins, lower index on ties. Values are never NaN here.
__device__ __forceinline__ void warp_argmax(float& v, int& idx) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xFFFFFFFFu, v, o);
    const int oi = __shfl_xor_sync(0xFFFFFFFFu, idx, o);
    if (ov > v || (ov == v && oi < idx)) v = ov, idx = oi;
  }
}

__global__ void __launch_bounds__(kMaxThreads)
    schedule_lengths_kernel(const float* __restrict__ confidence,   // [R, γ]
                            const float* __restrict__ sps,          // [S]
                            const int64_t* __restrict__ max_lengths,  // [R] or nullptr
                            int R, int gamma, int mode, int64_t budget, int n_pad,
                            int64_t* __restrict__ lengths,  // [R]
                            int64_t* __restrict__ admitted, float* __restrict__ expected,
                            float* __restrict__ throughput) {
  extern __shared__ uint64_t keys[];             // [n_pad]
  __shared__ float scan[2][kMaxChunks];          // Hillis-Steele ping-pong
  __shared__ float last_theta[kMaxChunks];       // Theta of each chunk's last position
  __shared__ int red_int[kMaxThreads / kWarpSize];
  __shared__ float red_val[kMaxThreads / kWarpSize];
  __shared__ int num_candidates, kept;

  const int tid = threadIdx.x, nt = blockDim.x;
  const int lane = tid % kWarpSize, warp = tid / kWarpSize, nwarps = nt / kWarpSize;
  const int total = R * gamma;

  // 1. Survival products and keys; lengths start at 0.
  if (tid == 0) num_candidates = 0;
  for (int r = tid; r < R; r += nt) {
    lengths[r] = 0;
    int64_t cap = max_lengths ? max_lengths[r] : gamma;
    cap = cap < 0 ? 0 : (cap > gamma ? gamma : cap);
    float a = 1.0f;
    for (int j = 1; j <= gamma; ++j) {
      const float c = schedule_clamp_confidence(confidence[static_cast<int64_t>(r) * gamma + j - 1]);
      a = j == 1 ? c : schedule_mul(a, c);
      const int slot = (j - 1) * R + r;
      keys[slot] = j <= cap ? schedule_key(a, static_cast<uint32_t>(slot)) : 0;
    }
  }
  for (int i = total + tid; i < n_pad; i += nt) keys[i] = 0;
  __syncthreads();

  // 2. Bitonic sort, descending. Each step compares n_pad/2 disjoint pairs.
  const int pairs = n_pad / 2;
  for (int k = 2; k <= n_pad; k <<= 1) {
    for (int d = k >> 1; d > 0; d >>= 1) {
      for (int p = tid; p < pairs; p += nt) {
        const int i = ((p & ~(d - 1)) << 1) | (p & (d - 1)), partner = i + d;  // d is a power of 2
        const uint64_t x = keys[i], y = keys[partner];
        const bool descending = (i & k) == 0;
        if (descending ? x < y : x > y) keys[i] = y, keys[partner] = x;
      }
      __syncthreads();
    }
  }

  // 3. Chunk sums. nchunks = n_pad / 16 <= nt, so every chunk has its own thread.
  const int nchunks = n_pad / kScheduleChunk;
  const int base = tid * kScheduleChunk;
  float local[kScheduleChunk] = {};
  float chunk_total = 0.0f;
  if (tid < nchunks) {
#pragma unroll
    for (int m = 0; m < kScheduleChunk; ++m) {
      const uint64_t key = keys[base + m];
      const float a = key != 0 ? schedule_key_survival(key) : 0.0f;
      chunk_total = m == 0 ? a : schedule_add(chunk_total, a);
      local[m] = chunk_total;
      // The last candidate is the one followed by a zero key (or the end).
      if (key != 0 && (base + m + 1 == n_pad || keys[base + m + 1] == 0)) num_candidates = base + m + 1;
    }
    scan[0][tid] = chunk_total;
  }
  __syncthreads();
  int buf = 0;
  for (int d = 1; d < nchunks; d <<= 1) {
    if (tid < nchunks) {
      const float v = scan[buf][tid];
      scan[buf ^ 1][tid] = tid >= d ? schedule_add(v, scan[buf][tid - d]) : v;
    }
    buf ^= 1;
    __syncthreads();
  }
  const int K = num_candidates;
  const float Rf = static_cast<float>(R);
  const float theta_init = schedule_mul(Rf, sps[R]);
  const float E = tid == 0 ? 0.0f : (tid < nchunks ? scan[buf][tid - 1] : 0.0f);
  float (&tau)[kScheduleChunk] = local;  // tau_i overwrites the local sum it is made from (fewer registers)
  float theta[kScheduleChunk];
#pragma unroll
  for (int m = 0; m < kScheduleChunk; ++m) {
    const int i = base + m;
    theta[m] = 0.0f;
    if (tid < nchunks && i < K) {
      tau[m] = schedule_add(Rf, schedule_add(E, local[m]));
      theta[m] = schedule_mul(tau[m], sps[R + i + 1]);
    }
  }
  if (tid < nchunks) last_theta[tid] = theta[kScheduleChunk - 1];
  __syncthreads();

  // 4. The kept prefix n.
  if (mode == kScheduleTopK) {
    if (tid == 0) kept = budget < K ? static_cast<int>(budget) : K;
  } else if (mode == kScheduleCausal) {
    int stop = K;
    float before = tid == 0 ? theta_init : (tid < nchunks ? last_theta[tid - 1] : 0.0f);
#pragma unroll
    for (int m = 0; m < kScheduleChunk; ++m) {
      const int i = base + m;
      if (tid < nchunks && i < K && stop == K && !(theta[m] > before)) stop = i;
      before = theta[m];
    }
    stop = warp_min_int(stop);
    if (lane == 0) red_int[warp] = stop;
    __syncthreads();
    if (warp == 0) {
      int v = lane < nwarps ? red_int[lane] : INT_MAX;
      v = warp_min_int(v);
      if (lane == 0) kept = v;
    }
  } else {
    float best = -INFINITY;
    int best_idx = INT_MAX;
#pragma unroll
    for (int m = 0; m < kScheduleChunk; ++m) {
      const int i = base + m;
      if (tid < nchunks && i < K && theta[m] > best) best = theta[m], best_idx = i;
    }
    warp_argmax(best, best_idx);
    if (lane == 0) red_val[warp] = best, red_int[warp] = best_idx;
    __syncthreads();
    if (warp == 0) {
      float v = lane < nwarps ? red_val[lane] : -INFINITY;
      int idx = lane < nwarps ? red_int[lane] : INT_MAX;
      warp_argmax(v, idx);
      if (lane == 0) kept = (idx != INT_MAX && v > theta_init) ? idx + 1 : 0;
    }
  }
  __syncthreads();

  // 5. Outputs. Admitted sets are prefix-closed per request, so ℓ_r = max admitted j.
  const int n = kept;
  if (tid < nchunks) {
#pragma unroll
    for (int m = 0; m < kScheduleChunk; ++m) {
      const int i = base + m;
      if (i < n) {
        const uint32_t slot = schedule_key_slot(keys[i]);
        atomicMax(reinterpret_cast<unsigned long long*>(lengths + slot % R),
                  static_cast<unsigned long long>(slot / R + 1));
      }
      if (i == n - 1) *expected = tau[m], *throughput = theta[m];
    }
  }
  if (tid == 0) {
    *admitted = n;
    if (n == 0) *expected = Rf, *throughput = theta_init;
  }
}

int next_pow2(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

}  // namespace

cudaError_t launch_schedule_lengths(const float* confidence, const float* sps, const int64_t* max_lengths,
                                    int64_t requests, int64_t gamma, int64_t mode, int64_t budget,
                                    int64_t* lengths, int64_t* admitted, float* expected, float* throughput,
                                    cudaStream_t stream) {
  if (requests * gamma > kScheduleMaxCudaCandidates) return cudaErrorInvalidValue;
  const int total = static_cast<int>(requests * gamma);
  const int n_pad = next_pow2(total < 32 ? 32 : total);
  const int threads = n_pad / 2 < 32 ? 32 : (n_pad / 2 > kMaxThreads ? kMaxThreads : n_pad / 2);
  const size_t smem = static_cast<size_t>(n_pad) * sizeof(uint64_t);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(schedule_lengths_kernel,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  schedule_lengths_kernel<<<1, threads, smem, stream>>>(
      confidence, sps, max_lengths, static_cast<int>(requests), static_cast<int>(gamma), static_cast<int>(mode),
      budget, n_pad, lengths, admitted, expected, throughput);
  return cudaGetLastError();
}

}  // namespace dspark::cuda
