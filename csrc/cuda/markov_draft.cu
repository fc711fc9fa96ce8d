// CUDA kernel of dspark::markov_draft (SPEC §3): the whole block of γ positions in ONE
// cooperative launch. The grid (all blocks co-resident, sized by occupancy) runs these phases
// per position k, separated by grid-wide barriers:
//
//   A1(k) one block per request (request q -> block q mod grid): merge the per-tile partials of
//         position k-1, in tile order, into x_{k-1} and log q_{k-1}(x_{k-1}) (written to the outputs), or,
//         for a sampled request with a SPEC §9 filter on, find the row's threshold and race over
//         the filtered row (filtered_position). Vanilla head (and every head in the legacy
//         kernel): the same block then gathers e_k = w1[x_{k-1}] and runs the head into the
//         [R, r] head-vector scratch, and the confidence c_k (markov_head.cuh head_step).
//   A2(k) gated / RNN head in the default and fma kernels, after its own barrier: every warp of the grid
//         takes a contiguous range of (row i, request q) units and computes row i's dot
//         products (gated: r rows of d + r; RNN: 3r rows of 2r + d, and the state), plus one
//         confidence unit per request (markov_head.cuh head_units), instead of one SM reading
//         all 2-7 MB of head weights per request and position (d = 4096). Same arithmetic as
//         head_step, so the same bits; the RNN state is double-buffered. The vanilla head has
//         no A2 (and no extra barrier); at k = 1 A1 has nothing to draw and its barrier is skipped.
//   B(k)  every block owns V-tiles of 32 vocabulary rows: it stages w2 tiles in shared memory
//         ONCE per position, then for every request (32 per pass, 4 per warp) computes
//         L = U_k + w2_tile · P_q,
//         rounds it to the storage dtype, writes draft_logits, and folds the rounded value
//         into that request's softmax max/sum and Gumbel-max race (argmax for greedy), kept
//         as one partial per (tile, request); filtered requests only store here.
//
// w2 is therefore read once per position for the whole batch; nothing float32 of size
// [R, γ, V] is ever written. Every dot product of a request runs in one fixed order inside
// the kernel (no cuBLAS pre-pass whose algorithm could change with R), so a request's results
// never depend on its batch; nor does the shape of the reduction of its softmax statistics
// (per 32-row tile, then in tile order), so token_logprob is batch-invariant to the bit too. Mirrors
// csrc/cpu/markov_draft.cpp, whose tests validate the algorithm; cross-block data is read with __ldcg (L2) after the
// barriers.
//
// Three phase-B variants, chosen on the host once per process (DSPARK_MARKOV_DRAFT_KERNEL):
// - default (logits_step_tiled<T, true>, bf16 / fp16 with r % 16 == 0): the [R, r] x [r, V]
//   product on the tensor cores (mma.sync m16n8k16 from ldmatrix, P split into two 16-bit
//   halves, see mma_product) into shared memory, then the FMA kernel's epilogue; a logit may
//   round one unit of T apart from the FMA kernel's (SPEC §2 (c)).
// - fma (logits_step_tiled<T, false>; the default for float32): cp.async double-buffered,
//   swizzled tiles; CUDA-core FMAs, four requests per w2 value; a block computes
//   m = 8 / ceil(min(R, 32) / 4) tiles at once so every warp works at small R; one Philox call
//   per four vocabulary ids, shared by warp shuffles.
// - legacy (logits_step_legacy): the first kernel, one tile at a time staged synchronously
//   into padded rows, one Philox call per element; also used when w2 rows are not a multiple
//   of 16 bytes. fma and legacy give the same bits (tests compare them).
// The variant never depends on R, so a request's results never depend on its batch.
//
// Resident w2 (when it fits): each block always owns the same tiles (tile = block + i·grid), so
// when a block's tiles fit in its shared memory they are staged at position 1 and reused at
// positions 2..γ: HBM sees w2 once per round instead of γ times (V·r ≤ ~ (SMs · 200 KB) / 2
// bytes in bf16, e.g. V = 32000, r = 256). Otherwise tiles are re-staged per position.
//
// Left for later: spreading the filtered draw (one block per request) over the grid.
#include <cooperative_groups.h>

#include "common/markov_draft_kinds.h"
#include "cuda/common.cuh"
#include "cuda/filters.cuh"
#include "cuda/markov_draft.h"
#include "cuda/markov_head.cuh"
#include "cuda/tensor_core.cuh"

namespace cg = cooperative_groups;

namespace dspark::cuda {
namespace {

using markov::head_step;
using markov::kThreads;
using markov::kWarps;

constexpr int kTileV = kMarkovTileRows;  // vocabulary rows per tile: one per lane
static_assert(kTileV == kWarpSize, "a tile row per lane");
constexpr int kReqPerWarp = 4;                // requests per warp: each w2 value read from
                                              // shared memory feeds four FMAs
constexpr int kReqChunk = kWarps * kReqPerWarp;  // requests per pass over a tile (32)

// Shared memory layout: [w2 tile slots, T][scratch, float]. A staged w2 row is padded by one
// 32-bit word so lanes reading column j of 32 different rows hit 32 different banks.
template <typename T>
__host__ __device__ inline int64_t staged_stride(int64_t rank) {
  return rank + static_cast<int64_t>(4 / sizeof(T));  // elements of T per staged row
}
template <typename T>
__host__ __device__ inline int64_t tile_slot_bytes(int64_t rank) {
  return (kTileV * staged_stride<T>(rank) * static_cast<int64_t>(sizeof(T)) + 15) / 16 * 16;
}
// The default kernel's tiles are unpadded (swizzled instead, see logits_step_tiled).
template <typename T>
__host__ __device__ inline int64_t swizzled_tile_bytes(int64_t rank) {
  return kTileV * rank * static_cast<int64_t>(sizeof(T));
}
// Bytes of the w2 tiles in front of the scratch: the legacy kernel's padded slot (or its
// resident tiles); the default kernel's resident tiles, or two buffers of `subtiles` tiles.
template <typename T>
__host__ __device__ inline int64_t tile_region_bytes(int64_t rank, int resident_tiles, int subtiles, bool legacy) {
  if (legacy) return (resident_tiles > 0 ? resident_tiles : 1) * tile_slot_bytes<T>(rank);
  return (resident_tiles > 0 ? resident_tiles : 2 * subtiles) * swizzled_tile_bytes<T>(rank);
}
// Scratch: phase B's head vectors of a request chunk and their 1/T, or phase A's
// [e_k ; s_{k-1} ; e_k].
__host__ __device__ inline int64_t scratch_bytes(int64_t rank) {
  const int64_t b = kReqChunk * rank + kReqChunk, a = 3 * rank;
  return (a > b ? a : b) * static_cast<int64_t>(sizeof(float));
}

// After the scratch, the products w2[v] . P of a request chunk and a group of `subtiles` tiles,
// C [kReqChunk, subtiles * kTileV + kCPad] float: written by mma_product (tensor cores) or
// stage_products (FMA kernels), read by fold_tile. Rows padded by 4 floats: the fragment stores
// of mma_product (8 rows x 4 request pairs) hit 32 banks, and rows stay 16-byte aligned for
// fold_tile's 16-byte loads.
constexpr int kCPad = 4;
__host__ __device__ inline int64_t product_bytes(int subtiles) {
  return static_cast<int64_t>(kReqChunk) * (subtiles * kTileV + kCPad) * static_cast<int64_t>(sizeof(float));
}

// SPEC §9 filter of a sampled request on its draft-logit row at position k, run by the block that
// owns request q in phase A (the threshold needs the whole row, which every block's phase B
// wrote): θ over the rounded row (read through L2: written in this launch), then one pass that
// sets the filtered-out entries to -inf and folds the kept ones into the block's softmax
// statistics and Gumbel-max race. One Philox call per four vocabulary ids (SPEC §2: ids 4g..4g+3
// share a counter). Returns the block-reduced statistics and race key.
template <typename T>
__device__ void filtered_position(const MarkovDraftParams& p, int64_t q, int64_t k, const RowFilter& filter,
                                  float inv_t, SoftmaxStats* stats, uint64_t* key, unsigned char* red,
                                  FilterScratch& fsh) {
  const int64_t V = p.vocab;
  T* row = static_cast<T*>(p.draft_logits) + (q * p.gamma + k - 1) * V;
  // 16-byte loads for 16-bit logits; 8-byte loads for float32 (four float4 loads in flight per
  // thread pushed the float kernel past its 128 registers).
  constexpr int kVec = sizeof(T) == 4 ? 2 : 16 / sizeof(T);
  const float theta = (V * static_cast<int64_t>(sizeof(T))) % (kVec * sizeof(T)) == 0  // aligned rows: wide loads
                          ? block_filter_threshold<kVec, Load::kL2>(row, V, inv_t, filter, fsh)
                          : block_filter_threshold<1, Load::kL2>(row, V, inv_t, filter, fsh);
  const int64_t seed = p.seed[q], offset = p.offset[q];
  SoftmaxStats st;
  BoundedRace race;  // skips the noise of entries that cannot beat this thread's winner
  for (int64_t v0 = 4 * static_cast<int64_t>(threadIdx.x); v0 < V; v0 += 4 * static_cast<int64_t>(blockDim.x)) {
    float x[4];
    bool hopeful = false;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      x[e] = -INFINITY;
      const int64_t v = v0 + e;
      if (v >= V) continue;
      const float s = scaled_logit(to_float(__ldcg(row + v)), inv_t);
      if (!(s >= theta)) row[v] = from_float<T>(-INFINITY);
      x[e] = filtered(s, theta);
      st.add(x[e]);
      hopeful = hopeful || !race.hopeless(x[e]);
    }
    // Filtered-out entries (most of the row under top-k / top-p) and entries that cannot win
    // need no noise: the Philox call and the logarithms run only for the others.
    if (!hopeful) continue;
    const Philox4 noise = random_block(seed, offset, Purpose::kDraftSample, static_cast<uint32_t>(k),
                                       static_cast<uint64_t>(v0));
#pragma unroll
    for (int e = 0; e < 4; ++e) race.add_bits(x[e], noise.v[e], v0 + e);  // e constant: noise.v in registers
  }
  *key = block_max_u64(race.race.best, reinterpret_cast<uint64_t*>(red));
  *stats = block_merge(st, reinterpret_cast<SoftmaxStats*>(red));
}

// Phase A, first half: the draw of position k (1-based) for request q, from the per-block
// partials of phase B, or, for a sampled request with a SPEC §9 filter on, from
// filtered_position; writes tokens[q, k-1] and token_logprob[q, k-1]; returns x_k to every
// thread of the block.
template <typename T>
__device__ int64_t finish_position(const MarkovDraftParams& p, int64_t q, int64_t k, int64_t* x_shared,
                                   unsigned char* red, FilterScratch& fsh) {
  const int64_t tiles = (p.vocab + kTileV - 1) / kTileV;  // partials of the request, one per tile
  const float temp = p.temperature[q], inv_t = inverse_temperature(temp);
  const RowFilter filter = markov::request_filter(p, q, p.vocab);
  SoftmaxStats st;
  uint64_t key = 0;
  if (!is_greedy(temp) && !filter.off()) {  // block-uniform
    filtered_position<T>(p, q, k, filter, inv_t, &st, &key, red, fsh);
  } else {
    for (int64_t j = threadIdx.x; j < tiles; j += blockDim.x) {  // a fixed order: tiles and blockDim only
      SoftmaxStats o;
      o.max = __ldcg(p.part_max + q * tiles + j);
      o.sum = __ldcg(p.part_sum + q * tiles + j);
      st.merge(o);
      const uint64_t kj = __ldcg(p.part_key + q * tiles + j);
      key = kj > key ? kj : key;
    }
    st = block_merge(st, reinterpret_cast<SoftmaxStats*>(red));
    key = block_max_u64(key, reinterpret_cast<uint64_t*>(red));
  }
  if (threadIdx.x == 0) {
    int64_t x = race_index(key);
    x = x < 0 ? 0 : (x >= p.vocab ? p.vocab - 1 : x);
    float logprob = 0.0f;
    if (!is_greedy(temp)) {  // the row holds the filtered logits by now (block barrier above)
      const T* row = static_cast<const T*>(p.draft_logits) + (q * p.gamma + k - 1) * p.vocab;
      const float xt = scaled_logit(to_float(__ldcg(row + x)), inv_t);
      logprob = (st.sum > 0.0f && xt > -INFINITY) ? (xt - st.max) - logf(st.sum) : -INFINITY;
    }
    p.tokens[q * p.gamma + k - 1] = x;
    p.token_logprob[q * p.gamma + k - 1] = logprob;
    *x_shared = x;
  }
  __syncthreads();
  const int64_t x = *x_shared;
  __syncthreads();
  return x;
}

// Four consecutive staged w2 values as float (p 4-byte aligned for the 16-bit types: rows
// start on 32-bit words and j is a multiple of 4).
__device__ __forceinline__ void load4(const float* p, float* w) {
  w[0] = p[0];
  w[1] = p[1];
  w[2] = p[2];
  w[3] = p[3];
}
__device__ __forceinline__ void load4(const __nv_bfloat16* p, float* w) {
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p + 2));
  w[0] = a.x, w[1] = a.y, w[2] = b.x, w[3] = b.y;
}
__device__ __forceinline__ void load4(const __half* p, float* w) {
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(p));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(p + 2));
  w[0] = a.x, w[1] = a.y, w[2] = b.x, w[3] = b.y;
}

constexpr int kStageBatch = 4;  // 16-byte loads in flight per thread while staging

// Copies `total` 16-byte words with kStageBatch loads in flight per thread: load(c) reads word
// c, store(c, word) writes it (staging w2 tiles and head vectors share it).
template <typename Load16, typename Store16>
__device__ __forceinline__ void batched_copy(int64_t total, Load16 load, Store16 store) {
  const int64_t step = static_cast<int64_t>(blockDim.x);
  for (int64_t base = threadIdx.x; base < total; base += kStageBatch * step) {
    uint4 buf[kStageBatch];
#pragma unroll
    for (int u = 0; u < kStageBatch; ++u)
      if (base + u * step < total) buf[u] = load(base + u * step);
#pragma unroll
    for (int u = 0; u < kStageBatch; ++u)
      if (base + u * step < total) store(base + u * step, buf[u]);
  }
}

// Copies a [rows, r] tile of w2 (global, row-major) into shared memory rows of
// staged_stride<T>(r) elements. 16-byte loads when rows are 16-byte multiples and the source
// is aligned; element copies otherwise.
template <typename T>
__device__ __forceinline__ void stage_tile(const T* src, T* dst, int64_t rows, int64_t r) {
  const int64_t row_bytes = r * static_cast<int64_t>(sizeof(T));
  if (row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0) {
    const int64_t per_row = row_bytes / 16;
    const int64_t stride_words = staged_stride<T>(r) * static_cast<int64_t>(sizeof(T)) / 4;
    const uint4* s4 = reinterpret_cast<const uint4*>(src);
    uint32_t* d = reinterpret_cast<uint32_t*>(dst);
    batched_copy(
        rows * per_row, [&](int64_t c) { return __ldg(s4 + c); },
        [&](int64_t c, const uint4& w) {
          const int64_t row = c / per_row, col = c - row * per_row;
          uint32_t* out = d + row * stride_words + col * 4;  // rows padded by one word: 4-byte stores
          out[0] = w.x;
          out[1] = w.y;
          out[2] = w.z;
          out[3] = w.w;
        });
  } else {
    const int64_t stride = staged_stride<T>(r);
    for (int64_t idx = threadIdx.x; idx < rows * r; idx += blockDim.x) {
      const int64_t row = idx / r, col = idx - row * r;
      dst[row * stride + col] = src[idx];
    }
  }
}

// Copies n floats of the head-vector scratch (written by other blocks before the barrier;
// read through L2 with __ldcg) into shared memory.
__device__ __forceinline__ void load_head_vectors(const float* src, float* dst, int64_t n) {
  if (n % 4 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0) {
    const uint4* s4 = reinterpret_cast<const uint4*>(src);
    uint4* d4 = reinterpret_cast<uint4*>(dst);
    batched_copy(n / 4, [&](int64_t c) { return __ldcg(s4 + c); }, [&](int64_t c, const uint4& w) { d4[c] = w; });
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = __ldcg(src + i);
  }
}

// Loads the chunk of requests c0 .. c0 + nreq - 1 into ps: their head vectors [nreq, r], then at
// ps + kReqChunk * r their 1/T (one division per request and position, none per element).
__device__ __forceinline__ void load_chunk(const MarkovDraftParams& p, int64_t c0, int64_t nreq, float* ps) {
  load_head_vectors(p.head_vector + c0 * p.rank, ps, nreq * p.rank);
  for (int64_t i = threadIdx.x; i < nreq; i += blockDim.x)
    ps[kReqChunk * p.rank + i] = inverse_temperature(p.temperature[c0 + i]);
}

// Stores the statistics and race key of request q over tile `tile` (32 vocabulary rows) as that
// tile's partial (one lane; each (tile, request) has one writer per position). Partials per
// tile, merged by phase A in tile order, make the reduction's shape depend on V alone: never on
// R, the grid or the sub-tiles, so token_logprob is batch-invariant to the bit.
__device__ __forceinline__ void store_partial(const MarkovDraftParams& p, int64_t tile, int64_t q,
                                              const SoftmaxStats& st, uint64_t key) {
  const int64_t at = q * ((p.vocab + kTileV - 1) / kTileV) + tile;
  p.part_max[at] = st.max;
  p.part_sum[at] = st.sum;
  p.part_key[at] = key;
}

// The end of a warp's tile (rows v0 .. v0 + 31) for its four requests c0 + local0 + i (i <
// kReqPerWarp; those >= nreq idle; 1/T at inv_ts[local0 + i]), with the products w2[v] . P at
// products[i * stride + v - v0] (shared memory). Lane l takes request i = l / 8 and rows
// v0 + 4 (l % 8) .. + 3: it rounds U + product to T, writes draft_logits, and the 8 lanes of a
// request reduce the rounded values into tile v0 / 32's partial: the argmax for greedy requests,
// softmax statistics and the Gumbel race for sampled ones; a sampled request with a SPEC §9
// filter on only stores (its draw needs the whole row's threshold and runs in phase A). A
// lane's four ids share one Philox call (SPEC §2: ids 4g..4g+3 share a counter), no shuffles;
// LEGACY: one call per id (the first kernel; the same numbers). Four values per lane and an
// 8-lane butterfly: a quarter of the reductions of one value per lane. Every lane calls it.
//
// `race`: this lane's Gumbel race for its request at this position, which the caller keeps
// across the tiles of a position while the lane keeps its request (a fresh one otherwise). As a
// BoundedRace it skips the two logarithms of an entry that cannot beat the running winner
// (dspark/sampling.h), and fold_tile skips the lane's Philox call when none of its four entries
// can. The tile's partial key is the running winner (this tile's and earlier ones'), so phase A's
// maximum over the tiles is the position's winner: every output is unchanged, and most of a
// peaked row costs no noise.
template <typename T, bool LEGACY>
__device__ __forceinline__ void fold_tile(const MarkovDraftParams& p, int64_t k, int64_t c0, int64_t local0,
                                          int64_t nreq, int64_t v0, const float* products, int stride,
                                          const float* inv_ts, BoundedRace& race, int lane) {
  const int64_t V = p.vocab, G = p.gamma;
  const int i = lane / 8, part = lane % 8;
  const int64_t q = c0 + local0 + i, first = v0 + 4 * part;  // this lane's request and first row
  const T* U = static_cast<const T*>(p.base_logits);
  T* out = static_cast<T*>(p.draft_logits);
  const bool active = local0 + i < nreq;
  const bool greedy = active && is_greedy(p.temperature[q]);
  const bool has_filters = p.top_k != nullptr || p.top_p != nullptr || p.min_p != nullptr;
  // Sampled with every filter off: the race runs here.
  const bool draws = active && !greedy && !(has_filters && !markov::request_filter(p, q, V).off());
  const float inv_t = draws ? inv_ts[local0 + i] : 0.0f;
  float x[4];  // scaled rounded logits of a sampled request; -inf: no entry
  const float4 pv = *reinterpret_cast<const float4*>(products + i * stride + 4 * part);  // 16-byte aligned
  const float prod[4] = {pv.x, pv.y, pv.z, pv.w};
  Race argmax;           // greedy
  bool hopeful = false;  // some entry may win: the noise is needed
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    x[e] = -INFINITY;
    const int64_t v = first + e;
    if (!active || v >= V) continue;
    const int64_t o = (q * G + k - 1) * V + v;
    const T rounded = from_float<T>(to_float(U[o]) + prod[e]);
    out[o] = rounded;
    if (greedy) argmax.add(to_float(rounded), 0.0f, v);  // NaN/-inf never win, ties -> lowest
    if (!draws) continue;
    x[e] = scaled_logit(to_float(rounded), inv_t);
    hopeful = hopeful || !race.hopeless(x[e]);
  }
  if (hopeful) {  // the Philox call too is skipped when no entry can win
    Philox4 noise{};
    if (!LEGACY)
      noise = random_block(p.seed[q], p.offset[q], Purpose::kDraftSample, static_cast<uint32_t>(k),
                           static_cast<uint64_t>(first));
#pragma unroll
    for (int e = 0; e < 4; ++e) {  // e is a constant after unrolling: noise.v stays in registers
      const int64_t v = first + e;
      race.add_bits(x[e],
                    LEGACY ? random_bits(p.seed[q], p.offset[q], Purpose::kDraftSample, static_cast<uint32_t>(k),
                                         static_cast<uint64_t>(v))
                           : noise.v[e],
                    v);
    }
  }
  // Every lane takes part in the butterflies (full-mask shuffles), whatever its request.
  const SoftmaxStats st = group_stats<8>(x);
  const uint64_t key = warp_reduce<8>(greedy ? argmax.best : race.race.best, Max{});
  if (part == 0 && (greedy || draws)) store_partial(p, v0 / kTileV, q, st, key);
}

// A warp's products of one tile, acc[i] of request local0 + i for row `lane` (registers of the
// FMA kernels), into products[(local0 + i) * stride + lane], where fold_tile reads them
// transposed: only this warp touches these entries, so warp barriers suffice.
__device__ __forceinline__ void stage_products(const float (&acc)[kReqPerWarp], float* products, int stride,
                                               int64_t local0, int lane) {
  __syncwarp();  // the warp's previous fold_tile has read its entries
#pragma unroll
  for (int i = 0; i < kReqPerWarp; ++i) products[(local0 + i) * stride + lane] = acc[i];
  __syncwarp();
}

// Dot products w2[v] . P_q of the padded (legacy) layout for the warp's four requests (rows of
// ps past nreq hold stale values; their results are never used). Each output is one sequential
// fmaf chain over j, whatever the batch: batch-invariant.
template <typename T>
__device__ __forceinline__ void dot4_padded(const T* wrow, const float* prow, int64_t r, float* acc) {
  int64_t j = 0;
  if (r % 4 == 0) {  // four columns per step: paired w2 loads, 16-byte broadcast P loads
    for (; j < r; j += 4) {
      float w[4];
      load4(wrow + j, w);
#pragma unroll
      for (int i = 0; i < kReqPerWarp; ++i) {
        const float4 pv = *reinterpret_cast<const float4*>(prow + i * r + j);
        acc[i] = fmaf(w[0], pv.x, acc[i]);  // same j order as the scalar loop
        acc[i] = fmaf(w[1], pv.y, acc[i]);
        acc[i] = fmaf(w[2], pv.z, acc[i]);
        acc[i] = fmaf(w[3], pv.w, acc[i]);
      }
    }
  }
  for (; j < r; ++j) {
    const float w = to_float(wrow[j]);
#pragma unroll
    for (int i = 0; i < kReqPerWarp; ++i) acc[i] = fmaf(w, prow[i * r + j], acc[i]);
  }
}

// Phase B of the legacy kernel at position k: this block's V-tiles against every request, one
// tile at a time, staged synchronously into padded rows; warp w takes requests 4w..4w+3 of
// each 32-request chunk (at R <= 4 only warp 0 computes).
template <typename T>
__device__ void logits_step_legacy(const MarkovDraftParams& p, int64_t k, unsigned char* smem_raw) {
  const int64_t R = p.requests, V = p.vocab, r = p.rank;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t stride = staged_stride<T>(r);
  const int64_t slots = p.resident_tiles > 0 ? p.resident_tiles : 1;
  T* slot0 = reinterpret_cast<T*>(smem_raw);                                    // [slots][kTileV, stride]
  float* ps = reinterpret_cast<float*>(smem_raw + slots * tile_slot_bytes<T>(r));  // [kReqChunk, r]
  float* products = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(ps) + scratch_bytes(r));
  BoundedRace race;  // fold_tile's race, across this position's tiles
  const T* w2 = static_cast<const T*>(p.w2);
  const int64_t tiles = (V + kTileV - 1) / kTileV;
  int64_t local = 0;  // this block's tile counter: the tile's slot in resident mode
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x, ++local) {
    const bool first = tile == static_cast<int64_t>(blockIdx.x);
    const int64_t v0 = tile * kTileV;
    const int64_t rows = V - v0 < kTileV ? V - v0 : kTileV;
    T* w2s = p.resident_tiles > 0
                 ? reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(slot0) + local * tile_slot_bytes<T>(r))
                 : slot0;
    if (p.resident_tiles == 0 || k == 1) {  // block-uniform
      __syncthreads();  // streaming: the previous tile's readers are done with the slot
      stage_tile(w2 + v0 * r, w2s, rows, r);
    }
    for (int64_t c0 = 0; c0 < R; c0 += kReqChunk) {
      const int64_t nreq = R - c0 < kReqChunk ? R - c0 : kReqChunk;
      if (R > kReqChunk || first) {  // with one chunk, ps keeps its requests across tiles
        __syncthreads();             // previous chunk's readers are done with ps
        load_chunk(p, c0, nreq, ps);
      }
      __syncthreads();  // ps and the staged tile are visible to every warp
      const int64_t local0 = static_cast<int64_t>(warp) * kReqPerWarp;  // this warp's first request
      if (local0 >= nreq) continue;                                      // warp-uniform
      float acc[kReqPerWarp] = {};
      if (lane < rows) dot4_padded(w2s + lane * stride, ps + local0 * r, r, acc);
      stage_products(acc, products, kTileV + kCPad, local0, lane);
      if (R > kReqChunk) race = BoundedRace{};  // the lane's request changes with the chunk
      fold_tile<T, true>(p, k, c0, local0, nreq, v0, products + local0 * (kTileV + kCPad), kTileV + kCPad,
                         ps + kReqChunk * r, race, lane);
    }
  }
}

// ---- phase B of the default kernel ------------------------------------------------------
// Tiles are staged with cp.async (16-byte copies, no register round trip) into unpadded rows
// whose 16-byte chunk c of row `row` sits at chunk c ^ (row & mask): the 8 lanes of a quarter
// warp reading chunk c of 8 consecutive rows hit 8 different bank groups, conflict-free.
// A block takes its tiles in groups of m = p.subtiles: warp w computes sub-tile w / (8 / m) for
// requests 4 (w % (8 / m)) .. + 3, so at small R every warp works (m = 8 / ceil(R / 4), capped
// by shared memory); streaming w2, group j + 1 is copied while group j is computed (two
// buffers).

// XOR mask of the swizzle: the largest power of two <= 8 dividing the chunks per row, minus 1.
__device__ __forceinline__ int swizzle_mask(int chunks) {
  const int low = chunks & -chunks;
  return (low < 8 ? low : 8) - 1;
}

// Issues the copies of one [rows, r] tile of w2 into the swizzled layout (rows of r * sizeof(T)
// bytes, a multiple of 16: the host picks the legacy kernel otherwise): cp.async when the
// source is 16-byte aligned, element copies otherwise (then complete on return).
template <typename T>
__device__ __forceinline__ void stage_tile_swizzled(const T* src, unsigned char* dst, int rows, int64_t r) {
  constexpr int kElems = 16 / sizeof(T);
  const int chunks = static_cast<int>(r / kElems), mask = swizzle_mask(chunks);
  if (reinterpret_cast<uintptr_t>(src) % 16 == 0) {
    for (int c = threadIdx.x; c < rows * chunks; c += blockDim.x) {
      const int row = c / chunks, col = c - row * chunks;
      cp_async_16(shared_address(dst + (row * chunks + (col ^ (row & mask))) * 16),
                  src + static_cast<int64_t>(c) * kElems, true);
    }
  } else {
    T* d = reinterpret_cast<T*>(dst);
    for (int64_t idx = threadIdx.x; idx < rows * r; idx += blockDim.x) {
      const int row = static_cast<int>(idx / r), col = static_cast<int>(idx - row * r);
      d[(row * chunks + ((col / kElems) ^ (row & mask))) * kElems + col % kElems] = src[idx];
    }
  }
}

// 16 bytes of staged w2 as floats.
__device__ __forceinline__ void unpack16(const uint4& raw, float* w, const float*) {
  w[0] = __uint_as_float(raw.x), w[1] = __uint_as_float(raw.y), w[2] = __uint_as_float(raw.z),
  w[3] = __uint_as_float(raw.w);
}
template <typename H>
__device__ __forceinline__ void unpack16(const uint4& raw, float* w, const H*) {  // 8 x bf16 / half
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    H two[2];
    memcpy(two, &words[i], sizeof(two));
    w[2 * i] = to_float(two[0]);
    w[2 * i + 1] = to_float(two[1]);
  }
}

// A 16-byte shared-memory load (p 16-byte aligned: r is a multiple of 4). Written out because
// nvcc split the float4 loads of requests 1..3 (offsets i * r) into four 32-bit loads each.
__device__ __forceinline__ float4 lds128(const float* p) {
  float4 v;
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(static_cast<unsigned>(__cvta_generic_to_shared(p))));
  return v;
}

// dot4_padded's arithmetic (one sequential fmaf chain per output in column order, so the same
// bits) on the swizzled row `lane` of a tile: one 16-byte shared load feeds 16 / sizeof(T)
// columns of four requests.
template <typename T>
__device__ __forceinline__ void dot4_swizzled(const unsigned char* tile, int lane, const float* prow, int64_t r,
                                              float* acc) {
  constexpr int kElems = 16 / sizeof(T);
  const int chunks = static_cast<int>(r / kElems), mask = swizzle_mask(chunks);
  const uint4* row = reinterpret_cast<const uint4*>(tile) + lane * chunks;
  for (int c = 0; c < chunks; ++c) {
    float w[kElems];
    unpack16(row[c ^ (lane & mask)], w, static_cast<const T*>(nullptr));
#pragma unroll
    for (int i = 0; i < kReqPerWarp; ++i) {
#pragma unroll
      for (int e = 0; e < kElems; e += 4) {
        const float4 pv = lds128(prow + i * r + c * kElems + e);
        acc[i] = fmaf(w[e], pv.x, acc[i]);
        acc[i] = fmaf(w[e + 1], pv.y, acc[i]);
        acc[i] = fmaf(w[e + 2], pv.z, acc[i]);
        acc[i] = fmaf(w[e + 3], pv.w, acc[i]);
      }
    }
  }
}

// ---- the tensor-core product (MarkovKernel::kTensorCore, bf16 / fp16, r % 16 == 0) -------------
// w2 is exact in T, but the head vectors P are float32 (gated / RNN heads; the vanilla head's
// P = w1[x] is exact in T, and runs the hi product only). Each P is split into hi = T(P) and
// lo = T(P - hi), and the mma accumulates w2 . hi + w2 . lo in float32: about 16 (bf16) or 22 (fp16) significant bits
// of P instead of 24, far below the one unit of T that the rounded logits carry. Every output element is a fixed
// function of its w2 row and its request's P (the same k order and mma sequence whatever the batch, the grid or the
// warp that computes it): batch-invariant, but not the FMA kernel's bits (the tensor cores sum 16 products at a time);
// a logit may round one unit apart, which SPEC §2 (c) allows. The fp32 dtype keeps the FMA kernel (tf32 would lose bits
// of w2).
//
// Shared layout of a request chunk (the FMA kernel's float [kReqChunk, r] region, same size):
// hi [kReqChunk, r] T, then lo [kReqChunk, r] T, rows swizzled like the w2 tiles, then the 1/T
// of the chunk at float offset kReqChunk * r as before; after the scratch, the product
// C [kReqChunk, m * kTileV + kCPad] float, read back by fold_tile's lanes.

// Loads the chunk c0 .. c0 + nreq - 1: P split into hi / lo (16-byte chunks, swizzled rows), the
// rows up to the next multiple of 8 zero (their n8 block is computed, its columns unused), and
// the requests' 1/T.
template <typename T>
__device__ __forceinline__ void load_chunk_split(const MarkovDraftParams& p, int64_t c0, int64_t nreq,
                                                 unsigned char* ps) {
  const int64_t r = p.rank;
  const int chunks = static_cast<int>(r / 8), mask = swizzle_mask(chunks);  // 8 values of T per chunk
  const int64_t rows = (nreq + 7) / 8 * 8;
  uint4* hi = reinterpret_cast<uint4*>(ps);
  uint4* lo = hi + kReqChunk * chunks;
  const float4* src = reinterpret_cast<const float4*>(p.head_vector + c0 * r);  // [nreq, r], 16-byte aligned
  for (int c = threadIdx.x; c < rows * chunks; c += blockDim.x) {
    const int row = c / chunks, col = c - row * chunks;
    uint4 h{}, l{};
    if (row < nreq) {
      const float4 a = __ldcg(src + 2 * c), b = __ldcg(src + 2 * c + 1);  // written by phase A of this launch
      const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
      uint32_t hw[4], lw[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        hw[e] = pack2<T>(v[2 * e], v[2 * e + 1]);
        const float2 back = unpack2<T>(hw[e]);  // exact: T -> float
        lw[e] = pack2<T>(v[2 * e] - back.x, v[2 * e + 1] - back.y);
      }
      h = make_uint4(hw[0], hw[1], hw[2], hw[3]);
      l = make_uint4(lw[0], lw[1], lw[2], lw[3]);
    }
    const int at = row * chunks + (col ^ (row & mask));
    hi[at] = h;
    lo[at] = l;
  }
  float* inv_ts = reinterpret_cast<float*>(ps) + kReqChunk * r;
  for (int64_t i = threadIdx.x; i < nreq; i += blockDim.x) inv_ts[i] = inverse_temperature(p.temperature[c0 + i]);
}

// C[n, row] = w2[row] . P_n for the group's first `live` of m tiles (rows t * kTileV + 0..31 of
// buffer(t); the others do not exist) and the chunk's requests n < 8 * ceil(nreq / 8): units of
// 16 rows x 8 requests, spread over the warps; each unit runs r / 16 k-steps of two mma (hi, lo)
// into one float32 accumulator, or of one (hi) when `split` is false: the vanilla head's
// P = w1[x] is exact in T, so lo is zero for every request (a property of the call, not of the
// batch, so batch invariance holds).
template <typename T, typename Buffer>
__device__ __forceinline__ void mma_product(const unsigned char* ps, int64_t r, int m, int live, int64_t nreq,
                                            bool split, Buffer buffer, float* C, int warp, int lane) {
  const int chunks = static_cast<int>(r / 8), mask = swizzle_mask(chunks);
  const int units = 2 * live * static_cast<int>((nreq + 7) / 8);
  const int cstride = m * kTileV + kCPad;
  const int g = lane / 4, t4 = lane % 4;    // fragment coordinates (PTX ISA, mma.m16n8k16)
  const int mi = lane / 8, mrow = lane % 8;  // this lane's ldmatrix matrix and row address
  const uint32_t hi = shared_address(ps), lo = hi + static_cast<uint32_t>(kReqChunk * chunks * 16);
  for (int u = warp; u < units; u += kWarps) {
    const int rb = u % (2 * live), nb = u / (2 * live);  // 16-row block of the group, 8-request block
    const int tile = rb / 2;
    // A: matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15) of the unit's 16 rows: a0..a3 of the fragment.
    const int arow = (rb % 2) * 16 + (mi & 1) * 8 + mrow, acol = mi >> 1;
    const uint32_t abase = shared_address(buffer(tile)) + static_cast<uint32_t>(arow * chunks * 16);
    // B: matrices hi k 0-7, hi k 8-15, lo k 0-7, lo k 8-15 of requests 8 nb + 0..7 (rows of P are
    // the columns of B, so the untransposed load gives the .col fragment).
    const int brow = nb * 8 + mrow, bcol = mi & 1;
    const uint32_t bbase = ((mi >> 1) ? lo : hi) + static_cast<uint32_t>(brow * chunks * 16);
    float acc[4] = {};
    auto step = [&](uint32_t a_at, uint32_t b_at) {  // one k-step from this lane's two matrix rows
      uint32_t a[4], b[4];
      ldmatrix_x4<false>(a_at, a);
      ldmatrix_x4<false>(b_at, b);
      mma_16816<T>(acc, a, b[0], b[1]);
      if (split) mma_16816<T>(acc, a, b[2], b[3]);  // warp-uniform
    };
    // The swizzle XORs only the low 3 bits of a chunk index (mask <= 7): over 8 chunks (4 k-steps)
    // starting at a multiple of 8 the lane's 4 offsets are fixed, so the loop adds 128 bytes per
    // 4 k-steps instead of recomputing each address; the k-steps left (r % 64 != 0) take the
    // general formula. Same k order either way.
    const int sa = arow & mask, sb = brow & mask;
    uint32_t aoff[4], boff[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      aoff[i] = abase + static_cast<uint32_t>(((2 * i + acol) ^ sa) * 16);
      boff[i] = bbase + static_cast<uint32_t>(((2 * i + bcol) ^ sb) * 16);
    }
    int ks = 0;
    for (; ks + 4 <= chunks / 2; ks += 4) {
      const uint32_t at = static_cast<uint32_t>(ks) * 32;  // chunk 2 ks, a multiple of 8
#pragma unroll
      for (int i = 0; i < 4; ++i) step(aoff[i] + at, boff[i] + at);
    }
    for (; ks < chunks / 2; ++ks)
      step(abase + static_cast<uint32_t>(((2 * ks + acol) ^ sa) * 16),
           bbase + static_cast<uint32_t>(((2 * ks + bcol) ^ sb) * 16));
    // acc: rows g, g + 8 of the unit; requests 2 t4, 2 t4 + 1 of the block.
    const int row0 = tile * kTileV + (rb % 2) * 16 + g, n0 = nb * 8 + 2 * t4;
    C[n0 * cstride + row0] = acc[0];
    C[(n0 + 1) * cstride + row0] = acc[1];
    C[n0 * cstride + row0 + 8] = acc[2];
    C[(n0 + 1) * cstride + row0 + 8] = acc[3];
  }
}

// MMA: the product by the tensor cores (mma_product) into C, which the warps then read in
// fold_tile's layout; otherwise dot4_swizzled's FMAs.
template <typename T, bool MMA>
__device__ void logits_step_tiled(const MarkovDraftParams& p, int64_t k, unsigned char* smem_raw) {
  const int64_t R = p.requests, V = p.vocab, r = p.rank;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int m = p.subtiles, per_tile = kWarps / m;  // sub-tiles per group, warps per sub-tile
  const int t = warp / per_tile;                      // this warp's sub-tile
  const int64_t local0 = static_cast<int64_t>(warp % per_tile) * kReqPerWarp;  // its first request in a chunk
  const bool resident = p.resident_tiles > 0;
  const int64_t tile_bytes = swizzled_tile_bytes<T>(r);
  unsigned char* chunk_raw = smem_raw + (resident ? p.resident_tiles : 2 * m) * tile_bytes;
  float* ps = reinterpret_cast<float*>(chunk_raw);     // [kReqChunk, r] head vectors (MMA: hi, lo), then 1/T
  float* C = reinterpret_cast<float*>(chunk_raw + scratch_bytes(r));  // [kReqChunk, m * kTileV + kCPad] products
  const T* w2 = static_cast<const T*>(p.w2);
  const int64_t tiles = (V + kTileV - 1) / kTileV, grid = gridDim.x;
  BoundedRace race;  // fold_tile's race, across this position's tiles
  const int64_t mine = (tiles - blockIdx.x + grid - 1) / grid;  // this block's tiles
  const int64_t groups = (mine + m - 1) / m;
  auto tile_of = [&](int64_t j, int s) { return blockIdx.x + (j * m + s) * grid; };
  auto buffer = [&](int64_t j, int s) { return smem_raw + (resident ? j * m + s : (j & 1) * m + s) * tile_bytes; };
  auto stage_group = [&](int64_t j) {
    for (int s = 0; s < m; ++s) {
      const int64_t tile = tile_of(j, s);
      if (tile < tiles)
        stage_tile_swizzled(w2 + tile * kTileV * r, buffer(j, s),
                            static_cast<int>(V - tile * kTileV < kTileV ? V - tile * kTileV : kTileV), r);
    }
    cp_async_commit();
  };
  if (resident && k == 1) {  // every tile of the block, once per round
    for (int64_t j = 0; j < groups; ++j) stage_group(j);
    cp_async_wait<0>();
  }
  if (!resident) stage_group(0);
  for (int64_t j = 0; j < groups; ++j) {
    if (!resident) {
      if (j + 1 < groups) {
        stage_group(j + 1);  // the other buffer: its readers passed the barrier ending group j - 1
        cp_async_wait<1>();  // group j has landed (this thread's copies)
      } else {
        cp_async_wait<0>();
      }
    }
    const int64_t tile = tile_of(j, t);
    const int64_t v0 = tile * kTileV;
    int live = 0;  // sub-tiles of group j that exist (a prefix): the product reads only their buffers
    while (live < m && tile_of(j, live) < tiles) ++live;
    for (int64_t c0 = 0; c0 < R; c0 += kReqChunk) {
      const int64_t nreq = R - c0 < kReqChunk ? R - c0 : kReqChunk;
      if (R > kReqChunk || j == 0) {  // with one chunk, ps keeps its requests across groups
        __syncthreads();              // previous chunk's readers are done with ps (and C)
        if constexpr (MMA) {
          load_chunk_split<T>(p, c0, nreq, chunk_raw);
        } else {
          load_chunk(p, c0, nreq, ps);
        }
      }
      __syncthreads();  // ps and every thread's staged copies are visible to every warp
      if constexpr (MMA) {
        mma_product<T>(
            chunk_raw, r, m, live, nreq, p.head != static_cast<int>(MarkovHead::kVanilla),
            [&](int s) { return buffer(j, s); }, C, warp, lane);
        __syncthreads();  // C is complete
      }
      if (local0 >= nreq || tile >= tiles) continue;  // warp-uniform; past the last tile: nothing
      const int cstride = m * kTileV + kCPad;  // the products' layout, m sub-tiles per row
      if constexpr (!MMA) {
        float acc[kReqPerWarp] = {};
        if (lane < V - v0) dot4_swizzled<T>(buffer(j, t), lane, ps + local0 * r, r, acc);
        stage_products(acc, C + t * kTileV, cstride, local0, lane);
      }
      if (R > kReqChunk) race = BoundedRace{};  // the lane's request changes with the chunk
      fold_tile<T, false>(p, k, c0, local0, nreq, v0, C + local0 * cstride + t * kTileV, cstride, ps + kReqChunk * r,
                          race, lane);
    }
    __syncthreads();  // every warp is done with group j's buffer before it is refilled
  }
}

// The legacy kernel: two blocks per SM (128 registers). The default kernel: one block per SM, which
// its double-buffered sub-tiles ask for at small R anyway (e.g. 160 KB at R <= 4, r = 256, bf16);
// at 128 registers it spilled (the unpacked 16-byte chunks and 16-byte P loads live together).
template <typename T, MarkovKernel KIND>
__global__ void __launch_bounds__(kThreads, KIND == MarkovKernel::kLegacy ? 2 : 1)
    markov_draft_kernel(MarkovDraftParams p) {
  constexpr bool LEGACY = KIND == MarkovKernel::kLegacy;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ __align__(16) unsigned char red[kWarps * 16];  // block reductions (raw: no ctors)
  __shared__ int64_t x_shared;
  __shared__ FilterScratch fsh;
  const int64_t R = p.requests, G = p.gamma;
  // Gated / RNN heads in the default and fma kernels: phase A splits into A1 (the draw, per request) and
  // A2 (the head over the whole grid: head_units), with a grid barrier between them.
  const bool spread = !LEGACY && p.head != static_cast<int>(MarkovHead::kVanilla);
  for (int64_t k = 1; k <= G + 1; ++k) {
    for (int64_t q = blockIdx.x; q < R; q += gridDim.x) {
      const int64_t prev = k == 1 ? markov::previous_token(p, q, 1)
                                  : finish_position<T>(p, q, k - 1, &x_shared, red, fsh);
      // Phase A's scratch lies after the w2 tiles: resident tiles survive it.
      if (k <= G && !spread)
        head_step<T>(
            p, q, k, prev,
            reinterpret_cast<float*>(smem + tile_region_bytes<T>(p.rank, p.resident_tiles, p.subtiles, LEGACY)));
    }
    if (k > G) break;
    if (spread) {
      if (k > 1) {  // A1 wrote x_{k-1} (tokens[q, k-2]); at k = 1 A2 reads the anchor itself
        __threadfence();
        cg::this_grid().sync();
      }
      markov::head_units<T>(p, k);
    }
    __threadfence();
    cg::this_grid().sync();
    if (LEGACY) {
      logits_step_legacy<T>(p, k, smem);
    } else {
      logits_step_tiled<T, KIND == MarkovKernel::kTensorCore>(p, k, smem);
    }
    __threadfence();
    cg::this_grid().sync();
  }
}

// The kernel of a variant; the plan never asks for tensor cores with float32 (no instantiation).
template <typename T>
auto kernel_of(MarkovKernel kind) {
  if constexpr (sizeof(T) == 2) {
    if (kind == MarkovKernel::kTensorCore) return markov_draft_kernel<T, MarkovKernel::kTensorCore>;
  }
  return kind == MarkovKernel::kLegacy ? markov_draft_kernel<T, MarkovKernel::kLegacy>
                                       : markov_draft_kernel<T, MarkovKernel::kFma>;
}

// Dynamic shared memory of a launch: w2 tiles, scratch, and the products.
template <typename T>
int64_t launch_smem(int64_t rank, int resident_tiles, int subtiles, MarkovKernel kind) {
  return tile_region_bytes<T>(rank, resident_tiles, subtiles, kind == MarkovKernel::kLegacy) + scratch_bytes(rank) +
         product_bytes(kind == MarkovKernel::kLegacy ? 1 : subtiles);
}

}  // namespace

MarkovDraftLaunch plan_markov_draft(DType dtype, int64_t vocab, int64_t rank, int64_t requests, int device, int sms,
                                    bool allow_resident, MarkovKernel asked, cudaError_t* err) {
  return DSPARK_DISPATCH_FLOAT(dtype, T, [&]() -> MarkovDraftLaunch {
    MarkovDraftLaunch plan;
    plan.kind = asked;
    if (plan.kind == MarkovKernel::kTensorCore && (sizeof(T) != 2 || rank % 16 != 0)) plan.kind = MarkovKernel::kFma;
    if ((rank * static_cast<int64_t>(sizeof(T))) % 16 != 0) plan.kind = MarkovKernel::kLegacy;
    const bool legacy = plan.kind == MarkovKernel::kLegacy;
    const auto kernel = kernel_of<T>(plan.kind);
    int optin = 0, per_sm_bytes = 0;
    if ((*err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device)) != cudaSuccess)
      return plan;
    if ((*err = cudaDeviceGetAttribute(&per_sm_bytes, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device)) !=
        cudaSuccess)
      return plan;
    // Allow up to the opt-in maximum; each launch asks only for what it needs. The cap on
    // DYNAMIC shared memory is the opt-in maximum minus the kernel's static shared memory:
    // asking for the full opt-in value fails with cudaErrorInvalidValue (dynamic + static may
    // not exceed the opt-in maximum), which made every call fail.
    cudaFuncAttributes attr{};
    if ((*err = cudaFuncGetAttributes(&attr, kernel)) != cudaSuccess) return plan;
    const int64_t max_dynamic = static_cast<int64_t>(optin) - static_cast<int64_t>(attr.sharedSizeBytes);
    if (max_dynamic <= 0) {
      *err = cudaErrorInvalidConfiguration;
      return plan;
    }
    if ((*err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(max_dynamic))) != cudaSuccess)
      return plan;
    const int64_t tiles = (vocab + kTileV - 1) / kTileV;
    // Tiled kernels: m sub-tiles per group so that the request groups of one chunk fill the
    // block's warps (m = 8 / ceil(R / 4), 1 from R = 17 on), fewer if two buffers do not fit.
    int m = 1;
    if (!legacy) {
      const int64_t chunk = requests < kReqChunk ? requests : kReqChunk;
      m = kWarps / static_cast<int>((chunk + kReqPerWarp - 1) / kReqPerWarp);
      while (m > 1 && launch_smem<T>(rank, 0, m, plan.kind) > max_dynamic) m /= 2;
    }
    plan.subtiles = m;
    auto fits = [&](size_t smem, int64_t want_per_sm, int64_t* blocks) {
      int per_sm = 0;
      *err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
      if (*err != cudaSuccess || per_sm < want_per_sm || per_sm <= 0) return false;
      const int64_t resident = static_cast<int64_t>(sms) * (want_per_sm > 0 ? want_per_sm : per_sm);
      *blocks = tiles < resident ? tiles : resident;
      return true;
    };
    if (allow_resident) {
      for (int64_t per_sm = 2; per_sm >= 1; --per_sm) {
        const int64_t blocks = tiles < sms * per_sm ? tiles : sms * per_sm;
        const int64_t share = (tiles + blocks - 1) / blocks;  // tiles per block
        const int64_t smem = launch_smem<T>(rank, static_cast<int>(share), m, plan.kind);
        const int64_t budget = per_sm_bytes / per_sm - 2048;  // leave room for static smem / reserve
        int64_t got = 0;
        if (smem <= max_dynamic && smem <= budget && fits(static_cast<size_t>(smem), per_sm, &got) && got == blocks) {
          plan.blocks = static_cast<int>(blocks);
          plan.smem = static_cast<size_t>(smem);
          plan.resident_tiles = static_cast<int>(share);
          return plan;
        }
        if (*err != cudaSuccess) return plan;
      }
    }
    const size_t smem = static_cast<size_t>(launch_smem<T>(rank, 0, m, plan.kind));
    int64_t blocks = 0;
    if (static_cast<int64_t>(smem) > max_dynamic || !fits(smem, 0, &blocks)) {
      if (*err == cudaSuccess) *err = cudaErrorInvalidConfiguration;  // rank too large for shared memory
      return plan;
    }
    plan.blocks = static_cast<int>(blocks);
    plan.smem = smem;
    return plan;
  });
}

cudaError_t launch_markov_draft(const MarkovDraftParams& params, MarkovDraftLaunch* launch, cudaStream_t stream) {
  if (params.requests == 0 || params.gamma == 0 || launch->blocks <= 0) return cudaSuccess;
  return DSPARK_DISPATCH_FLOAT(params.dtype, T, [&]() -> cudaError_t {
    const auto kernel = kernel_of<T>(launch->kind);
    MarkovDraftParams p = params;
    void* args[] = {&p};
    for (;;) {
      p.resident_tiles = launch->resident_tiles;
      p.subtiles = launch->subtiles;
      const cudaError_t err = cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), dim3(launch->blocks),
                                                          dim3(kThreads), args, launch->smem, stream);
      // Fewer SMs than planned (an MPS thread limit the queries do not show): halve the grid
      // (the per-tile partials do not depend on it) and stream w2 (one buffer pair of at most as many sub-tiles, which
      // the plan already checked fits the opt-in maximum), whose resident tiles assumed the planned grid. The caller
      // keeps the reduced plan.
      if (err != cudaErrorCooperativeLaunchTooLarge || launch->blocks == 1) return err;
      cudaGetLastError();  // clear the launch error before the retry
      launch->blocks = (launch->blocks + 1) / 2;
      if (launch->resident_tiles > 0) {
        while (launch->subtiles > 1 && 2 * launch->subtiles > launch->resident_tiles) launch->subtiles /= 2;
        launch->resident_tiles = 0;
        launch->smem = static_cast<size_t>(launch_smem<T>(params.rank, 0, launch->subtiles, launch->kind));
      }
    }
  });
}

}  // namespace dspark::cuda
