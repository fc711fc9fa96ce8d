// CUDA pipeline of dspark::verify_chain (SPEC §4, §9, §10), no host sync. Three launches:
//   1. row_pass:   every needed row (target rows 0..ℓ_r; draft rows 0..ℓ_r-1 of sampling requests
//                  with draft_logits) split into chunks of kChunk entries, one block per chunk, all
//                  rows of the batch at once, so HBM sees the whole batch in parallel. Rows are
//                  read as logical 16-byte groups whatever their alignment (cuda/row_groups.cuh).
//                  Sampling rows: branch-free online softmax, one max and one rescale per group;
//                  greedy target rows: the argmax only. Every block finds its request's first
//                  row itself (a block sum of ℓ + 1 over the requests before it). A target row
//                  whose request samples with a filter on (SPEC §9) is done by its chunk-0 block
//                  alone: the sort-free threshold search (cuda/filters.cuh), then the filtered
//                  statistics; its other chunks leave empty partials.
//   2. decide:     one warp per request merges the chunk partials and walks k = 1..ℓ reading
//                  single logits p(x_k), q(x_k); it writes the accepted tokens and, where a
//                  token must still be drawn (rejection residual or bonus), the row to draw from.
//   3. resample:   one block per chunk of each drawing row runs the Gumbel race; blocks combine
//                  with atomicMax on packed (score, index) keys, and the last block of a request
//                  to finish writes the drawn token and num_emitted.
// DSPARK_VERIFY_CHAIN_KERNEL=legacy selects the previous pipeline (kept as the reference the
// CUDA tests compare against): first_rows, thresholds, row_stats (vec_size loads, scalar for the
// whole tensor when rows are not 16-byte aligned), decide, resample, finalize.
// Each target row is read once (the drawing row twice); no [N, V] probabilities are formed.
#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/draft_q.cuh"
#include "cuda/filters.cuh"
#include "cuda/row_groups.cuh"
#include "cuda/verify_chain.h"
#include "dspark/eos.h"

namespace dspark::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 16384;  // row entries per block in row_stats and resample
constexpr int kWarpsPerDecideBlock = 4;
constexpr int kThresholdThreads = 512;

int64_t num_chunks(int64_t vocab) { return (vocab + kChunk - 1) / kChunk; }

// The width of a T row in a launch whose (shared) width class is VEC.
template <typename T, int VEC>
constexpr int min_vec() {
  return VEC < static_cast<int>(16 / sizeof(T)) ? VEC : static_cast<int>(16 / sizeof(T));
}

struct RowPartial {
  SoftmaxStats stats;  // of the scaled logits
  ArgMax argmax;       // of the raw logits
};

// kFromP draws from p itself: the bonus token, or after a draft id outside [0, V), which was
// not drawn from q (SPEC §4: the chain ends there as if ℓ were k - 1).
enum Mode : int32_t { kNothingToDraw = 0, kResidual = 1, kFromP = 2 };

// What the resample pass draws for one request.
struct Decision {
  SoftmaxStats p, q;   // statistics of the drawing row (q: its draft row, if any)
  int64_t target_row;  // row of target_logits
  int64_t draft_row;   // row of the draft values viewed as [R * γ, W]; -1: q one-hot on `rejected`
  int64_t rejected;    // the rejected draft token
  float theta;         // the target row's filter threshold (-inf: none)
  int32_t mode;
  uint32_t position;   // RNG position of the draw
};

struct Workspace {
  int64_t* first_row;        // [R]
  RowPartial* target_part;   // [R, γ + 1, chunks]
  SoftmaxStats* draft_part;  // [R, γ, chunks]
  Decision* decision;        // [R]
  unsigned long long* keys;  // [R, 2]: residual race, plain race
  float* theta;              // [R, γ + 1] filter thresholds of the target rows
  unsigned* done;            // [R] resample blocks finished (the last one writes the token)
};

size_t align_up(size_t n) { return (n + 255) / 256 * 256; }

Workspace carve(void* base, int64_t requests, int64_t gamma, int64_t vocab) {
  const int64_t chunks = num_chunks(vocab);
  char* p = static_cast<char*>(base);
  Workspace w{};
  w.first_row = reinterpret_cast<int64_t*>(p);
  p += align_up(sizeof(int64_t) * requests);
  w.target_part = reinterpret_cast<RowPartial*>(p);
  p += align_up(sizeof(RowPartial) * requests * (gamma + 1) * chunks);
  w.draft_part = reinterpret_cast<SoftmaxStats*>(p);
  p += align_up(sizeof(SoftmaxStats) * requests * gamma * chunks);
  w.decision = reinterpret_cast<Decision*>(p);
  p += align_up(sizeof(Decision) * requests);
  w.keys = reinterpret_cast<unsigned long long*>(p);
  p += align_up(sizeof(unsigned long long) * requests * 2);
  w.theta = reinterpret_cast<float*>(p);
  p += align_up(sizeof(float) * requests * (gamma + 1));
  w.done = reinterpret_cast<unsigned*>(p);
  return w;
}

__device__ __forceinline__ int64_t clamped_length(const int64_t* lengths, int64_t r, int64_t gamma) {
  const int64_t l = lengths[r];
  return l < 0 ? 0 : (l > gamma ? gamma : l);
}

__device__ __forceinline__ RowFilter request_filter(const VerifyChainParams& p, int64_t r) {
  return make_row_filter(p.top_k ? p.top_k[r] : 0, p.top_p ? p.top_p[r] : 1.0f, p.min_p ? p.min_p[r] : 0.0f, p.vocab);
}

// θ of target slot (r, k); -inf without filters.
__device__ __forceinline__ float slot_theta(const VerifyChainParams& p, const Workspace& w, int64_t slot) {
  return (p.top_k || p.top_p || p.min_p) ? w.theta[slot] : -INFINITY;
}

// q of entry j of a draft row (dense: j is the id) with softmax statistics qs of its logits.
template <typename TD>
__device__ __forceinline__ float draft_entry(const VerifyChainParams& p, int64_t draft_row, int64_t j,
                                             const SoftmaxStats& qs, float inv_t) {
  return draft_q_entry(static_cast<const TD*>(p.draft_logits), p.draft_probs, p.draft_ids,
                       draft_row * p.draft_width + j, p.vocab, qs, inv_t);
}

// One block per target slot (r, k): θ of the row when the request samples with a filter on.
template <typename TT, int VEC>
// __maxnreg__(64) for the same reason as row_pass_kernel (the float, VEC = 2 copy spilled at 40).
__global__ void __maxnreg__(64) thresholds_kernel(VerifyChainParams p, Workspace w) {
  const int64_t slot = blockIdx.x, r = slot / (p.gamma + 1), k = slot % (p.gamma + 1);
  const int64_t row = w.first_row[r] + k;
  const float T = p.temperature[r], inv_t = inverse_temperature(T);
  const RowFilter f = request_filter(p, r);
  float theta = -INFINITY;
  if (k <= clamped_length(p.lengths, r, p.gamma) && row < p.rows && !is_greedy(T) && !f.off()) {  // block-uniform
    __shared__ FilterScratch scratch;
    const TT* src = static_cast<const TT*>(p.target_logits) + row * p.vocab;
    theta = block_filter_threshold<VEC>(src, p.vocab, inv_t, f, scratch);
  }
  if (threadIdx.x == 0) w.theta[slot] = theta;
}

// One block: exclusive prefix sum of (clamped ℓ_r + 1) over all requests.
__global__ void first_rows_kernel(const int64_t* __restrict__ lengths, int64_t requests, int64_t gamma,
                                  int64_t* __restrict__ first_row) {
  __shared__ int64_t warp_sums[32];
  __shared__ int64_t carry;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  for (int64_t base = 0; base < requests; base += blockDim.x) {
    const int64_t r = base + threadIdx.x;
    const int64_t mine = r < requests ? clamped_length(lengths, r, gamma) + 1 : 0;
    int64_t incl = mine;
#pragma unroll
    for (int o = 1; o < kWarpSize; o <<= 1) {
      const int64_t up = __shfl_up_sync(0xFFFFFFFFu, incl, o);
      if (lane >= o) incl += up;
    }
    if (lane == kWarpSize - 1) warp_sums[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      int64_t w = lane < static_cast<int>(blockDim.x / kWarpSize) ? warp_sums[lane] : 0;
#pragma unroll
      for (int o = 1; o < kWarpSize; o <<= 1) {
        const int64_t up = __shfl_up_sync(0xFFFFFFFFu, w, o);
        if (lane >= o) w += up;
      }
      warp_sums[lane] = w;  // inclusive scan of warp totals
    }
    __syncthreads();
    const int64_t before = carry + (warp > 0 ? warp_sums[warp - 1] : 0);
    if (r < requests) first_row[r] = before + incl - mine;
    __syncthreads();
    if (threadIdx.x == blockDim.x - 1) carry = before + incl;
    __syncthreads();
  }
}

// Merges the block's partials of chunk `chunk` of slot `slot` and stores them (target slots
// first, then draft slots); all threads of the block call it.
__device__ void store_partial(const Workspace& w, int64_t slot, int64_t chunk, int64_t chunks, int64_t target_slots,
                              RowPartial acc) {
  __shared__ SoftmaxStats scratch_stats[kThreads / kWarpSize];
  __shared__ ArgMax scratch_argmax[kThreads / kWarpSize];
  acc.stats = block_merge(acc.stats, scratch_stats);
  acc.argmax = block_merge(acc.argmax, scratch_argmax);
  if (threadIdx.x != 0) return;
  if (slot < target_slots) {
    w.target_part[slot * chunks + chunk] = acc;
  } else {
    w.draft_part[(slot - target_slots) * chunks + chunk] = acc.stats;
  }
}

// VEC: the vector width of both rows, chosen on the host (vec_size; each row type reads
// min(VEC, 16 / sizeof(T)) elements per load).
template <typename TT, typename TD, int VEC>
__global__ void row_stats_kernel(VerifyChainParams p, Workspace w, int64_t chunks) {
  const int64_t slot = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t target_slots = p.requests * (p.gamma + 1);
  const bool is_target = slot < target_slots;
  const int64_t r = is_target ? slot / (p.gamma + 1) : (slot - target_slots) / p.gamma;
  const int64_t k = is_target ? slot % (p.gamma + 1) : (slot - target_slots) % p.gamma;
  const int64_t len = clamped_length(p.lengths, r, p.gamma);
  const float temperature = p.temperature[r], inv_t = inverse_temperature(temperature);
  const int64_t row = w.first_row[r] + k;
  bool needed;
  if (is_target) {
    needed = k <= len && row < p.rows;
  } else {
    needed = p.draft_logits != nullptr && !is_greedy(temperature) && k < len;
  }
  if (!needed) return;  // uniform across the block
  const int64_t width = is_target ? p.vocab : p.draft_width;
  const int64_t begin = chunk * kChunk;
  const int64_t end = begin + kChunk < width ? begin + kChunk : width;
  RowPartial acc;
  if (is_target) {
    const float theta = slot_theta(p, w, slot);
    const TT* src = static_cast<const TT*>(p.target_logits) + row * p.vocab;
    block_for_each<min_vec<TT, VEC>()>(src, begin, end, [&](float logit, int64_t v) {
      acc.stats.add(filtered(scaled_logit(logit, inv_t), theta));
      acc.argmax.add(logit, v);
    });
  } else if (begin < end) {
    const int64_t draft_row = r * p.gamma + k;
    const TD* src = static_cast<const TD*>(p.draft_logits) + draft_row * p.draft_width;
    const int64_t* ids = p.draft_ids ? p.draft_ids + draft_row * p.draft_width : nullptr;
    block_for_each<min_vec<TD, VEC>()>(src, begin, end, [&](float logit, int64_t j) {
      if (!ids || listed_id(ids[j], p.vocab)) acc.stats.add(scaled_logit(logit, inv_t));
    });
  }
  store_partial(w, slot, chunk, chunks, target_slots, acc);
}

// exp(x) as 2^(x log2 e) with one ex2.approx.ftz: results below 2^-126 flush to 0, which no
// normaliser notices (its largest term is 1). Plain __expf would add three instructions per
// term to keep denormal results.
__device__ __forceinline__ float exp_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.4426950408889634f));
  return y;
}

// One logical group s [G] of scaled (filtered) logits into running statistics: the group max,
// one rescale of the running sum, then the group's terms, with no branch. The normaliser's
// terms use exp_ftz (a few ulp on the terms that carry the sum, which only moves near-ties,
// like any float rounding: SPEC §2 (c)); single probabilities still use expf.
template <int G>
__device__ __forceinline__ void add_group(SoftmaxStats& st, const float (&s)[G]) {
  float group_max = s[0];
#pragma unroll
  for (int j = 1; j < G; ++j) group_max = fmaxf(group_max, s[j]);
  const float m = fmaxf(st.max, group_max);
  const float base = m > -INFINITY ? m : 0.0f;  // all -inf so far: every term is exp(-inf) = 0
  float sum = st.sum * exp_ftz(st.max - base);
#pragma unroll
  for (int j = 0; j < G; ++j) sum += exp_ftz(s[j] - base);
  st.max = m;
  st.sum = sum;
}

// One logical group x [G] of raw logits (entries first..first+G-1) into a running argmax: the
// same winner as ArgMax::add on each entry in order (largest value, lowest index, NaN never),
// with one compare per group unless the group holds a new winner.
template <int G>
__device__ __forceinline__ void add_group(ArgMax& a, const float (&x)[G], int64_t first) {
  float group_max = x[0];
#pragma unroll
  for (int j = 1; j < G; ++j) group_max = fmaxf(group_max, x[j]);  // NaN only if all are NaN
  if (group_max > a.value || (a.index < 0 && group_max == group_max)) {
    int at = G - 1;
#pragma unroll
    for (int j = G - 1; j >= 0; --j) at = x[j] == group_max ? j : at;
    a.value = group_max;
    a.index = first + at;
  }
}

// Statistics of the scaled logits (filtered at θ when FILTER) of the groups that
// groups(visit) visits (a for_each_group call over one row).
template <bool FILTER, int G, typename Groups>
__device__ __forceinline__ void add_stats(SoftmaxStats& st, Groups&& groups, float inv_t, float theta) {
  groups([&](const float (&x)[G], int64_t) {
    float s[G];
#pragma unroll
    for (int j = 0; j < G; ++j) {
      s[j] = scaled_logit(x[j], inv_t);
      if constexpr (FILTER) s[j] = filtered(s[j], theta);
    }
    add_group(st, s);
  });
}

// A target row [V] whose request samples with a filter on, by one block: θ (cuda/filters.cuh's
// search, a dozen or more passes over the row), then the filtered statistics into st; returns θ.
// Aligned rows (V * sizeof a multiple of 16, as for V = 151936) are read as 16-byte groups, the
// other phases entry by entry: one copy of the large search per phase class, not per SHIFT.
template <typename T>
__device__ __forceinline__ float filtered_row_stats(const T* row, int64_t vocab, float inv_t, const RowFilter& f,
                                                    FilterScratch& scratch, SoftmaxStats& st) {
  constexpr int G = kGroup<T>;
  auto run = [&](auto&& groups) {
    auto each = [&](auto&& fn) {
      groups([&fn](const float (&x)[G], int64_t at) {
#pragma unroll
        for (int j = 0; j < G; ++j) fn(x[j], at + j);
      });
    };
    const float theta = block_filter_threshold_each(each, inv_t, f, scratch);
    add_stats<true, G>(st, groups, inv_t, theta);
    return theta;
  };
  if (row_shift(row) == 0) return run([&](auto&& visit) { for_each_group<0>(row, vocab, 0, vocab, visit); });
  return run([&](auto&& visit) { for_each_group_scalar(row, 0, vocab, visit); });
}

// Requests before r own Σ (ℓ + 1) target rows: every thread of the block gets the sum.
__device__ __forceinline__ int64_t block_first_row(const VerifyChainParams& p, int64_t r, int64_t* scratch) {
  int64_t rows = 0;
  for (int64_t i = threadIdx.x; i < r; i += blockDim.x) rows += clamped_length(p.lengths, i, p.gamma) + 1;
  return block_sum(rows, scratch);
}

// Target slot (r, k), chunk `chunk`: the row's partial (argmax for greedy requests, softmax
// statistics otherwise) and, in theta, the row's filter threshold (-inf: none); writes first_row[r].
template <typename TT>
__device__ __forceinline__ RowPartial target_chunk(const VerifyChainParams& p, const Workspace& w, uint32_t r,
                                                   uint32_t k, uint32_t chunk, float T, float inv_t, bool& needed,
                                                   float& theta) {
  __shared__ int64_t rows_scratch[kThreads / kWarpSize];
  __shared__ FilterScratch filter_scratch;
  constexpr int G = kGroup<TT>;
  const int64_t first = block_first_row(p, r, rows_scratch), row = first + k;
  if (k == 0 && chunk == 0 && threadIdx.x == 0) w.first_row[r] = first;
  RowPartial acc;
  needed = k <= clamped_length(p.lengths, r, p.gamma) && row < p.rows;
  if (!needed) return acc;  // uniform across the block
  const TT* src = static_cast<const TT*>(p.target_logits) + row * p.vocab;
  const int64_t begin = chunk * kChunk, end = begin + kChunk < p.vocab ? begin + kChunk : p.vocab;
  const RowFilter f = (p.top_k || p.top_p || p.min_p) && !is_greedy(T) ? request_filter(p, r) : RowFilter{};
  if (!f.off()) {  // the whole row in chunk 0; the other chunks leave empty partials
    if (chunk == 0) theta = filtered_row_stats(src, p.vocab, inv_t, f, filter_scratch, acc.stats);
    return acc;
  }
  dispatch_shift<TT>(row_shift(src), [&](auto shift) {
    auto groups = [&](auto&& visit) { for_each_group<decltype(shift)::value>(src, p.vocab, begin, end, visit); };
    if (is_greedy(T)) {
      groups([&](const float (&x)[G], int64_t at) { add_group(acc.argmax, x, at); });
    } else {
      add_stats<false, G>(acc.stats, groups, inv_t, -INFINITY);
    }
  });
  return acc;
}

// Draft slot (r, k), chunk `chunk`: softmax statistics of the chunk of draft row r * γ + k.
template <typename TD>
__device__ __forceinline__ SoftmaxStats draft_chunk(const VerifyChainParams& p, uint32_t r, uint32_t k, uint32_t chunk,
                                                    float T, float inv_t, bool& needed) {
  constexpr int G = kGroup<TD>;
  SoftmaxStats acc;
  needed = p.draft_logits != nullptr && !is_greedy(T) && k < clamped_length(p.lengths, r, p.gamma);
  const int64_t begin = chunk * kChunk, end = begin + kChunk < p.draft_width ? begin + kChunk : p.draft_width;
  if (!needed || begin >= end) return acc;
  const int64_t draft_row = static_cast<int64_t>(r) * p.gamma + k;
  const TD* src = static_cast<const TD*>(p.draft_logits) + draft_row * p.draft_width;
  if (p.draft_ids) {  // sparse rows hold K << V entries: one entry at a time
    const int64_t* ids = p.draft_ids + draft_row * p.draft_width;
    for_each_group_scalar(src, begin, end, [&](const float (&x)[G], int64_t at) {
      float s[G];
#pragma unroll
      for (int j = 0; j < G; ++j)
        s[j] = at + j < end && listed_id(ids[at + j], p.vocab) ? scaled_logit(x[j], inv_t) : -INFINITY;
      add_group(acc, s);
    });
    return acc;
  }
  dispatch_shift<TD>(row_shift(src), [&](auto shift) {
    auto groups = [&](auto&& visit) { for_each_group<decltype(shift)::value>(src, p.draft_width, begin, end, visit); };
    add_stats<false, G>(acc, groups, inv_t, -INFINITY);
  });
  return acc;
}

// One block per chunk of each (target or draft) slot; see the pipeline at the top.
template <typename TT, typename TD>
// __maxnreg__(64) rather than __launch_bounds__: with launch bounds alone ptxas settled on 48
// registers and spilled 16-28 bytes for 16-bit targets; 64 registers x 256 threads still allow
// 4 blocks (32 warps) per SM.
__global__ void __maxnreg__(64) row_pass_kernel(VerifyChainParams p, Workspace w, int64_t chunks) {
  // 32-bit index arithmetic: the grid has < 2^31 blocks and γ < 65535 (no 64-bit division calls).
  const uint32_t n = static_cast<uint32_t>(chunks), slot = blockIdx.x / n, chunk = blockIdx.x % n;
  const uint32_t target_slots = static_cast<uint32_t>(p.requests * (p.gamma + 1));
  const uint32_t per_target = static_cast<uint32_t>(p.gamma + 1), per_draft = static_cast<uint32_t>(p.gamma);
  const bool is_target = slot < target_slots;
  const uint32_t r = is_target ? slot / per_target : (slot - target_slots) / per_draft;
  const uint32_t k = is_target ? slot % per_target : (slot - target_slots) % per_draft;
  const float T = p.temperature[r], inv_t = inverse_temperature(T);
  bool needed;
  float theta = -INFINITY;
  RowPartial acc;
  if (is_target) {
    acc = target_chunk<TT>(p, w, r, k, chunk, T, inv_t, needed, theta);
  } else {
    acc.stats = draft_chunk<TD>(p, r, k, chunk, T, inv_t, needed);
  }
  if (!needed) return;  // uniform across the block
  if (is_target && chunk == 0 && threadIdx.x == 0 && (p.top_k || p.top_p || p.min_p)) w.theta[slot] = theta;
  store_partial(w, slot, chunk, chunks, target_slots, acc);
}

// Merge the chunk partials of one row across a warp; every lane gets the result.
__device__ RowPartial warp_row(const RowPartial* part, int64_t chunks) {
  RowPartial acc;
  for (int64_t c = threadIdx.x % kWarpSize; c < chunks; c += kWarpSize) {
    acc.stats.merge(part[c].stats);
    acc.argmax.merge(part[c].argmax);
  }
  acc.stats = warp_merge(acc.stats);
  acc.argmax = warp_merge(acc.argmax);
  return acc;
}

__device__ SoftmaxStats warp_stats(const SoftmaxStats* part, int64_t chunks) {
  SoftmaxStats acc;
  for (int64_t c = threadIdx.x % kWarpSize; c < chunks; c += kWarpSize) acc.merge(part[c]);
  return warp_merge(acc);
}

template <typename TT, typename TD>
__global__ void decide_kernel(VerifyChainParams p, Workspace w, int64_t chunks) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerDecideBlock + threadIdx.x / kWarpSize;
  if (r >= p.requests) return;  // whole warps leave together
  const bool leader = threadIdx.x % kWarpSize == 0;
  const int64_t len = clamped_length(p.lengths, r, p.gamma);
  const float T = p.temperature[r], inv_t = inverse_temperature(T);
  const bool greedy = is_greedy(T);
  const int64_t first = w.first_row[r];
  const int64_t* drafts = p.draft_tokens + r * p.gamma;
  int64_t* out = p.out_tokens + r * (p.gamma + 1);
  const TT* target = static_cast<const TT*>(p.target_logits);
  const bool has_q = p.draft_logits != nullptr || p.draft_probs != nullptr;

  Decision d{SoftmaxStats{}, SoftmaxStats{}, -1, -1, -1, -INFINITY, kNothingToDraw, 0};
  int64_t accepted = 0, emitted = -1;
  bool finished = false;  // a rejection, an accepted EOS, or a missing row ended the walk
  for (int64_t k = 1; k <= len && !finished; ++k) {
    const int64_t row = first + k - 1;
    if (row >= p.rows) {  // rows past the end are absent (only without DSPARK_CHECK)
      finished = true;
      break;
    }
    const RowPartial t = warp_row(w.target_part + (r * (p.gamma + 1) + k - 1) * chunks, chunks);
    const int64_t x = drafts[k - 1];
    const bool valid = x >= 0 && x < p.vocab;
    if (greedy) {
      const int64_t best = t.argmax.result();
      if (!valid || x != best) {
        emitted = best;
        finished = true;
        break;
      }
    } else {
      const float theta = slot_theta(p, w, r * (p.gamma + 1) + k - 1);
      if (!valid) {  // not drawn from q_k: draw from p_k itself, as if ℓ were k - 1
        d = Decision{t.stats, SoftmaxStats{}, row, -1, -1, theta, kFromP, static_cast<uint32_t>(k)};
        finished = true;
        break;
      }
      const int64_t draft_row = has_q ? r * p.gamma + k - 1 : -1;
      const SoftmaxStats qs = p.draft_logits ? warp_stats(w.draft_part + draft_row * chunks, chunks) : SoftmaxStats{};
      const float p_x = t.stats.prob(filtered(scaled_logit(to_float(target[row * p.vocab + x]), inv_t), theta));
      float q_x = 1.0f;
      if (has_q) {
        // Dense: entry x. Sparse: the first entry listing x (0 if none), found by the warp.
        int64_t j = x;
        if (p.draft_ids) {
          j = -1;
          const int64_t* ids = p.draft_ids + draft_row * p.draft_width;
          for (int64_t base = 0; base < p.draft_width && j < 0; base += kWarpSize) {
            const int64_t e = base + threadIdx.x % kWarpSize;
            const unsigned hit = __ballot_sync(0xFFFFFFFFu, e < p.draft_width && ids[e] == x);
            if (hit) j = base + __ffs(hit) - 1;
          }
        }
        q_x = j >= 0 ? draft_entry<TD>(p, draft_row, j, qs, inv_t) : 0.0f;
      }
      const float coin = random_uniform(p.seed[r], p.offset[r], Purpose::kChainCoin, static_cast<uint32_t>(k), 0);
      if (!(coin * q_x < p_x)) {
        d = Decision{t.stats, qs, row, draft_row, x, theta, kResidual, static_cast<uint32_t>(k)};
        finished = true;
        break;
      }
    }
    if (leader) out[accepted] = x;
    ++accepted;
    if (is_eos(x, p.eos_ids, p.num_eos)) finished = true;
  }
  if (!finished && first + len < p.rows) {  // every draft accepted: the bonus token
    const RowPartial t = warp_row(w.target_part + (r * (p.gamma + 1) + len) * chunks, chunks);
    if (greedy) {
      emitted = t.argmax.result();
    } else {
      const float theta = slot_theta(p, w, r * (p.gamma + 1) + len);
      d = Decision{t.stats, SoftmaxStats{}, first + len, -1, -1, theta, kFromP, static_cast<uint32_t>(len + 1)};
    }
  }
  if (!leader) return;
  p.num_accepted[r] = accepted;
  if (emitted >= 0) out[accepted] = emitted;
  p.num_emitted[r] = accepted + (emitted >= 0 ? 1 : 0);  // finalize adds the drawn token
  w.decision[r] = d;
  w.keys[2 * r] = 0;
  w.keys[2 * r + 1] = 0;
  w.done[r] = 0;
}

// Writes request r's drawn token from the race keys (all resample blocks of r have finished).
__device__ void emit_drawn(const VerifyChainParams& p, const Workspace& w, int64_t r, const Decision& d) {
  // L2 reads: the keys were last written by other blocks' atomics.
  const uint64_t residual = __ldcg(&w.keys[2 * r]), plain = __ldcg(&w.keys[2 * r + 1]);
  const uint64_t key = (d.mode == kResidual && residual != 0) ? residual : plain;
  const int64_t accepted = p.num_accepted[r];
  p.out_tokens[r * (p.gamma + 1) + accepted] = race_index(key);
  p.num_emitted[r] = accepted + 1;
}

// FINALIZE: the last block of a request to finish calls emit_drawn (no finalize launch).
template <typename TT, typename TD, bool FINALIZE>
__global__ void resample_kernel(VerifyChainParams p, Workspace w, int64_t chunks) {
  const int64_t r = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const Decision d = w.decision[r];
  if (d.mode == kNothingToDraw) return;
  const float inv_t = inverse_temperature(p.temperature[r]);
  const int64_t seed = p.seed[r], offset = p.offset[r];
  const TT* prow = static_cast<const TT*>(p.target_logits) + d.target_row * p.vocab;
  const bool dense_q = d.draft_row >= 0 && !p.draft_ids;
  const int64_t begin = chunk * kChunk;
  const int64_t end = begin + kChunk < p.vocab ? begin + kChunk : p.vocab;
  // A sparse q is zero off its K listed ids: the chunk's listed ids are marked in a shared
  // bitmap (O(K) reads), entries not marked race with their residual weight p_v, and the
  // listed entries race separately below with max(0, p_v - q_v). No dense q is formed.
  __shared__ uint32_t listed[kChunk / 32];
  const bool sparse_q = d.mode == kResidual && d.draft_row >= 0 && p.draft_ids;
  const int64_t* ids = sparse_q ? p.draft_ids + d.draft_row * p.draft_width : nullptr;
  if (sparse_q) {
    for (int i = threadIdx.x; i < kChunk / 32; i += blockDim.x) listed[i] = 0;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < p.draft_width; j += blockDim.x) {
      const int64_t v = ids[j];
      if (v >= begin && v < end) atomicOr(&listed[(v - begin) / 32], 1u << ((v - begin) % 32));
    }
    __syncthreads();
  }
  // Each thread takes groups of four entries, which share one Philox call (chunks start at
  // multiples of 4). Bounded races skip the noise, and for the residual the exps and the log,
  // of entries that cannot win (log p_v bounds log(p_v - q_v)); the winner is unchanged.
  BoundedRace residual, plain;
  const float p_log_norm = d.p.max + logf(d.p.sum);  // log p_v = x_v - p_log_norm
  for (int64_t group = begin + 4 * threadIdx.x; group < end; group += 4 * static_cast<int64_t>(blockDim.x)) {
    const Philox4 bits = random_block(seed, offset, Purpose::kChainResample, d.position, static_cast<uint64_t>(group));
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t v = group + j;
      if (v >= end) break;
      const float xv = filtered(scaled_logit(to_float(prow[v]), inv_t), d.theta);
      plain.add_bits(xv, bits.v[j], v);
      if (d.mode == kResidual && !residual.hopeless(xv - p_log_norm)) {
        float qv;
        if (sparse_q) {
          if ((listed[(v - begin) / 32] >> ((v - begin) % 32)) & 1u) continue;  // raced below
          qv = 0.0f;
        } else if (dense_q) {
          qv = draft_entry<TD>(p, d.draft_row, v, d.q, inv_t);
        } else {
          qv = v == d.rejected ? 1.0f : 0.0f;
        }
        const float pv = d.p.prob(xv);
        residual.add_bits(pv > qv ? logf(pv - qv) : -INFINITY, bits.v[j], v);
      }
    }
  }
  if (sparse_q) {
    for (int64_t j = threadIdx.x; j < p.draft_width; j += blockDim.x) {
      const int64_t v = ids[j];
      if (v < begin || v >= end) continue;
      const float pv = d.p.prob(filtered(scaled_logit(to_float(prow[v]), inv_t), d.theta));
      const float qv = draft_entry<TD>(p, d.draft_row, j, d.q, inv_t);
      const uint32_t b = random_bits(seed, offset, Purpose::kChainResample, d.position, static_cast<uint64_t>(v));
      residual.add_bits(pv > qv ? logf(pv - qv) : -INFINITY, b, v);
    }
  }
  __shared__ uint64_t scratch[kThreads / kWarpSize];
  const uint64_t best_residual = block_max_u64(residual.race.best, scratch);
  const uint64_t best_plain = block_max_u64(plain.race.best, scratch);
  if (threadIdx.x == 0) {
    if (best_residual) atomicMax(&w.keys[2 * r], static_cast<unsigned long long>(best_residual));
    if (best_plain) atomicMax(&w.keys[2 * r + 1], static_cast<unsigned long long>(best_plain));
    if constexpr (FINALIZE) {
      __threadfence();  // this block's keys are visible before its ticket
      if (atomicAdd(&w.done[r], 1u) == static_cast<unsigned>(chunks - 1)) {
        __threadfence();  // and every other block's keys before the read
        emit_drawn(p, w, r, d);
      }
    }
  }
}

__global__ void finalize_kernel(VerifyChainParams p, Workspace w) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= p.requests) return;
  const Decision d = w.decision[r];
  if (d.mode != kNothingToDraw) emit_drawn(p, w, r, d);
}

}  // namespace

size_t verify_chain_workspace_bytes(int64_t requests, int64_t gamma, int64_t vocab) {
  const int64_t chunks = num_chunks(vocab);
  return align_up(sizeof(int64_t) * requests) + align_up(sizeof(RowPartial) * requests * (gamma + 1) * chunks) +
         align_up(sizeof(SoftmaxStats) * requests * gamma * chunks) + align_up(sizeof(Decision) * requests) +
         align_up(sizeof(unsigned long long) * requests * 2) + align_up(sizeof(float) * requests * (gamma + 1)) +
         align_up(sizeof(unsigned) * requests);
}

namespace {

// DSPARK_VERIFY_CHAIN_KERNEL, read once: "legacy" selects the previous six-launch pipeline;
// unset or "default" the three-launch one. Anything else is refused, so a typo never runs
// silently with the kernel the caller did not ask for.
bool legacy_pipeline() {
  static const bool legacy = [] {
    const char* env = std::getenv("DSPARK_VERIFY_CHAIN_KERNEL");
    const std::string value = env ? env : "";
    if (value != "" && value != "default" && value != "legacy")
      throw std::runtime_error("dspark: DSPARK_VERIFY_CHAIN_KERNEL must be unset, 'default' or 'legacy', got '" +
                               value + "'");
    return value == "legacy";
  }();
  return legacy;
}

void launch_legacy(const VerifyChainParams& p, const Workspace& w, int64_t chunks, cudaStream_t stream) {
  const int64_t slots = p.requests * (2 * p.gamma + 1);
  const int64_t decide_blocks = (p.requests + kWarpsPerDecideBlock - 1) / kWarpsPerDecideBlock;
  first_rows_kernel<<<1, 1024, 0, stream>>>(p.lengths, p.requests, p.gamma, w.first_row);
  DSPARK_DISPATCH_FLOAT(p.target_dtype, TT, [&] {
    const int vt = vec_size<TT>(p.target_logits, p.vocab);
    if (p.top_k || p.top_p || p.min_p) {
      dispatch_vec_size<TT>(vt, [&](auto v) {
        thresholds_kernel<TT, decltype(v)::value>
            <<<static_cast<unsigned>(p.requests * (p.gamma + 1)), kThresholdThreads, 0, stream>>>(p, w);
      });
    }
    DSPARK_DISPATCH_FLOAT(p.draft_dtype, TD, [&] {
      // One width for the target and draft rows (chunks start at multiples of kChunk, so every
      // chunk of a row starts aligned); the narrower element type sets the dispatch range.
      const int vec = p.draft_logits ? std::min(vt, vec_size<TD>(p.draft_logits, p.draft_width)) : vt;
      using Narrow = std::conditional_t<(sizeof(TT) < sizeof(TD)), TT, TD>;
      dispatch_vec_size<Narrow>(vec, [&](auto v) {
        row_stats_kernel<TT, TD, decltype(v)::value>
            <<<static_cast<unsigned>(slots * chunks), kThreads, 0, stream>>>(p, w, chunks);
      });
      decide_kernel<TT, TD>
          <<<static_cast<unsigned>(decide_blocks), kWarpsPerDecideBlock * kWarpSize, 0, stream>>>(p, w, chunks);
      resample_kernel<TT, TD, false><<<static_cast<unsigned>(p.requests * chunks), kThreads, 0, stream>>>(p, w, chunks);
    });
  });
  finalize_kernel<<<static_cast<unsigned>((p.requests + 255) / 256), 256, 0, stream>>>(p, w);
}

}  // namespace

cudaError_t launch_verify_chain(const VerifyChainParams& p, void* workspace, cudaStream_t stream) {
  if (p.requests == 0) return cudaSuccess;
  const int64_t chunks = num_chunks(p.vocab);
  const Workspace w = carve(workspace, p.requests, p.gamma, p.vocab);
  const int64_t slots = p.requests * (2 * p.gamma + 1);
  // gridDim.x is at most 2^31 - 1: refuse rather than let the unsigned casts below wrap to a
  // smaller grid that would silently skip rows. (slots * chunks is the largest grid.)
  if (slots * chunks > 0x7FFFFFFF) return cudaErrorInvalidValue;
  if (legacy_pipeline()) {
    launch_legacy(p, w, chunks, stream);
    return cudaGetLastError();
  }
  const int64_t decide_blocks = (p.requests + kWarpsPerDecideBlock - 1) / kWarpsPerDecideBlock;
  DSPARK_DISPATCH_FLOAT(p.target_dtype, TT, [&] {
    DSPARK_DISPATCH_FLOAT(p.draft_dtype, TD, [&] {
      row_pass_kernel<TT, TD><<<static_cast<unsigned>(slots * chunks), kThreads, 0, stream>>>(p, w, chunks);
      decide_kernel<TT, TD>
          <<<static_cast<unsigned>(decide_blocks), kWarpsPerDecideBlock * kWarpSize, 0, stream>>>(p, w, chunks);
      resample_kernel<TT, TD, true><<<static_cast<unsigned>(p.requests * chunks), kThreads, 0, stream>>>(p, w, chunks);
    });
  });
  return cudaGetLastError();
}

}  // namespace dspark::cuda
