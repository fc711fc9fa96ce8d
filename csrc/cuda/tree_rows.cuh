// Device pieces shared by the two CUDA verify_tree kernels (verify_tree.cu: one block per
// request; verify_tree_split.cu: a group of blocks per request): row reading in groups of four
// ids, the child scans of the walk, and where a request's rows start.
#pragma once

#include "cuda/common.cuh"
#include "cuda/verify_tree.h"
#include "dspark/eos.h"
#include "dspark/filters.h"

namespace dspark::cuda {

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

// One request's walk from the root and its outputs, the same in every thread of a block (and
// in every block of a group). `writer`: this block writes the outputs (thread 0 of it).
struct TreeWalk {
  const int64_t* tok;  // [M]
  const int64_t* par;  // [M]
  int64_t request, first_row, nodes;  // first row: Σ_{r' < r} n_r' (counts clamped to [0, M])
  float T, inv_t;  // temperature and 1/T (scaled_logit's argument)
  bool greedy;
  int64_t seed, offset;
  RowFilter filter;
  int64_t* out;        // [M]
  int64_t* out_nodes;  // [M]
  bool writer;
  int64_t node = 0, accepted = 0, emitted = -1;
  bool done;

  // Fills this request's outputs with -1 (writer) and cuts its node count to the rows that exist.
  __device__ TreeWalk(const VerifyTreeParams& p, int64_t r, bool writes, long long* scratch)
      : request(r), writer(writes) {
    const int64_t M = p.width;
    long long part = 0;
    for (int64_t k = threadIdx.x; k < r; k += blockDim.x) {
      const int64_t c = p.num_nodes[k];
      part += c < 0 ? 0 : (c > M ? M : c);
    }
    first_row = block_sum(part, scratch);
    int64_t n = p.num_nodes[r];
    n = n < 0 ? 0 : (n > M ? M : n);
    const int64_t left = p.rows - first_row;
    nodes = n < left ? n : (left > 0 ? left : 0);
    tok = p.tokens + r * M;
    par = p.parents + r * M;
    out = p.out_tokens + r * M;
    out_nodes = p.accepted_nodes + r * M;
    if (writer) {
      for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
        out[i] = -1;
        out_nodes[i] = -1;
      }
    }
    __syncthreads();  // thread 0 overwrites some of these below
    T = p.temperature[r];
    inv_t = inverse_temperature(T);
    greedy = is_greedy(T);
    seed = p.seed[r];
    offset = p.offset[r];
    filter = make_row_filter(p.top_k ? p.top_k[r] : 0, p.top_p ? p.top_p[r] : 1.0f, p.min_p ? p.min_p[r] : 0.0f,
                             p.vocab);
    done = nodes == 0;
  }

  __device__ int64_t row() const { return first_row + node; }  // the current node's row
  // The current node's first child with `token` / with a token in [0, V) (-1: none).
  __device__ int64_t child(int64_t token) const { return child_with_token(tok, par, nodes, node, token); }
  __device__ int64_t first_valid_child(int64_t vocab) const {
    return next_valid_child(tok, par, nodes, node, node + 1, vocab);
  }

  // The current node's outcome: move to child `next`, or (next < 0) emit `token` and stop.
  __device__ void advance(const VerifyTreeParams& p, int64_t next, int64_t token) {
    const bool w = writer && threadIdx.x == 0;
    emitted = next < 0 ? token : -1;
    if (next < 0) {
      if (w) out[accepted] = token;
      done = true;
      return;
    }
    const int64_t t = tok[next];
    if (w) {
      out[accepted] = t;
      out_nodes[accepted] = next;
    }
    ++accepted;
    node = next;
    done = is_eos(t, p.eos, p.num_eos);
  }

  __device__ void finish(const VerifyTreeParams& p) const {
    if (!writer || threadIdx.x != 0) return;
    p.num_accepted[request] = accepted;
    p.num_emitted[request] = accepted + (emitted >= 0 && nodes > 0 ? 1 : 0);
  }
};

// Reads a logits row in groups of four consecutive entries (group g = ids 4g..4g+3, the ids of
// one Philox call), with one 8-byte (bf16/fp16) or 16-byte (fp32) load per group when the row
// is aligned (it is whenever V is a multiple of 4 with 16-byte aligned storage, e.g.
// V = 151,936), and four scalar loads otherwise. The last group may be partial (any V).
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

// Visits the groups begin, begin + stride, ... below `end`, U of them loaded before any is
// used so that U loads per row are in flight per thread (the passes are bound by memory
// latency): f(g, x, n). A block sweeps a row with (threadIdx.x, blockDim.x, groups()); a warp
// sweeps a chunk of 32 U groups with (chunk start + lane, 32, chunk end).
template <int U, typename T, typename F>
__device__ __forceinline__ void for_groups(const RowReader<T>& P, int64_t begin, int64_t stride, int64_t end, F&& f) {
  for (int64_t g0 = begin; g0 < end; g0 += U * stride) {
    float x[U][4];
    int n[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t g = g0 + u * stride;
      n[u] = g < end ? P.load(g, x[u]) : 0;
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (n[u] > 0) f(g0 + u * stride, x[u], n[u]);
  }
}

// The same over two rows of one length (p and a dense q of a node): f(g, xp, xq, n).
template <int U, typename T1, typename T2, typename F>
__device__ __forceinline__ void for_groups2(const RowReader<T1>& P, const RowReader<T2>& Q, int64_t begin,
                                            int64_t stride, int64_t end, F&& f) {
  for (int64_t g0 = begin; g0 < end; g0 += U * stride) {
    float x[U][4], y[U][4];
    int n[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t g = g0 + u * stride;
      n[u] = g < end ? P.load(g, x[u]) : 0;
      if (g < end) Q.load(g, y[u]);
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (n[u] > 0) f(g0 + u * stride, x[u], y[u], n[u]);
  }
}

}  // namespace dspark::cuda
