// CUDA kernels of dspark::markov_draft_topk (SPEC §10): two launches per round.
//
// 1. select_candidates_kernel, one block per (request, position) row of U: a radix select on
//    the order key of SPEC §10 (race_key(U(v), v): larger value, NaN as -inf, then the lower
//    id). A histogram of the value key's top 12 bits finds the bucket holding the K-th key
//    (a further 12-bit and 8-bit round only when that bucket holds more than kBuffer entries,
//    i.e. heavy ties); one collecting pass then takes every entry above the bucket and keeps
//    the bucket's entries in id order; the survivors are sorted in shared memory (bitonic,
//    at most kBuffer + K keys), never the row. HBM reads the row once: the collecting pass
//    re-reads it from L2 right after the histogram pass.
// 2. markov_draft_topk_kernel, one block per request walking k = 1..γ (requests never wait
//    for each other: no grid barrier): the head and confidence steps shared with the dense
//    kernel (cuda/markov_head.cuh), then one thread per candidate computes P_k . w2[c] over
//    the gathered w2 row as ONE sequential fmaf chain in column order (the dense FMA kernel's
//    chain, so a candidate's logit is the same bits as markov_draft's FMA product; its default
//    tensor-core product may round a logit one unit apart), rounds U_k(c) + that
//    to the storage dtype, and folds it into the block's softmax statistics and Gumbel-max
//    race (noise keyed by the vocabulary id c, argmax for greedy requests). A sampled request
//    with a SPEC §9 filter on first stores the K rounded logits, then finds the threshold over
//    them (block_filter_threshold, cuda/filters.cuh), sets the filtered-out ones to -inf and
//    races over the kept; rows whose filter is off take the one-pass path unchanged.
//
// Design note on tensor cores: the candidates differ per request, so no w2 row is shared by
// two requests and the product is R·γ gathered matrix-vector products of [K, r] x [r]: each
// w2 element read feeds one FMA, the product is bound by the K·r gathered bytes per request
// and position, and an MMA would only add the gather into tensor-core layouts (it pays only
// when several vectors multiply the same rows, as in the dense op's [R, r] x [r, V]).
#include "common/markov_draft_kinds.h"
#include "cuda/common.cuh"
#include "cuda/filters.cuh"
#include "cuda/markov_draft_topk.h"
#include "cuda/markov_head.cuh"

namespace dspark::cuda {
namespace {

using markov::head_step;
using markov::kThreads;
using markov::kWarps;

// ---- 1. candidate selection ------------------------------------------------------------
constexpr int kSelectThreads = 256;
constexpr int kBins = 4096;    // 12-bit digits (the last round uses 8 of them)
constexpr int kBuffer = 2048;  // bucket entries kept for the exact pick (>= kMaxSelectCandidates)
constexpr int kPerThread = 8;  // consecutive ids per thread in the collecting pass
static_assert(kBuffer >= kMaxSelectCandidates, "the bucket buffer must hold K entries");

template <typename T>
__device__ __forceinline__ uint64_t candidate_key(const T* row, int64_t v) {
  const float x = to_float(row[v]);
  return race_key(x == x ? x : -INFINITY, v);
}

// Sorts a[0..n) descending (n a power of two, entries past the data padded with 0, which is
// below every real key). Called by the whole block, after a barrier; ends with one.
__device__ void bitonic_sort_desc(uint64_t* a, int n) {
  for (int size = 2; size <= n; size <<= 1)
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const uint64_t x = a[i], y = a[j];
          const bool descending = (i & size) == 0;
          if (descending ? x < y : x > y) {
            a[i] = y;
            a[j] = x;
          }
        }
      }
      __syncthreads();
    }
}

__device__ __forceinline__ int next_pow2(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

template <typename T>
__global__ void __launch_bounds__(kSelectThreads)
    select_candidates_kernel(const T* __restrict__ base, int64_t V, int64_t K, int64_t* __restrict__ ids) {
  __shared__ unsigned int hist[kBins];
  __shared__ uint64_t buf[kBuffer];                 // the K-th bucket's entries, in id order
  __shared__ uint64_t out[kMaxSelectCandidates];    // the selected keys
  __shared__ unsigned int warp_counts[kSelectThreads / kWarpSize];
  __shared__ unsigned int thread_sums[kSelectThreads];
  __shared__ unsigned int s_digit, s_above, s_bucket, n_out;
  const T* row = base + static_cast<int64_t>(blockIdx.x) * V;
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;

  // Radix rounds on the 32-bit value key (the high word of candidate_key).
  uint32_t prefix = 0, fixed = 0;  // fixed: mask of the key bits decided so far
  int64_t need = K;                // keys still to take among those matching prefix on `fixed`
  constexpr int kShift[3] = {20, 8, 0}, kWidth[3] = {12, 12, 8};  // digits, most significant first
  uint32_t bucket_count = 0;
  for (int round = 0; round < 3; ++round) {
    const int shift = kShift[round], bins = 1 << kWidth[round];
    for (int i = tid; i < bins; i += blockDim.x) hist[i] = 0;
    __syncthreads();
#pragma unroll 4
    for (int64_t v = tid; v < V; v += blockDim.x) {
      const uint32_t key = static_cast<uint32_t>(candidate_key(row, v) >> 32);
      if ((key & fixed) == prefix) atomicAdd(&hist[(key >> shift) & (bins - 1)], 1u);
    }
    __syncthreads();
    // Find the digit g holding the need-th largest key: each thread sums a run of bins, a
    // suffix scan over the runs, then the one thread whose run crosses `need` walks it.
    const int per = (bins + blockDim.x - 1) / blockDim.x;
    unsigned int mine = 0;
    for (int b = tid * per; b < (tid + 1) * per && b < bins; ++b) mine += hist[b];
    thread_sums[tid] = mine;
    __syncthreads();
    for (int o = 1; o < kSelectThreads; o <<= 1) {  // inclusive suffix sums
      const unsigned int add = tid + o < kSelectThreads ? thread_sums[tid + o] : 0u;
      __syncthreads();
      thread_sums[tid] += add;
      __syncthreads();
    }
    const unsigned int from_above = tid + 1 < kSelectThreads ? thread_sums[tid + 1] : 0u;
    if (from_above < need && need <= from_above + mine) {
      unsigned int above = from_above;
      int b = (tid + 1) * per - 1;
      if (b >= bins) b = bins - 1;
      while (above + hist[b] < need) above += hist[b--];
      s_digit = b;
      s_above = above;
      s_bucket = hist[b];
    }
    __syncthreads();
    prefix |= s_digit << shift;
    fixed |= static_cast<uint32_t>(bins - 1) << shift;
    need -= s_above;
    bucket_count = s_bucket;
    __syncthreads();  // every thread has read s_*
    if (bucket_count <= kBuffer) break;  // else (heavy ties) refine on the next digit
  }

  // Collect: keys above the bucket all go to `out` (K - need of them), the bucket's keys to
  // `buf` in id order, the first kBuffer of them. Each thread takes kPerThread consecutive ids
  // of a chunk (loads in flight together), and a block scan of the per-thread bucket counts
  // gives every bucket key its rank in id order.
  if (tid == 0) n_out = 0;
  __syncthreads();
  unsigned int taken = 0;  // bucket keys met so far (block-uniform)
  for (int64_t chunk = 0; chunk < V; chunk += kSelectThreads * kPerThread) {
    const int64_t v0 = chunk + static_cast<int64_t>(tid) * kPerThread;
    uint64_t keys[kPerThread];
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) keys[e] = v0 + e < V ? candidate_key(row, v0 + e) : 0;
    unsigned int in_bucket = 0, count = 0;  // bit e: entry e is in the bucket
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      if (v0 + e >= V) continue;
      const uint32_t masked = static_cast<uint32_t>(keys[e] >> 32) & fixed;
      if (masked > prefix) out[atomicAdd(&n_out, 1u)] = keys[e];
      if (masked == prefix) {
        in_bucket |= 1u << e;
        ++count;
      }
    }
    unsigned int inclusive = count;  // warp inclusive scan of the counts, in thread order
#pragma unroll
    for (int o = 1; o < kWarpSize; o <<= 1) {
      const unsigned int up = __shfl_up_sync(0xFFFFFFFFu, inclusive, o);
      if (lane >= o) inclusive += up;
    }
    if (lane == kWarpSize - 1) warp_counts[warp] = inclusive;
    __syncthreads();
    unsigned int rank = taken + inclusive - count, total = 0;
    for (int w = 0; w < kSelectThreads / kWarpSize; ++w) {
      rank += w < warp ? warp_counts[w] : 0u;
      total += warp_counts[w];
    }
#pragma unroll
    for (int e = 0; e < kPerThread; ++e)
      if (in_bucket >> e & 1u) {
        if (rank < kBuffer) buf[rank] = keys[e];
        ++rank;
      }
    taken += total;
    __syncthreads();  // warp_counts is reused by the next chunk
  }
  // Only the heavy-tie case (last round, bucket > kBuffer: all its keys share one value) drops
  // bucket entries, and then the ones kept are those of the lowest ids, as SPEC §10 asks.
  const int nbuf = taken < kBuffer ? static_cast<int>(taken) : kBuffer;
  const int nb = next_pow2(nbuf);
  for (int i = nbuf + tid; i < nb; i += blockDim.x) buf[i] = 0;
  __syncthreads();
  bitonic_sort_desc(buf, nb);
  const int64_t above = K - need;
  for (int64_t i = tid; i < need; i += blockDim.x) out[above + i] = buf[i];
  const int nk = next_pow2(static_cast<int>(K));
  for (int i = static_cast<int>(K) + tid; i < nk; i += blockDim.x) out[i] = 0;
  __syncthreads();
  bitonic_sort_desc(out, nk);
  int64_t* dst = ids + static_cast<int64_t>(blockIdx.x) * K;
  for (int64_t j = tid; j < K; j += blockDim.x) dst[j] = race_index(out[j]);
}

// ---- 2. the pruned draft -----------------------------------------------------------------

// P . w2[c] as one sequential fmaf chain over the columns: the arithmetic of the dense
// kernel's logits_step for vocabulary row c, so both ops give a candidate the same logit.
template <typename T>
__device__ __forceinline__ float candidate_dot(const T* __restrict__ wrow, const float* P, int64_t r) {
  float acc = 0.0f;
  constexpr int kVec = 16 / sizeof(T);
  int64_t j = 0;
  if ((r * static_cast<int64_t>(sizeof(T))) % 16 == 0 && reinterpret_cast<uintptr_t>(wrow) % 16 == 0) {
    for (; j < r; j += kVec) {  // 16-byte loads, same column order
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(wrow + j));
      const T* w = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < kVec; ++i) acc = fmaf(to_float(w[i]), P[j + i], acc);
    }
  }
  for (; j < r; ++j) acc = fmaf(to_float(wrow[j]), P[j], acc);
  return acc;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) markov_draft_topk_kernel(MarkovDraftTopkParams params) {
  extern __shared__ __align__(16) float smem_f[];  // [3r] head scratch, then [r] P_k
  __shared__ __align__(16) unsigned char red[kWarps * 16];
  __shared__ int64_t x_shared;
  __shared__ float xt_shared;  // scaled logit of the winner
  const MarkovDraftParams& p = params.dense;
  const int64_t q = blockIdx.x, G = p.gamma, V = p.vocab, r = p.rank, K = params.num_candidates;
  float* Ps = smem_f + 3 * r;
  const T* w2 = static_cast<const T*>(p.w2);
  const T* U = static_cast<const T*>(p.base_logits);
  T* out = static_cast<T*>(p.draft_logits);
  const float temp = p.temperature[q], inv_t = inverse_temperature(temp);
  const bool greedy = is_greedy(temp);  // block-uniform
  const int64_t seed = p.seed[q], offset = p.offset[q];
  // Whether a sampled request filters; the filter itself is re-read where it is used, so that
  // no register holds it across the whole kernel (it was spilled around the division calls).
  const bool filter = !greedy && !markov::request_filter(p, q, K).off();  // block-uniform
  __shared__ FilterScratch fsh;
  int64_t prev = p.anchor[q];
  prev = prev < 0 ? 0 : (prev >= V ? V - 1 : prev);  // SPEC §2: never read out of bounds
  for (int64_t k = 1; k <= G; ++k) {
    head_step<T>(p, q, k, prev, smem_f);  // ends with a barrier: head_vector[q] is visible
    for (int64_t i = threadIdx.x; i < r; i += blockDim.x) Ps[i] = p.head_vector[q * r + i];
    __syncthreads();
    const int64_t row = q * G + k - 1;
    const int64_t* ids = params.draft_ids + row * K;
    SoftmaxStats st;
    Race race;
    float mine = -INFINITY;  // scaled logit of this thread's race leader
    // Folds the entry of vocabulary id c with scaled (or, greedy, raw) logit x into the race.
    auto fold = [&](int64_t c, float x) {
      const uint64_t before = race.best;
      if (greedy) {
        race.add(x, 0.0f, c);  // argmax: NaN/-inf never win, ties -> lowest id
      } else {
        st.add(x);
        if (race_candidate(x))  // a filtered-out entry (-inf) needs no noise
          race.add(x,
                   gumbel_from_bits(random_bits(seed, offset, Purpose::kDraftSample, static_cast<uint32_t>(k),
                                                static_cast<uint64_t>(c))),
                   c);
      }
      if (race.best != before) mine = x;
    };
    auto candidate = [&](int64_t j) {
      const int64_t c = ids[j];
      return c < 0 ? 0 : (c >= V ? V - 1 : c);
    };
    for (int64_t j = threadIdx.x; j < K; j += blockDim.x) {
      const int64_t c = candidate(j);
      const T rounded = from_float<T>(to_float(U[row * V + c]) + candidate_dot(w2 + c * r, Ps, r));
      out[row * K + j] = rounded;
      const float lr = to_float(rounded);
      if (!filter) fold(c, greedy ? lr : scaled_logit(lr, inv_t));
    }
    if (filter) {  // SPEC §9: the threshold needs the whole row, then the race over the kept
      __syncthreads();  // the row's rounded logits are visible to the block
      const float theta = block_filter_threshold<1, Load::kL2>(out + row * K, K, inv_t, markov::request_filter(p, q, K),
                                                               fsh);
      for (int64_t j = threadIdx.x; j < K; j += blockDim.x) {
        const float s = scaled_logit(to_float(out[row * K + j]), inv_t);
        if (!(s >= theta)) out[row * K + j] = from_float<T>(-INFINITY);
        fold(candidate(j), filtered(s, theta));
      }
    }
    const uint64_t key = block_max_u64(race.best, reinterpret_cast<uint64_t*>(red));
    if (!greedy) st = block_merge(st, reinterpret_cast<SoftmaxStats*>(red));
    if (key == 0 && threadIdx.x == 0) {  // no finite logit: the first candidate (as the CPU)
      x_shared = ids[0] < 0 ? 0 : (ids[0] >= V ? V - 1 : ids[0]);
      xt_shared = -INFINITY;
    } else if (key != 0 && race.best == key) {  // keys are unique (they hold the id): one writer
      x_shared = race_index(key);
      xt_shared = mine;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      const float xt = xt_shared;
      p.tokens[row] = x_shared;
      p.token_logprob[row] = greedy                              ? 0.0f
                             : (st.sum > 0.0f && xt > -INFINITY) ? (xt - st.max) - logf(st.sum)
                                                                 : -INFINITY;
    }
    prev = x_shared;
    __syncthreads();  // x_shared / xt_shared are rewritten at the next position
  }
}

}  // namespace

cudaError_t launch_select_candidates(DType dtype, const void* base_logits, int64_t rows, int64_t vocab,
                                     int64_t num_candidates, int64_t* draft_ids, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return DSPARK_DISPATCH_FLOAT(dtype, T, [&]() -> cudaError_t {
    select_candidates_kernel<T><<<static_cast<unsigned int>(rows), kSelectThreads, 0, stream>>>(
        static_cast<const T*>(base_logits), vocab, num_candidates, draft_ids);
    return cudaGetLastError();
  });
}

cudaError_t launch_markov_draft_topk(const MarkovDraftTopkParams& params, cudaStream_t stream) {
  const MarkovDraftParams& p = params.dense;
  if (p.requests == 0 || p.gamma == 0) return cudaSuccess;
  const size_t smem = static_cast<size_t>(4 * p.rank) * sizeof(float);
  return DSPARK_DISPATCH_FLOAT(p.dtype, T, [&]() -> cudaError_t {
    markov_draft_topk_kernel<T><<<static_cast<unsigned int>(p.requests), kThreads, smem, stream>>>(params);
    return cudaGetLastError();
  });
}

}  // namespace dspark::cuda
