// CUDA kernels of dspark::tree_metadata and dspark::verify_tree (SPEC §5), mirroring
// csrc/cpu/verify_tree.cpp step for step so that the CPU tests validate the algorithm.
//
// verify_tree: one block per request walks its tree from the root. Per visited node the block
// streams the node's target row (and draft row) with a block-wide reduction:
//   greedy                  one argmax pass over p_i;
//   sampling, no drafts     one Gumbel race pass over p_i (y ~ p_i, or the leaf's bonus);
//   recursive rejection     one softmax-statistics pass over p_i and q_i, then one pass per
//                           rejected child that is followed by another child (the residual
//                           mass D), then one race pass if every child is rejected.
//
// Why no p' buffer: the residual p' of recursive rejection sampling is NOT kept in shared
// memory (V = 151,936 floats is 594 KiB, more than an SM has) nor in a global scratch row
// (an extra V-float write + read per rejection). With the same q_i for every child it has the
// closed form p' = max(0, p - c q) / D with two scalars (c, D) (derivation in
// dspark/tree_sampling.h), so every pass recomputes p'(v) on the fly from the p and q rows.
// Rows are 300 KB (bf16) each, so the repeated passes of a node mostly hit L2.
//
// Memory: 512 threads per block (108-118 registers, no spills), each pass reads its row(s) in
// groups of four ids with one vector load per group on aligned rows, several groups loaded
// before use (for_groups) so that a single block keeps enough bytes in flight. The chain of
// dependent passes per request is inherent to the walk; small batches (R much smaller than
// the SM count) leave SMs idle, which is the known limit of one block per request.
//
// Uniform control flow: every value that steers the walk (softmax statistics, residual mass,
// race winners) is reduced and then broadcast from shared memory, so all threads of the block
// take the same branches even where a float merge is not bitwise commutative.
//
// Bounds without DSPARK_CHECK: node counts are clamped to [0, M] and to the rows that exist,
// a node whose parent is not in [0, i) is never visited (children are found by scanning
// j > i for parents[j] == i), and every row offset is int64.
#include "cuda/common.cuh"
#include "cuda/filters.cuh"
#include "cuda/verify_tree.h"
#include "dspark/eos.h"
#include "dspark/tree_sampling.h"

namespace dspark::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kMetadataThreads = 256;

// ---------------------------------------------------------------------------------------
// tree_metadata: one block per request.

__global__ void __launch_bounds__(kMetadataThreads)
    tree_metadata_kernel(const int64_t* __restrict__ parents, const int64_t* __restrict__ num_nodes,
                         const int64_t* __restrict__ prefix_lens, int64_t width, bool* __restrict__ mask,
                         int64_t* __restrict__ positions, int64_t* __restrict__ depth) {
  const int64_t r = blockIdx.x, M = width;
  int64_t n = num_nodes[r];
  n = n < 0 ? 0 : (n > M ? M : n);
  const int64_t* par = parents + r * M;
  int64_t* d = depth + r * M;
  // Depth by walking to the root; a parent outside [0, cur) detaches the node (depth -1).
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    int64_t di = -1;
    if (i < n) {
      int64_t cur = i, steps = 0;
      while (cur > 0) {
        const int64_t p = par[cur];
        if (p < 0 || p >= cur) break;
        cur = p;
        ++steps;
      }
      if (cur == 0) di = steps;
    }
    d[i] = di;
    positions[r * M + i] = di >= 0 ? tree_position(prefix_lens[r], di) : -1;
  }
  __syncthreads();  // depth of every node visible to the block
  // Each thread owns columns j: rows in order, row i = row parent(i) + {i}. The parent's row
  // was written earlier by this same thread, so no further synchronisation is needed.
  bool* m = mask + r * M * M;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    for (int64_t i = 0; i < M; ++i) {
      bool v = i == j;
      if (j < i && d[i] > 0) v = m[par[i] * M + j];
      m[i * M + j] = v;
    }
  }
}

// ---------------------------------------------------------------------------------------
// verify_tree

struct Scratch {
  uint64_t keys[kThreads / kWarpSize];
  SoftmaxStats stats[kThreads / kWarpSize];
  ArgMax argmax[kThreads / kWarpSize];
  float sums[kThreads / kWarpSize];
  long long isums[kThreads / kWarpSize];
  SoftmaxStats bcast_stats[2];
  FilterScratch filter;
};

__device__ __forceinline__ SoftmaxStats block_stats(SoftmaxStats s, Scratch& sh, int slot) {
  s = block_merge(s, sh.stats);
  if (threadIdx.x == 0) sh.bcast_stats[slot] = s;
  __syncthreads();
  s = sh.bcast_stats[slot];
  __syncthreads();
  return s;
}

// Children of `node` are the j in (node, n) with parents[j] == node, in index order. Every
// thread scans the same (cached) entries, so the results are block-uniform.
__device__ __forceinline__ int64_t child_with_token(const int64_t* tok, const int64_t* par, int64_t n, int64_t node,
                                                    int64_t token) {
  for (int64_t j = node + 1; j < n; ++j)
    if (__ldg(par + j) == node && __ldg(tok + j) == token) return j;
  return -1;
}

// Children with a token outside [0, V) cannot have come from q_i and are skipped.
__device__ __forceinline__ int64_t next_valid_child(const int64_t* tok, const int64_t* par, int64_t n, int64_t node,
                                                    int64_t from, int64_t vocab) {
  for (int64_t j = from; j < n; ++j) {
    const int64_t t = __ldg(tok + j);
    if (__ldg(par + j) == node && t >= 0 && t < vocab) return j;
  }
  return -1;
}

// Reads a logits row in groups of four consecutive entries (group g = ids 4g..4g+3, the ids of
// one Philox call). Thread t takes groups t, t + blockDim, ...: a warp reads 32 consecutive
// groups, with one 8-byte (bf16/fp16) or 16-byte (fp32) load per thread when the row is
// aligned (it is whenever V is a multiple of 4 with 16-byte aligned storage, e.g. V = 151,936),
// and four scalar loads otherwise. The last group may be partial (any V).
template <typename T>
struct RowReader {
  const T* __restrict__ row;
  int64_t vocab;
  bool aligned;

  __device__ RowReader(const T* r, int64_t v)
      : row(r), vocab(v), aligned(reinterpret_cast<uintptr_t>(r) % (4 * sizeof(T)) == 0) {}

  __device__ int64_t groups() const { return (vocab + 3) / 4; }

  // Entries of group g as float32; returns how many exist (4, or fewer in the last group).
  __device__ __forceinline__ int load(int64_t g, float (&x)[4]) const {
    const int64_t base = 4 * g;
    if (base + 4 <= vocab && aligned) {
      vec_t<T, 4> e;
      e.load(row + base);
#pragma unroll
      for (int k = 0; k < 4; ++k) x[k] = to_float(e[k]);
      return 4;
    }
    const int n = vocab - base < 4 ? static_cast<int>(vocab - base) : 4;
#pragma unroll
    for (int k = 0; k < 4; ++k) x[k] = k < n ? to_float(row[base + k]) : -INFINITY;
    return n;
  }
};

// Visits this thread's groups, U groups loaded before any is used so that U loads per row are
// in flight per thread (the passes are bound by memory latency on one SM): f(g, x, n).
template <int U, typename T, typename F>
__device__ __forceinline__ void for_groups(const RowReader<T>& P, F&& f) {
  const int64_t G = P.groups(), stride = blockDim.x;
  for (int64_t g0 = threadIdx.x; g0 < G; g0 += U * stride) {
    float x[U][4];
    int n[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t g = g0 + u * stride;
      n[u] = g < G ? P.load(g, x[u]) : 0;
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (n[u] > 0) f(g0 + u * stride, x[u], n[u]);
  }
}

// The same over two rows of one length (p and q of a node): f(g, xp, xq, n).
template <int U, typename T1, typename T2, typename F>
__device__ __forceinline__ void for_groups2(const RowReader<T1>& P, const RowReader<T2>& Q, F&& f) {
  const int64_t G = P.groups(), stride = blockDim.x;
  for (int64_t g0 = threadIdx.x; g0 < G; g0 += U * stride) {
    float x[U][4], y[U][4];
    int n[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t g = g0 + u * stride;
      n[u] = g < G ? P.load(g, x[u]) : 0;
      if (g < G) Q.load(g, y[u]);
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (n[u] > 0) f(g0 + u * stride, x[u], y[u], n[u]);
  }
}

template <typename TT>
__device__ int64_t row_argmax(const TT* __restrict__ row, int64_t vocab, Scratch& sh) {
  ArgMax a;
  for_groups<4>(RowReader<TT>(row, vocab), [&](int64_t g, const float (&x)[4], int n) {
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (k < n) a.add(x[k], 4 * g + k);
  });
  return block_merge(a, sh.argmax).result();  // exact total order: every thread agrees
}

// Gumbel race over filtered(row * (1/T), θ) (noise: kTreeResample at `node`): a sample of p.
template <typename TT>
__device__ int64_t row_race(const TT* __restrict__ row, int64_t vocab, float inv_t, float theta, int64_t seed,
                            int64_t offset, uint32_t node, Scratch& sh) {
  BoundedRace race;  // per-thread winner; entries that cannot beat it skip their noise's logs
  for_groups<4>(RowReader<TT>(row, vocab), [&](int64_t g, const float (&x)[4], int n) {
    const Philox4 bits = random_block(seed, offset, Purpose::kTreeResample, node, static_cast<uint64_t>(4 * g));
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (k < n) race.add_bits(filtered(scaled_logit(x[k], inv_t), theta), bits.v[k], 4 * g + k);
  });
  return race_index(block_max_u64(race.race.best, sh.keys));
}

// Recursive rejection sampling at `node`, whose first valid child is `first`, with the target
// row filtered at θ and the draft row holding logits (q = softmax(row / T)) or, with `probs`,
// q itself (TD = float); all threads call it and get the same (accepted child or -1, emitted
// token or -1).
template <typename TT, typename TD>
__device__ void recursive_rejection(const TT* __restrict__ prow, const TD* __restrict__ qrow, bool probs, int64_t vocab,
                                    float inv_t, float theta, int64_t seed, int64_t offset, const int64_t* tok,
                                    const int64_t* par, int64_t n, int64_t node, int64_t first, Scratch& sh,
                                    int64_t* next, int64_t* emitted) {
  const RowReader<TT> P(prow, vocab);
  const RowReader<TD> Q(qrow, vocab);
  // Entries past V in the last group read as -inf: probability 0 in every pass below (a
  // probability row's padding is never used: those entries have p = 0 and race as -inf).
  SoftmaxStats ps, qs;
  for_groups2<2>(P, Q, [&](int64_t, const float (&x)[4], const float (&y)[4], int) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      ps.add(filtered(scaled_logit(x[k], inv_t), theta));
      if (!probs) qs.add(scaled_logit(y[k], inv_t));
    }
  });
  ps = block_stats(ps, sh, 0);
  qs = block_stats(qs, sh, 1);
  auto p_of = [&](float x) { return ps.prob(filtered(scaled_logit(x, inv_t), theta)); };
  auto q_of = [&](float y) { return probs ? draft_prob(y) : qs.prob(scaled_logit(y, inv_t)); };
  float c = 0.0f, D = 1.0f;  // p' = max(0, p - c q) / D
  for (int64_t j = first; j >= 0;) {
    const int64_t x = tok[j];
    const float px = p_of(to_float(prow[x]));
    const float qx = q_of(to_float(qrow[x]));
    const float coin = random_uniform(seed, offset, Purpose::kTreeCoin, static_cast<uint32_t>(node),
                                      static_cast<uint64_t>(j));
    if (coin * qx < tree_residual_prob(px, qx, c, D)) {
      *next = j;
      *emitted = -1;
      return;
    }
    c += D;
    j = next_valid_child(tok, par, n, node, j + 1, vocab);
    if (j < 0) break;
    float mass = 0.0f;
    for_groups2<2>(P, Q, [&](int64_t, const float (&xp)[4], const float (&xq)[4], int cnt) {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float r = k < cnt ? tree_residual(p_of(xp[k]), c, q_of(xq[k])) : 0.0f;
        if (r > 0.0f) mass += r;
      }
    });
    mass = block_sum(mass, sh.sums);
    if (!(mass > 0.0f)) break;  // p' has no mass left: no later child is accepted
    D = mass;
  }
  // Emit from the final p' = norm(max(0, p - c q)); from p if that has no mass.
  BoundedRace residual, fallback;
  for_groups2<2>(P, Q, [&](int64_t g, const float (&xp)[4], const float (&xq)[4], int cnt) {
    const Philox4 bits = random_block(seed, offset, Purpose::kTreeResample, static_cast<uint32_t>(node),
                                      static_cast<uint64_t>(4 * g));
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (k >= cnt) break;
      const float xv = filtered(scaled_logit(xp[k], inv_t), theta);
      const float r = tree_residual(ps.prob(xv), c, q_of(xq[k]));
      const float lr = r > 0.0f ? logf(r) : -INFINITY;
      const bool use_r = !residual.hopeless(lr), use_f = !fallback.hopeless(xv);
      if (use_r || use_f) {
        const float gum = gumbel_from_bits(bits.v[k]);
        if (use_r) residual.add(lr, gum, 4 * g + k);
        if (use_f) fallback.add(xv, gum, 4 * g + k);
      }
    }
  });
  const uint64_t rkey = block_max_u64(residual.race.best, sh.keys);
  const uint64_t fkey = block_max_u64(fallback.race.best, sh.keys);
  *next = -1;
  *emitted = race_index(rkey != 0 ? rkey : fkey);
}

template <typename TT, typename TD>
struct TreeKernelArgs {
  const TT* target;
  const TD* draft;  // logits, or nullptr
  VerifyTreeParams p;
};

template <typename TT, typename TD>
__global__ void __launch_bounds__(kThreads) verify_tree_kernel(const TreeKernelArgs<TT, TD> a) {
  __shared__ Scratch sh;
  const VerifyTreeParams& p = a.p;
  const int64_t r = blockIdx.x, M = p.width, V = p.vocab;

  // Row start: Σ_{r' < r} n_r' (counts clamped to [0, M]); then this request's node count,
  // cut to the rows that exist.
  long long part = 0;
  for (int64_t k = threadIdx.x; k < r; k += blockDim.x) {
    const int64_t c = p.num_nodes[k];
    part += c < 0 ? 0 : (c > M ? M : c);
  }
  const int64_t first_row = block_sum(part, sh.isums);
  int64_t n = p.num_nodes[r];
  n = n < 0 ? 0 : (n > M ? M : n);
  const int64_t left = p.rows - first_row;
  n = n < left ? n : (left > 0 ? left : 0);

  int64_t* out = p.out_tokens + r * M;
  int64_t* out_nodes = p.accepted_nodes + r * M;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    out[i] = -1;
    out_nodes[i] = -1;
  }
  __syncthreads();  // thread 0 overwrites some of these below

  const int64_t* tok = p.tokens + r * M;
  const int64_t* par = p.parents + r * M;
  const float T = p.temperature[r], inv_t = inverse_temperature(T);
  const bool greedy = is_greedy(T);
  const int64_t seed = p.seed[r], offset = p.offset[r];
  const RowFilter filter = make_row_filter(p.top_k ? p.top_k[r] : 0, p.top_p ? p.top_p[r] : 1.0f,
                                           p.min_p ? p.min_p[r] : 0.0f, V);
  const bool has_q = a.draft != nullptr || p.draft_probs != nullptr;
  int64_t node = 0, accepted = 0, emitted = -1;
  bool stop = n == 0;
  while (!stop) {
    const TT* prow = a.target + (first_row + node) * V;
    int64_t next = -1;
    emitted = -1;
    const int64_t first = has_q && !greedy ? next_valid_child(tok, par, n, node, node + 1, V) : -1;
    if (greedy) {
      const int64_t best = row_argmax(prow, V, sh);
      next = child_with_token(tok, par, n, node, best);
      if (next < 0) emitted = best;
    } else {
      // Scalar loads: the tree kernel has no host-chosen width (its RowReader vectorises per row).
      const float theta = block_filter_threshold<1>(prow, V, inv_t, filter, sh.filter);
      if (first >= 0) {
        const int64_t qrow = (first_row + node) * V;
        if (p.draft_probs) {
          recursive_rejection(prow, p.draft_probs + qrow, true, V, inv_t, theta, seed, offset, tok, par, n, node, first,
                              sh, &next, &emitted);
        } else {
          recursive_rejection(prow, a.draft + qrow, false, V, inv_t, theta, seed, offset, tok, par, n, node, first, sh,
                              &next, &emitted);
        }
      } else {
        const int64_t y = row_race(prow, V, inv_t, theta, seed, offset, static_cast<uint32_t>(node), sh);
        next = has_q ? -1 : child_with_token(tok, par, n, node, y);
        if (next < 0) emitted = y;
      }
    }
    if (next < 0) {
      if (threadIdx.x == 0) out[accepted] = emitted;
      break;
    }
    const int64_t t = tok[next];
    if (threadIdx.x == 0) {
      out[accepted] = t;
      out_nodes[accepted] = next;
    }
    ++accepted;
    node = next;
    stop = is_eos(t, p.eos, p.num_eos);
  }
  if (threadIdx.x == 0) {
    p.num_accepted[r] = accepted;
    p.num_emitted[r] = accepted + (emitted >= 0 && n > 0 ? 1 : 0);
  }
}

template <typename TT, typename TD>
cudaError_t launch_typed(const VerifyTreeParams& p, cudaStream_t stream) {
  const TreeKernelArgs<TT, TD> a{static_cast<const TT*>(p.target), static_cast<const TD*>(p.draft), p};
  verify_tree_kernel<TT, TD><<<static_cast<unsigned>(p.requests), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_tree_metadata(const int64_t* parents, const int64_t* num_nodes, const int64_t* prefix_lens,
                                 int64_t requests, int64_t width, bool* attn_mask, int64_t* positions, int64_t* depth,
                                 cudaStream_t stream) {
  if (requests == 0 || width == 0) return cudaSuccess;
  if (requests > 0x7FFFFFFF) return cudaErrorInvalidValue;  // gridDim.x limit (one block per request)
  tree_metadata_kernel<<<static_cast<unsigned>(requests), kMetadataThreads, 0, stream>>>(
      parents, num_nodes, prefix_lens, width, attn_mask, positions, depth);
  return cudaGetLastError();
}

cudaError_t launch_verify_tree(const VerifyTreeParams& p, cudaStream_t stream) {
  if (p.requests == 0 || p.width == 0) return cudaSuccess;
  if (p.requests > 0x7FFFFFFF) return cudaErrorInvalidValue;
  return DSPARK_DISPATCH_FLOAT(p.target_dtype, TT, [&] {
    // Without draft logits the draft type is irrelevant: reuse the target's to avoid an
    // extra instantiation.
    const DType dd = p.draft != nullptr ? p.draft_dtype : p.target_dtype;
    return DSPARK_DISPATCH_FLOAT(dd, TD, [&] { return launch_typed<TT, TD>(p, stream); });
  });
}

}  // namespace dspark::cuda
