// CUDA kernel of dspark::schedule_lengths (SPEC §6): the whole schedule in ONE thread block so
// it needs no host sync and no inter-block coordination (graph capturable):
//   1. every thread computes survival products of some requests and writes their 64-bit
//      candidate keys (dspark/schedule.h) into shared memory, zero-padded to a power of two;
//   2. a block-wide bitonic sort of the keys, descending (a desc, j asc, r asc; keys unique);
//   3. thread t owns sorted positions [16t, 16t+16): left-fold local sums, a Hillis-Steele
//      scan of the chunk totals in shared memory, then tau_i and Theta_i for its positions:
//      exactly the order the CPU kernel uses, so results agree bit for bit;
//   4. the kept prefix n by a block reduction (mode 0: first i with Theta_i <= Theta_{i-1};
//      mode 1: first argmax; mode 2: min(budget, K));
//   5. lengths by atomicMax, and the scalar outputs.
// Each phase is one device function below; the kernel is their sequence.
// Shared memory: 8 * next_pow2(R*γ) bytes of keys (128 KiB at the 16384 limit) + 8 KiB.
#include "cuda/common.cuh"
#include "cuda/schedule_lengths.h"
#include "dspark/schedule.h"

#include <climits>

namespace dspark::cuda {
namespace {

constexpr int kMaxThreads = 1024;
constexpr int kMaxChunks = static_cast<int>(kScheduleMaxCudaCandidates / kScheduleChunk);  // 1024

// The positions of the sorted candidates one thread owns: [base, base + 16) (chunk `tid`;
// threads past the last chunk own none), with tau_i and Theta_i of each (0 past K).
struct OwnedPositions {
  int base;
  bool owns;
  float tau[kScheduleChunk];
  float theta[kScheduleChunk];
};

// Phase 1: survival products a_{r,j} and their keys (dspark/schedule.h) in slot (j-1)*R + r,
// zero past cap_r and in the padding up to n_pad; every lengths[r] starts at 0.
__device__ __forceinline__ void write_candidate_keys(const float* __restrict__ confidence,
                                                     const int64_t* __restrict__ max_lengths, int R, int gamma,
                                                     int n_pad, uint64_t* keys, int64_t* __restrict__ lengths) {
  const int tid = threadIdx.x, nt = blockDim.x;
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
  for (int i = R * gamma + tid; i < n_pad; i += nt) keys[i] = 0;
  __syncthreads();
}

// Phase 2: bitonic sort of keys[0, n_pad) in descending order. Each step compares n_pad/2
// disjoint pairs.
__device__ __forceinline__ void bitonic_sort_descending(uint64_t* keys, int n_pad) {
  const int pairs = n_pad / 2;
  for (int k = 2; k <= n_pad; k <<= 1) {
    for (int d = k >> 1; d > 0; d >>= 1) {
      for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
        const int i = ((p & ~(d - 1)) << 1) | (p & (d - 1)), partner = i + d;  // d is a power of 2
        const uint64_t x = keys[i], y = keys[partner];
        const bool descending = (i & k) == 0;
        if (descending ? x < y : x > y) keys[i] = y, keys[partner] = x;
      }
      __syncthreads();
    }
  }
}

// Phase 3: tau_i and Theta_i of the owned positions, in exactly the CPU's order: left-fold
// sums inside the chunk, a Hillis-Steele scan of the chunk totals (`scan`, [2][nchunks]), then
// tau_i = R + (E_t + s_{t,m}) and Theta_i = tau_i * sps[R + i + 1]. `num_candidates` receives K
// (the last nonzero key is followed by a zero key or the end). nchunks = n_pad / 16 <= nt, so
// every chunk has its own thread.
__device__ __forceinline__ OwnedPositions position_values(const uint64_t* keys, const float* __restrict__ sps, int R,
                                                          int n_pad, float (*scan)[kMaxChunks], int* num_candidates) {
  const int tid = threadIdx.x, nchunks = n_pad / kScheduleChunk;
  OwnedPositions o;
  o.base = tid * kScheduleChunk;
  o.owns = tid < nchunks;
  float (&local)[kScheduleChunk] = o.tau;  // tau_i overwrites the local sum it is made from (fewer registers)
  if (tid == 0) *num_candidates = 0;
  __syncthreads();
  if (o.owns) {
    float chunk_total = 0.0f;
#pragma unroll
    for (int m = 0; m < kScheduleChunk; ++m) {
      const uint64_t key = keys[o.base + m];
      const float a = key != 0 ? schedule_key_survival(key) : 0.0f;
      chunk_total = m == 0 ? a : schedule_add(chunk_total, a);
      local[m] = chunk_total;
      if (key != 0 && (o.base + m + 1 == n_pad || keys[o.base + m + 1] == 0)) *num_candidates = o.base + m + 1;
    }
    scan[0][tid] = chunk_total;
  }
  __syncthreads();
  int buf = 0;
  for (int d = 1; d < nchunks; d <<= 1) {
    if (o.owns) {
      const float v = scan[buf][tid];
      scan[buf ^ 1][tid] = tid >= d ? schedule_add(v, scan[buf][tid - d]) : v;
    }
    buf ^= 1;
    __syncthreads();
  }
  const int K = *num_candidates;
  const float Rf = static_cast<float>(R);
  const float E = tid == 0 ? 0.0f : (o.owns ? scan[buf][tid - 1] : 0.0f);
#pragma unroll
  for (int m = 0; m < kScheduleChunk; ++m) {
    const int i = o.base + m;
    o.theta[m] = 0.0f;
    if (o.owns && i < K) {
      o.tau[m] = schedule_add(Rf, schedule_add(E, local[m]));
      o.theta[m] = schedule_mul(o.tau[m], sps[R + i + 1]);
    }
  }
  return o;
}

// Scratch of the phase-4 block reductions.
struct KeptScratch {
  float last_theta[kMaxChunks];  // Theta of each chunk's last position
  int stops[kMaxThreads / kWarpSize];
  ArgMax best[kMaxThreads / kWarpSize];
};

// Phase 4: the kept prefix n (see dspark/schedule.h for the three modes), returned to every
// thread. K candidates; theta_init = Theta of the empty prefix.
__device__ __forceinline__ int kept_prefix(const OwnedPositions& o, int K, int mode, int64_t budget, float theta_init,
                                           KeptScratch& sh) {
  if (mode == kScheduleTopK) return budget < K ? static_cast<int>(budget) : K;
  const int tid = threadIdx.x;
  if (o.owns) sh.last_theta[tid] = o.theta[kScheduleChunk - 1];
  __syncthreads();
  if (mode == kScheduleCausal) {  // first i with !(Theta_i > Theta_{i-1}), else K
    int stop = K;
    float before = tid == 0 ? theta_init : (o.owns ? sh.last_theta[tid - 1] : 0.0f);
#pragma unroll
    for (int m = 0; m < kScheduleChunk; ++m) {
      const int i = o.base + m;
      if (o.owns && i < K && stop == K && !(o.theta[m] > before)) stop = i;
      before = o.theta[m];
    }
    return block_reduce(stop, sh.stops, INT_MAX, Min{});
  }
  // Global: 1 + the first index of the largest Theta_i (NaN never wins) if it beats theta_init.
  ArgMax best;
#pragma unroll
  for (int m = 0; m < kScheduleChunk; ++m) {
    const int i = o.base + m;
    if (o.owns && i < K && o.theta[m] > best.value) best.value = o.theta[m], best.index = i;
  }
  best = block_merge(best, sh.best);  // value desc, then lowest index: an exact total order
  return (best.index >= 0 && best.value > theta_init) ? static_cast<int>(best.index) + 1 : 0;
}

// Phase 5: admitted sets are prefix-closed per request, so ℓ_r = max admitted j; expected and
// throughput are tau and Theta of the last kept position (of the empty prefix when n = 0).
__device__ __forceinline__ void write_outputs(const OwnedPositions& o, const uint64_t* keys, int R, int n,
                                              float theta_init, int64_t* __restrict__ lengths,
                                              int64_t* __restrict__ admitted, float* __restrict__ expected,
                                              float* __restrict__ throughput) {
  if (o.owns) {
#pragma unroll
    for (int m = 0; m < kScheduleChunk; ++m) {
      const int i = o.base + m;
      if (i < n) {
        const uint32_t slot = schedule_key_slot(keys[i]);
        atomicMax(reinterpret_cast<unsigned long long*>(lengths + slot % R),
                  static_cast<unsigned long long>(slot / R + 1));
      }
      if (i == n - 1) *expected = o.tau[m], *throughput = o.theta[m];
    }
  }
  if (threadIdx.x == 0) {
    *admitted = n;
    if (n == 0) *expected = static_cast<float>(R), *throughput = theta_init;
  }
}

__global__ void __launch_bounds__(kMaxThreads)
    schedule_lengths_kernel(const float* __restrict__ confidence,     // [R, γ]
                            const float* __restrict__ sps,            // [S]
                            const int64_t* __restrict__ max_lengths,  // [R] or nullptr
                            int R, int gamma, int mode, int64_t budget, int n_pad,
                            int64_t* __restrict__ lengths,  // [R]
                            int64_t* __restrict__ admitted, float* __restrict__ expected,
                            float* __restrict__ throughput) {
  extern __shared__ uint64_t keys[];     // [n_pad]
  __shared__ float scan[2][kMaxChunks];  // Hillis-Steele ping-pong
  __shared__ KeptScratch kept_scratch;
  __shared__ int num_candidates;

  write_candidate_keys(confidence, max_lengths, R, gamma, n_pad, keys, lengths);
  bitonic_sort_descending(keys, n_pad);
  const OwnedPositions o = position_values(keys, sps, R, n_pad, scan, &num_candidates);
  const float theta_init = schedule_mul(static_cast<float>(R), sps[R]);
  const int n = kept_prefix(o, num_candidates, mode, budget, theta_init, kept_scratch);
  write_outputs(o, keys, R, n, theta_init, lengths, admitted, expected, throughput);
}

int next_pow2(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

}  // namespace

cudaError_t launch_schedule_lengths(const float* confidence, const float* sps, const int64_t* max_lengths,
                                    int64_t requests, int64_t gamma, int64_t mode, int64_t budget, int64_t* lengths,
                                    int64_t* admitted, float* expected, float* throughput, cudaStream_t stream) {
  if (requests * gamma > kScheduleMaxCudaCandidates) return cudaErrorInvalidValue;
  const int total = static_cast<int>(requests * gamma);
  const int n_pad = next_pow2(total < 32 ? 32 : total);
  const int threads = n_pad / 2 < 32 ? 32 : (n_pad / 2 > kMaxThreads ? kMaxThreads : n_pad / 2);
  const size_t smem = static_cast<size_t>(n_pad) * sizeof(uint64_t);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(schedule_lengths_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  schedule_lengths_kernel<<<1, threads, smem, stream>>>(confidence, sps, max_lengths, static_cast<int>(requests),
                                                        static_cast<int>(gamma), static_cast<int>(mode), budget, n_pad,
                                                        lengths, admitted, expected, throughput);
  return cudaGetLastError();
}

}  // namespace dspark::cuda
