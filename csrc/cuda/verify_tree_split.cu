// The default CUDA kernel of dspark::verify_tree (SPEC §5, §9, §10): the walk of
// verify_tree.cu's legacy kernel, with every pass over a row spread over a GROUP of blocks per
// request, so that R = 1 reads its rows with many SMs instead of one.
//
// One launch of R x G blocks of 256 threads (G from plan_verify_tree_split: about 2 x SMs / R,
// at most kMaxGroup; one block per SM is enough for the register budget, so that nothing spills:
// ~180 registers, 8 warps per SM). Each block takes a ticket from a counter;
// ticket t serves request t / G as rank t % G. Tickets are handed out in the order blocks start, so a group waits only
// on blocks that are already running or that start when an earlier, complete group finishes: the grid makes progress
// whenever G blocks fit on the GPU at once (no cooperative launch needed, and the launch captures in a CUDA graph).
// The plan therefore caps G by the blocks the launching context can hold at once: the SMs of
// its stream (cuda/device_sms.h: fewer on a green context) x this kernel's blocks per SM.
// Not covered: an MPS client limited by CUDA_MPS_ACTIVE_THREAD_PERCENTAGE to fewer than G SMs
// (not known to be visible to those queries; untested), and SMs held for good by a kernel on
// another stream (a persistent kernel); DSPARK_VERIFY_TREE_KERNEL=legacy (one block per
// request, no barrier) avoids both.
//
// A pass cuts the row into fixed chunks of kChunk ids (and, for a sparse q, its K listed
// entries into chunks of kListChunk), each reduced by one warp; chunk c goes to warp c mod
// (G x warps) of the group. Each warp writes its chunk's partial (softmax statistics, residual
// mass, race keys or argmax) to global scratch; after a group barrier every block merges ALL
// partials in chunk order with a fixed block butterfly. So every block of a group gets the
// same bits (it branches the same way), and the result depends only on V, K and the block
// size, never on G: a request's outputs do not depend on the batch (SPEC §2 (a)). Race
// winners are order-independent anyway (dspark/sampling.h); float sums are not, hence the
// fixed chunk order. Single entries (p(x), q(x), the coins) are read by every block.
//
// Sparse q (draft_ids, SPEC §10): q is 0 off the listed ids. A pass over the V ids must know
// which ids are listed (their residual is not p(v)): each visit marks its listed ids in a
// per-request bitmap (V bits), the V chunks skip marked ids in the residual terms, and the K
// chunks add the listed ids' terms max(0, p - c q) (their Gumbel noise keyed by the vocabulary
// id, as the dense race's). Nothing of size V but the bitmap (V / 8 bytes) is formed. Bitmaps
// alternate between two buffers by visit, and each visit clears the words it marked after its
// last barrier, which every block passes before the next visit that uses that buffer marks.
//
// Filters (SPEC §9): every block finds the row's θ itself with cuda/filters.cuh's block search
// (the same θ in every block; rows of requests without a filter skip it).
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/draft_q.cuh"
#include "cuda/filters.cuh"
#include "cuda/tree_rows.cuh"
#include "cuda/verify_tree.h"
#include "dspark/tree_sampling.h"

namespace dspark::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kUnroll = 4;  // groups of four ids in flight per lane and row (two rows: half each)
constexpr int64_t kChunkGroups = kWarpSize * kUnroll;  // one warp's chunk of a row, in groups
constexpr int64_t kListUnroll = 8;
constexpr int64_t kListChunk = kWarpSize * kListUnroll;  // listed entries of a sparse q per chunk
constexpr int kMaxGroup = 16;  // blocks per request at most (fewer where the context holds fewer)

DSPARK_HD int64_t vocab_chunks(int64_t vocab) { return ((vocab + 3) / 4 + kChunkGroups - 1) / kChunkGroups; }
DSPARK_HD int64_t list_chunks(const VerifyTreeParams& p) {
  return p.draft_ids ? (p.draft_width + kListChunk - 1) / kListChunk : 0;
}
DSPARK_HD int64_t bitmap_words(const VerifyTreeParams& p) { return p.draft_ids ? (p.vocab + 31) / 32 : 0; }

// This lane's groups of vocabulary chunk c: (first, stride kWarpSize, end) for for_groups.
__device__ __forceinline__ int64_t chunk_first(int64_t c) { return c * kChunkGroups + threadIdx.x % kWarpSize; }
__device__ __forceinline__ int64_t chunk_end(int64_t c, int64_t vocab) {
  const int64_t e = (c + 1) * kChunkGroups, g = (vocab + 3) / 4;
  return e < g ? e : g;
}

// One chunk's partial in global scratch (every partial type fits in 16 bytes), written and
// read past L1, which is not coherent across SMs.
struct Slot {
  unsigned long long w[2];
};
template <typename Acc>
__device__ __forceinline__ void put(Slot* s, const Acc& a) {
  static_assert(sizeof(Acc) <= sizeof(Slot), "a partial fits in a slot");
  Slot t{};
  memcpy(&t, &a, sizeof(Acc));
  __stcg(&s->w[0], t.w[0]);
  __stcg(&s->w[1], t.w[1]);
}
template <typename Acc>
__device__ __forceinline__ Acc get(const Slot* s) {
  Slot t;
  t.w[0] = __ldcg(&s->w[0]);
  t.w[1] = __ldcg(&s->w[1]);
  Acc a;
  memcpy(&a, &t, sizeof(Acc));
  return a;
}

// Softmax statistics of a node's p and q rows.
struct Stats2 {
  SoftmaxStats p, q;
};
// Race keys of the emitted token: the residual max(0, p - c q) and the fallback p.
struct Keys2 {
  uint64_t residual = 0, fallback = 0;
};

// N values of T in shared memory, as raw bytes: SoftmaxStats and ArgMax have default member
// initializers, which a __shared__ variable cannot run (nvcc warning 20054, "dynamic
// initialization is not supported"); the block reductions write every slot before reading it.
template <typename T, int N>
struct RawShared {
  alignas(T) unsigned char bytes[N * sizeof(T)];
  __device__ T* get() { return reinterpret_cast<T*>(bytes); }
};

// Trivially constructible, hence a valid __shared__ variable.
struct Shared {
  RawShared<SoftmaxStats, kWarps> stats;
  RawShared<ArgMax, kWarps> argmax;
  float sums[kWarps];
  uint64_t keys[kWarps];
  long long isums[kWarps];
  FilterScratch filter;
  unsigned ticket;
};

// Warp-, merge- and block-level reductions of each partial type (cuda/reduce.cuh orders).
__device__ __forceinline__ float warp_all(float v) { return warp_sum(v); }
__device__ __forceinline__ uint64_t warp_all(uint64_t v) { return warp_max_u64(v); }
__device__ __forceinline__ ArgMax warp_all(ArgMax a) { return warp_merge(a); }
__device__ __forceinline__ Stats2 warp_all(Stats2 s) { return {warp_merge(s.p), warp_merge(s.q)}; }
__device__ __forceinline__ Keys2 warp_all(Keys2 k) { return {warp_max_u64(k.residual), warp_max_u64(k.fallback)}; }

__device__ __forceinline__ void merge_into(float& a, float b) { a += b; }
__device__ __forceinline__ void merge_into(uint64_t& a, uint64_t b) { a = a > b ? a : b; }
__device__ __forceinline__ void merge_into(ArgMax& a, const ArgMax& b) { a.merge(b); }
__device__ __forceinline__ void merge_into(Stats2& a, const Stats2& b) {
  a.p.merge(b.p);
  a.q.merge(b.q);
}
__device__ __forceinline__ void merge_into(Keys2& a, const Keys2& b) {
  merge_into(a.residual, b.residual);
  merge_into(a.fallback, b.fallback);
}

__device__ __forceinline__ float block_all(float v, Shared& sh) { return block_sum(v, sh.sums); }
__device__ __forceinline__ uint64_t block_all(uint64_t v, Shared& sh) { return block_max_u64(v, sh.keys); }
__device__ __forceinline__ ArgMax block_all(ArgMax a, Shared& sh) { return block_merge(a, sh.argmax.get()); }
__device__ __forceinline__ Stats2 block_all(Stats2 s, Shared& sh) {
  return {block_merge(s.p, sh.stats.get()), block_merge(s.q, sh.stats.get())};
}
__device__ __forceinline__ Keys2 block_all(Keys2 k, Shared& sh) {
  return {block_max_u64(k.residual, sh.keys), block_max_u64(k.fallback, sh.keys)};
}

// This block's place in its request's group, and the group's scratch.
struct Group {
  unsigned* counter;  // the group's barrier counter (zero at launch)
  Slot* slots;        // [2, chunks] partials, alternating between passes
  int64_t chunks;     // slots per pass
  int rank, size;
  unsigned arrivals = 0;  // barriers passed so far
  int parity = 0;

  // Every block of the group has arrived: its earlier global writes are visible after it.
  __device__ void barrier() {
    arrivals += static_cast<unsigned>(size);
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      atomicAdd(counter, 1u);
      unsigned seen;
      do {
        asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
      } while (seen < arrivals);
      __threadfence();
    }
    __syncthreads();
  }

  // One pass: chunk_fn(c) -> this lane's Acc for chunk c (of `chunks` <= this->chunks); the
  // warp's reduction of it is the chunk's partial. Returns the merge of all partials, the
  // same bits in every block of the group. Two passes never share slots in a row, so a block
  // still merging pass k never sees pass k + 1's writes (pass k + 2 waits for its barrier).
  template <typename Acc, typename ChunkFn>
  __device__ Acc reduce(int64_t n, Shared& sh, ChunkFn&& chunk_fn) {
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    Slot* s = slots + parity * chunks;
    for (int64_t c = static_cast<int64_t>(rank) * kWarps + warp; c < n; c += static_cast<int64_t>(size) * kWarps) {
      const Acc a = warp_all(chunk_fn(c));
      if (lane == 0) put(s + c, a);
    }
    barrier();
    Acc acc{};
    for (int64_t c = threadIdx.x; c < n; c += blockDim.x) merge_into(acc, get<Acc>(s + c));
    parity ^= 1;
    return block_all(acc, sh);
  }
};

// The sparse q of one visit: the listed entries and this visit's bitmap of listed ids.
struct SparseQ {
  const int64_t* ids;  // [K] of this node's row
  int64_t width;       // K
  uint32_t* bits;      // [ceil(V / 32)]

  __device__ bool marked(int64_t v) const { return (__ldcg(bits + (v >> 5)) >> (v & 31)) & 1u; }
};

// The first entry of a sparse row listing x (-1: none), the same in every thread.
__device__ int64_t first_listing(const int64_t* __restrict__ ids, int64_t width, int64_t x, Shared& sh) {
  uint64_t best = 0;  // max of (UINT64_MAX - j): the lowest j
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x)
    if (__ldg(ids + j) == x) {
      best = ~static_cast<uint64_t>(j);
      break;
    }
  best = block_max_u64(best, sh.keys);
  return best == 0 ? -1 : static_cast<int64_t>(~best);
}

// Everything one visit of the walk reads, the same in every block of the group.
template <typename TT, typename TD>
struct Visit {
  const TT* prow;      // [V] the node's target row
  const TD* qvals;     // [W] its draft row (logits, or probs with TD = float), nullptr: none
  bool probs;          // qvals holds probabilities
  SparseQ sparse;      // ids == nullptr: dense q
  int64_t vocab;
  float inv_t, theta;  // 1/T (scaled_logit's argument), the target row's filter threshold
  int64_t seed, offset;
  uint32_t node;

  __device__ int64_t vchunks() const { return vocab_chunks(vocab); }
  __device__ int64_t lchunks() const { return sparse.ids ? (sparse.width + kListChunk - 1) / kListChunk : 0; }
  __device__ float scaled(float x) const { return filtered(scaled_logit(x, inv_t), theta); }
  // q of entry j of the draft row (dense: id j) under q's softmax statistics qs.
  __device__ float q_entry(int64_t j, const SoftmaxStats& qs) const {
    return draft_q_entry(probs ? nullptr : qvals, probs ? reinterpret_cast<const float*>(qvals) : nullptr, sparse.ids,
                         j, vocab, qs, inv_t);
  }
  // Calls f(v, j) for the listed entries j of list chunk lc (v = ids[j] in [0, V)).
  template <typename F>
  __device__ void for_listed(int64_t lc, F&& f) const {
    const int64_t lane = threadIdx.x % kWarpSize;
#pragma unroll 4
    for (int64_t u = 0; u < kListUnroll; ++u) {
      const int64_t j = lc * kListChunk + u * kWarpSize + lane;
      if (j >= sparse.width) break;
      const int64_t v = __ldg(sparse.ids + j);
      if (listed_id(v, vocab)) f(v, j);
    }
  }
};

// Recursive rejection sampling at the visit's node, whose first valid child is `first`
// (dspark/tree_sampling.h; the CPU twin is recursive_rejection in cpu/verify_tree.cpp).
// Returns (accepted child or -1, emitted token or -1) in every thread of the group.
template <typename TT, typename TD>
__device__ void recursive_rejection(const Visit<TT, TD>& w, const int64_t* tok, const int64_t* par, int64_t n,
                                    int64_t first, Group& g, Shared& sh, int64_t* next, int64_t* emitted) {
  const RowReader<TT> P(w.prow, w.vocab);
  const bool dense = w.sparse.ids == nullptr;
  const RowReader<TD> Q(w.qvals, dense ? w.vocab : 0);
  const int64_t vc = w.vchunks(), chunks = vc + w.lchunks();
  // Softmax statistics of p (vocabulary chunks) and of q's logits (the same chunks when dense,
  // the list chunks when sparse, which also mark this visit's listed ids).
  const Stats2 st = g.reduce<Stats2>(chunks, sh, [&](int64_t c) {
    Stats2 a;
    if (c >= vc) {
      w.for_listed(c - vc, [&](int64_t v, int64_t j) {
        if (!w.probs) a.q.add(scaled_logit(to_float(w.qvals[j]), w.inv_t));
        atomicOr(w.sparse.bits + (v >> 5), 1u << (v & 31));
      });
    } else if (dense && !w.probs) {
      for_groups2<kUnroll / 2>(P, Q, chunk_first(c), kWarpSize, chunk_end(c, w.vocab),
                               [&](int64_t, const float (&x)[4], const float (&y)[4], int) {
#pragma unroll
                                 for (int k = 0; k < 4; ++k) {
                                   a.p.add(w.scaled(x[k]));
                                   a.q.add(scaled_logit(y[k], w.inv_t));
                                 }
                               });
    } else {
      for_groups<kUnroll>(P, chunk_first(c), kWarpSize, chunk_end(c, w.vocab), [&](int64_t, const float (&x)[4], int) {
#pragma unroll
        for (int k = 0; k < 4; ++k) a.p.add(w.scaled(x[k]));
      });
    }
    return a;
  });
  const SoftmaxStats& ps = st.p;
  const SoftmaxStats& qs = st.q;
  auto p_of = [&](float x) { return ps.prob(w.scaled(x)); };
  // q of a dense entry loaded as y; a vocabulary-chunk id of a sparse q is 0 (listed ids are
  // the list chunks' business).
  auto q_dense = [&](float y) { return w.probs ? draft_prob(y) : qs.prob(scaled_logit(y, w.inv_t)); };
  // The residual terms of one vocabulary chunk: f(v, target logit, tree_residual(p(v), cc, q(v))).
  auto residual_chunk = [&](int64_t c, float cc, auto&& f) {
    if (dense) {
      for_groups2<kUnroll / 2>(P, Q, chunk_first(c), kWarpSize, chunk_end(c, w.vocab),
                               [&](int64_t grp, const float (&xp)[4], const float (&xq)[4], int cnt) {
#pragma unroll
                                 for (int k = 0; k < 4; ++k)
                                   if (k < cnt) f(4 * grp + k, xp[k], tree_residual(p_of(xp[k]), cc, q_dense(xq[k])));
                               });
    } else {
      for_groups<kUnroll>(P, chunk_first(c), kWarpSize, chunk_end(c, w.vocab),
                          [&](int64_t grp, const float (&xp)[4], int cnt) {
#pragma unroll
                            for (int k = 0; k < 4; ++k) {
                              const int64_t v = 4 * grp + k;
                              // A listed id's term comes from its list entry: -inf marks "none here".
                              if (k < cnt) f(v, xp[k], w.sparse.marked(v) ? -INFINITY : p_of(xp[k]));
                            }
                          });
    }
  };
  float c = 0.0f, D = 1.0f;  // p' = max(0, p - c q) / D
  for (int64_t j = first; j >= 0;) {
    const int64_t x = tok[j];
    const float px = p_of(to_float(w.prow[x]));
    float qx;
    if (dense) {
      qx = q_dense(to_float(w.qvals[x]));
    } else {
      const int64_t at = first_listing(w.sparse.ids, w.sparse.width, x, sh);
      qx = at >= 0 ? w.q_entry(at, qs) : 0.0f;
    }
    const float coin = random_uniform(w.seed, w.offset, Purpose::kTreeCoin, w.node, static_cast<uint64_t>(j));
    if (coin * qx < tree_residual_prob(px, qx, c, D)) {
      *next = j;
      *emitted = -1;
      break;
    }
    c += D;
    j = next_valid_child(tok, par, n, w.node, j + 1, w.vocab);
    if (j < 0) break;
    const float mass = g.reduce<float>(chunks, sh, [&](int64_t ch) {
      float m = 0.0f;
      if (ch >= vc) {
        w.for_listed(ch - vc, [&](int64_t v, int64_t e) {
          const float r = tree_residual(p_of(to_float(w.prow[v])), c, w.q_entry(e, qs));
          if (r > 0.0f) m += r;
        });
      } else {
        residual_chunk(ch, c, [&](int64_t, float, float r) {
          if (r > 0.0f) m += r;
        });
      }
      return m;
    });
    if (!(mass > 0.0f)) break;  // p' has no mass left: no later child is accepted
    D = mass;
  }
  if (*next < 0) {
    // Emit from the final p' = norm(max(0, p - c q)); from p if that has no mass.
    const Keys2 keys = g.reduce<Keys2>(chunks, sh, [&](int64_t ch) {
      BoundedRace residual, fallback;
      if (ch >= vc) {
        w.for_listed(ch - vc, [&](int64_t v, int64_t e) {
          const float r = tree_residual(p_of(to_float(w.prow[v])), c, w.q_entry(e, qs));
          const uint32_t b = random_bits(w.seed, w.offset, Purpose::kTreeResample, w.node, static_cast<uint64_t>(v));
          residual.add_bits(r > 0.0f ? logf(r) : -INFINITY, b, v);
        });
      } else {
        residual_chunk(ch, c, [&](int64_t v, float xp, float r) {
          const float xv = w.scaled(xp);
          const float lr = r > 0.0f ? logf(r) : -INFINITY;
          const bool use_r = !residual.hopeless(lr), use_f = !fallback.hopeless(xv);
          if (!use_r && !use_f) return;
          const uint32_t b = random_bits(w.seed, w.offset, Purpose::kTreeResample, w.node, static_cast<uint64_t>(v));
          const float gum = gumbel_from_bits(b);
          if (use_r) residual.add(lr, gum, v);
          if (use_f) fallback.add(xv, gum, v);
        });
      }
      return Keys2{residual.race.best, fallback.race.best};
    });
    *emitted = race_index(keys.residual != 0 ? keys.residual : keys.fallback);
  }
  // This visit's bitmap is read by no later pass: the group clears its marked words (each
  // block a share of the list chunks), before any block can reach the next visit's barrier.
  if (!dense) {
    for (int64_t lc = static_cast<int64_t>(g.rank) * kWarps + threadIdx.x / kWarpSize; lc < w.lchunks();
         lc += static_cast<int64_t>(g.size) * kWarps)
      w.for_listed(lc, [&](int64_t v, int64_t) { __stcg(w.sparse.bits + (v >> 5), 0u); });
  }
}

template <typename TT, typename TD>
struct SplitArgs {
  const TT* target;  // [rows, V]
  const TD* draft;   // [rows, W] logits, or nullptr
  VerifyTreeParams p;
  uint32_t* zeroed;  // [R + 1 + 2 R words]: ticket, barrier counters, then the bitmaps
  Slot* slots;       // [R, 2, chunks]
  int group;
};

template <typename TT, typename TD>
__global__ void __launch_bounds__(kThreads, 1) verify_tree_split_kernel(const SplitArgs<TT, TD> a) {
  __shared__ Shared sh;
  const VerifyTreeParams& p = a.p;
  if (threadIdx.x == 0) sh.ticket = atomicAdd(a.zeroed, 1u);
  __syncthreads();
  const int64_t r = sh.ticket / a.group, V = p.vocab;
  const int64_t chunks = vocab_chunks(V) + list_chunks(p), words = bitmap_words(p);
  Group g{a.zeroed + 1 + r, a.slots + r * 2 * chunks, chunks, static_cast<int>(sh.ticket % a.group), a.group};
  uint32_t* bitmaps = a.zeroed + 1 + p.requests + r * 2 * words;
  TreeWalk w(p, r, g.rank == 0, sh.isums);  // block 0 of the group writes the outputs
  const bool has_q = a.draft != nullptr || p.draft_probs != nullptr;
  while (!w.done) {
    const TT* prow = a.target + w.row() * V;
    const RowReader<TT> P(prow, V);
    int64_t next = -1, emitted = -1;
    const int64_t first = has_q && !w.greedy ? w.first_valid_child(V) : -1;
    if (w.greedy) {
      const ArgMax best = g.reduce<ArgMax>(vocab_chunks(V), sh, [&](int64_t c) {
        ArgMax m;
        for_groups<kUnroll>(P, chunk_first(c), kWarpSize, chunk_end(c, V),
                            [&](int64_t grp, const float (&x)[4], int cnt) {
#pragma unroll
                              for (int k = 0; k < 4; ++k)
                                if (k < cnt) m.add(x[k], 4 * grp + k);
                            });
        return m;
      });
      next = w.child(best.result());
      if (next < 0) emitted = best.result();
    } else {
      const float theta = block_filter_threshold<1>(prow, V, w.inv_t, w.filter, sh.filter);
      if (first >= 0) {
        const SparseQ sparse{p.draft_ids ? p.draft_ids + w.row() * p.draft_width : nullptr, p.draft_width,
                             bitmaps + (w.accepted & 1) * words};
        const int64_t at = w.row() * p.draft_width;
        const uint32_t pos = static_cast<uint32_t>(w.node);
        if (p.draft_probs) {
          const Visit<TT, float> v{prow, p.draft_probs + at, true, sparse, V, w.inv_t, theta, w.seed, w.offset, pos};
          recursive_rejection(v, w.tok, w.par, w.nodes, first, g, sh, &next, &emitted);
        } else {
          const Visit<TT, TD> v{prow, a.draft + at, false, sparse, V, w.inv_t, theta, w.seed, w.offset, pos};
          recursive_rejection(v, w.tok, w.par, w.nodes, first, g, sh, &next, &emitted);
        }
      } else {
        // y ~ p_node; with a draft q this node has no valid child and y is the bonus token.
        const uint64_t key = g.reduce<uint64_t>(vocab_chunks(V), sh, [&](int64_t c) {
          BoundedRace race;
          for_groups<kUnroll>(
              P, chunk_first(c), kWarpSize, chunk_end(c, V), [&](int64_t grp, const float (&x)[4], int cnt) {
                const Philox4 bits = random_block(w.seed, w.offset, Purpose::kTreeResample,
                                                  static_cast<uint32_t>(w.node), static_cast<uint64_t>(4 * grp));
#pragma unroll
                for (int k = 0; k < 4; ++k)
                  if (k < cnt) race.add_bits(filtered(scaled_logit(x[k], w.inv_t), theta), bits.v[k], 4 * grp + k);
              });
          return race.race.best;
        });
        const int64_t y = race_index(key);
        next = has_q ? -1 : w.child(y);
        if (next < 0) emitted = y;
      }
    }
    w.advance(p, next, emitted);
  }
  w.finish(p);
}

// The draft dtype the launch instantiates the kernel with (the target's when there is no draft).
DType draft_dtype(const VerifyTreeParams& p) { return p.draft != nullptr ? p.draft_dtype : p.target_dtype; }

}  // namespace

int verify_tree_split_blocks_per_sm(const VerifyTreeParams& p, cudaError_t* err) {
  return DSPARK_DISPATCH_FLOAT(p.target_dtype, TT, [&] {
    return DSPARK_DISPATCH_FLOAT(draft_dtype(p), TD, [&] {
      int blocks = 0;
      *err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, verify_tree_split_kernel<TT, TD>, kThreads, 0);
      return blocks;
    });
  });
}

VerifyTreeSplitPlan plan_verify_tree_split(const VerifyTreeParams& p, int sms, int blocks_per_sm) {
  const int64_t vc = vocab_chunks(p.vocab), chunks = vc + list_chunks(p);
  // About two blocks per SM over the batch, no more blocks than a row has chunks for their warps.
  int64_t group = p.requests > 0 ? (2 * static_cast<int64_t>(sms)) / p.requests : 1;
  group = std::min<int64_t>(group, (vc + kWarps - 1) / kWarps);
  // A group's blocks wait for each other at its barriers: all G must be resident at once, or
  // the grid hangs. kMaxGroup alone does not ensure it on a green context of 8 SMs, say.
  group = std::min<int64_t>(group, static_cast<int64_t>(sms) * blocks_per_sm);
  group = std::max<int64_t>(1, std::min<int64_t>(group, kMaxGroup));
  VerifyTreeSplitPlan plan;
  plan.group = static_cast<int>(group);
  plan.zeroed_words = 1 + p.requests + p.requests * 2 * bitmap_words(p);
  plan.partial_bytes = p.requests * 2 * chunks * static_cast<int64_t>(sizeof(Slot));
  return plan;
}

cudaError_t launch_verify_tree_split(const VerifyTreeParams& p, const VerifyTreeSplitPlan& plan, uint32_t* zeroed,
                                     void* partials, cudaStream_t stream) {
  if (p.requests == 0 || p.width == 0) return cudaSuccess;
  if (p.requests * plan.group > 0x7FFFFFFF) return cudaErrorInvalidValue;  // gridDim.x limit
  return DSPARK_DISPATCH_FLOAT(p.target_dtype, TT, [&] {
    return DSPARK_DISPATCH_FLOAT(draft_dtype(p), TD, [&] {
      const SplitArgs<TT, TD> a{static_cast<const TT*>(p.target),
                                static_cast<const TD*>(p.draft),
                                p,
                                zeroed,
                                static_cast<Slot*>(partials),
                                plan.group};
      verify_tree_split_kernel<TT, TD><<<static_cast<unsigned>(p.requests * plan.group), kThreads, 0, stream>>>(a);
      return cudaGetLastError();
    });
  });
}

}  // namespace dspark::cuda
