// CUDA kernels of the vocab-parallel phase ops (SPEC §11), mirroring csrc/cpu/verify_sharded.cpp:
// the per-request decisions are the shared host+device functions of dspark/verify_sharded.h,
// run by thread 0 of a block; the passes over a shard row are spread over the block and
// reduced with the block reductions of cuda/common.cuh.
//
//   stats:   one block per logit row (grid R x (γ+1) or R x M; blocks of rows a request does
//            not have return at once): softmax statistics, argmax key or race key of the row.
//   decide / walk / race: one block per request; the block reads one shard row where a token
//            is drawn (or a residual mass is summed).
//   finish:  one thread per request.
// Shared memory is raw bytes (the accumulators have constructors, which __shared__ forbids).
// Every value that steers control flow is broadcast from shared memory, so blocks branch
// uniformly. No host sync; all offsets are int64.
#include "cuda/common.cuh"
#include "cuda/verify_sharded.h"
#include "dspark/verify_sharded.h"

namespace dspark::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;

// Block-shared scratch for the reductions and broadcasts of one kernel.
struct alignas(16) SharedBytes {
  unsigned char bytes[kWarps * sizeof(SoftmaxStats) + 64];
  template <typename T>
  __device__ T* as() {
    return reinterpret_cast<T*>(bytes);
  }
};

// Index of request r's first row: Σ_{r' < r} (clamp(counts[r'], 0, hi) + extra), every thread.
__device__ int64_t block_first_row(const int64_t* counts, int64_t r, int64_t extra, int64_t hi, SharedBytes& sh) {
  long long acc = 0;
  for (int64_t i = threadIdx.x; i < r; i += blockDim.x) {
    const int64_t c = counts[i];
    acc += (c < 0 ? 0 : (c > hi ? hi : c)) + extra;
  }
  return block_sum(acc, sh.as<long long>());
}

__device__ int64_t clamp_count(int64_t c, int64_t hi) { return c < 0 ? 0 : (c > hi ? hi : c); }

template <typename T>
__device__ SoftmaxStats block_softmax(const T* row, int64_t count, float inv_temperature, SharedBytes& sh) {
  SoftmaxStats s;
  block_for_each<1>(row, 0, count, [&](float x, int64_t) { s.add(scaled_logit(x, inv_temperature)); });
  return block_merge(s, sh.as<SoftmaxStats>());
}

template <typename T>
__device__ uint64_t block_argmax_key(const T* row, int64_t count, int64_t start, SharedBytes& sh) {
  uint64_t best = 0;
  block_for_each<1>(row, 0, count, [&](float x, int64_t v) { best = max_u64(best, argmax_key(x, start + v)); });
  return block_max_u64(best, sh.as<uint64_t>());
}

// The two races of a drawn token over the shard (see shard_two_races in the CPU file):
// residual log-weights from residual(v, id, xs) (or none when !with_residual) and the fallback
// race over xs. Returns both block-reduced keys in key[0..1] (every thread).
template <typename T, typename Residual>
__device__ void block_two_races(const T* row, int64_t count, int64_t start, float inv_temperature, int64_t seed,
                                int64_t offset, Purpose purpose, uint32_t position, bool with_residual, SharedBytes& sh,
                                uint64_t (&key)[2], Residual&& residual) {
  BoundedRace res, fallback;
  for_each_shard_bits(start, count, seed, offset, purpose, position, threadIdx.x, blockDim.x,
                      [&](int64_t v, int64_t id, uint32_t bits) {
                        const float xs = scaled_logit(to_float(row[v]), inv_temperature);
                        const float lr = with_residual ? residual(v, id, xs) : -INFINITY;
                        const bool use_r = !res.hopeless(lr), use_f = !fallback.hopeless(xs);
                        if (!use_r && !use_f) return;
                        const float g = gumbel_from_bits(bits);
                        if (use_r) res.add(lr, g, id);
                        if (use_f) fallback.add(xs, g, id);
                      });
  key[0] = block_max_u64(res.race.best, sh.as<uint64_t>());
  key[1] = block_max_u64(fallback.race.best, sh.as<uint64_t>());
}

__global__ void fill_empty_stats_kernel(ShardRowStats* stats, int64_t rows) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    stats[i] = empty_row_stats();
}

// ---------------------------------------------------------------------------------------
// verify_chain

template <typename TT, typename TD>
__global__ void __launch_bounds__(kThreads) chain_stats_kernel(ShardParams p, ShardRowStats* out) {
  __shared__ SharedBytes sh;
  const int64_t r = blockIdx.x, k = blockIdx.y, V = p.shard_vocab;
  const int64_t first = block_first_row(p.counts, r, 1, p.width, sh);
  const int64_t length = clamp_count(p.counts[r], p.width);
  if (k > length || !rows_exist(first, length + 1, p.rows)) return;
  const float T = p.temperature[r], inv_t = inverse_temperature(T);
  const TT* row = static_cast<const TT*>(p.target) + (first + k) * V;
  ShardRowStats st = empty_row_stats();
  if (is_greedy(T)) {
    st.argmax_key = block_argmax_key(row, V, p.vocab_start, sh);
  } else {
    const SoftmaxStats ps = block_softmax(row, V, inv_t, sh);
    st.p_max = ps.max;
    st.p_sum = ps.sum;
    if (k < length) {
      const TD* qrow = p.draft ? static_cast<const TD*>(p.draft) + (r * p.width + k) * V : nullptr;
      if (qrow) {
        const SoftmaxStats qs = block_softmax(qrow, V, inv_t, sh);
        st.q_max = qs.max;
        st.q_sum = qs.sum;
      }
      const int64_t x = p.tokens[r * p.width + k] - p.vocab_start;
      if (x >= 0 && x < V) {
        st.p_x = scaled_logit(to_float(row[x]), inv_t);
        if (qrow) st.q_x = scaled_logit(to_float(qrow[x]), inv_t);
      }
    }
  }
  if (threadIdx.x == 0) out[first + k] = st;
}

// __maxnreg__(80) rather than __launch_bounds__: with launch bounds alone ptxas settled on 64
// registers on sm_80 and spilled 4 bytes; 80 x 256 threads still allow 3 blocks per SM.
template <typename TT, typename TD>
__global__ void __maxnreg__(80) chain_decide_kernel(ShardParams p, int64_t* out_tokens, int64_t* num_accepted,
                                                    int64_t* num_emitted, uint64_t* keys) {
  __shared__ SharedBytes sh;
  __shared__ alignas(16) unsigned char decision_raw[sizeof(ChainDecision)];
  ChainDecision& shared_d = *reinterpret_cast<ChainDecision*>(decision_raw);
  const int64_t r = blockIdx.x, V = p.shard_vocab;
  const int64_t first = block_first_row(p.counts, r, 1, p.width, sh);
  const int64_t length = clamp_count(p.counts[r], p.width);
  uint64_t* key = keys + r * kRaceKeyWords;
  if (!rows_exist(first, length + 1, p.rows)) {
    if (threadIdx.x == 0) num_accepted[r] = num_emitted[r] = 0, key[0] = key[1] = 0;
    return;
  }
  const float T = p.temperature[r], inv_t = inverse_temperature(T);
  const int64_t seed = p.seed[r], offset = p.offset[r];
  if (threadIdx.x == 0) {
    shared_d = chain_decide(p.tokens + r * p.width, length, first, T, seed, offset,
                            reinterpret_cast<const ShardRowStats*>(p.stats), p.world, p.rows, p.draft != nullptr,
                            p.vocab_size, p.eos, p.num_eos, out_tokens + r * (p.width + 1));
    num_accepted[r] = shared_d.accepted;
    num_emitted[r] = shared_d.accepted + (shared_d.emit != kEmitNone ? 1 : 0);
  }
  __syncthreads();
  const ChainDecision d = shared_d;
  uint64_t k2[2] = {d.emit == kEmitKnown ? known_token_key(d.token) : 0, 0};
  if (d.emit >= kEmitFromP) {
    const TT* row = static_cast<const TT*>(p.target) + d.row * V;
    const TD* qrow = p.draft && d.emit == kEmitPMinusQ
                         ? static_cast<const TD*>(p.draft) + (r * p.width + d.position - 1) * V
                         : nullptr;
    block_two_races(row, V, p.vocab_start, inv_t, seed, offset, Purpose::kChainResample, d.position,
                    d.emit != kEmitFromP, sh, k2, [&](int64_t v, int64_t id, float xs) {
                      return chain_residual_log_weight(d, xs, qrow ? scaled_logit(to_float(qrow[v]), inv_t) : -INFINITY,
                                                       id);
                    });
  }
  if (threadIdx.x == 0) key[0] = k2[0], key[1] = k2[1];
}

// ---------------------------------------------------------------------------------------
// verify_tree

__device__ TreeView tree_view(const ShardParams& p, int64_t r, int64_t first) {
  return TreeView{p.tokens + r * p.width,
                  p.parents + r * p.width,
                  clamp_count(p.counts[r], p.width),
                  first,
                  p.temperature[r],
                  p.seed[r],
                  p.offset[r],
                  p.draft != nullptr,
                  p.vocab_size};
}

template <typename TT, typename TD>
__global__ void __launch_bounds__(kThreads) tree_stats_kernel(ShardParams p, ShardRowStats* out) {
  __shared__ SharedBytes sh;
  const int64_t r = blockIdx.x, i = blockIdx.y, V = p.shard_vocab;
  const TreeView t = tree_view(p, r, block_first_row(p.counts, r, 0, p.width, sh));
  const float inv_t = inverse_temperature(t.temperature);
  if (i >= t.nodes || !rows_exist(t.first_row, t.nodes, p.rows)) return;
  const TT* target = static_cast<const TT*>(p.target);
  const TD* draft = static_cast<const TD*>(p.draft);
  const TT* row = target + (t.first_row + i) * V;
  ShardRowStats st = empty_row_stats();
  if (is_greedy(t.temperature)) {
    st.argmax_key = block_argmax_key(row, V, p.vocab_start, sh);
  } else {
    if (draft && tree_next_valid_child(t, i, i + 1) >= 0) {
      const SoftmaxStats ps = block_softmax(row, V, inv_t, sh);
      const SoftmaxStats qs = block_softmax(draft + (t.first_row + i) * V, V, inv_t, sh);
      st.p_max = ps.max;
      st.p_sum = ps.sum;
      st.q_max = qs.max;
      st.q_sum = qs.sum;
    } else {
      BoundedRace race;
      for_each_shard_bits(p.vocab_start, V, t.seed, t.offset, Purpose::kTreeResample, static_cast<uint32_t>(i),
                          threadIdx.x, blockDim.x, [&](int64_t v, int64_t id, uint32_t bits) {
                            race.add_bits(scaled_logit(to_float(row[v]), inv_t), bits, id);
                          });
      st.race_key = block_max_u64(race.race.best, sh.as<uint64_t>());
    }
    const int64_t parent = t.parents[i], x = t.tokens[i] - p.vocab_start;
    if (draft && i > 0 && parent >= 0 && parent < i && x >= 0 && x < V) {
      st.p_x = scaled_logit(to_float(target[(t.first_row + parent) * V + x]), inv_t);
      st.q_x = scaled_logit(to_float(draft[(t.first_row + parent) * V + x]), inv_t);
    }
  }
  if (threadIdx.x == 0) out[t.first_row + i] = st;
}

template <typename TT, typename TD>
__global__ void __launch_bounds__(kThreads)
    tree_walk_kernel(ShardParams p, bool fresh, TreeWalk* walks, int64_t* out_tokens, int64_t* accepted_nodes,
                     const float* masses, int64_t mass_world, float* partial) {
  __shared__ SharedBytes sh;
  __shared__ alignas(16) unsigned char state_raw[sizeof(TreeWalk) + 2 * sizeof(SoftmaxStats)];
  TreeWalk& shared_w = *reinterpret_cast<TreeWalk*>(state_raw);
  SoftmaxStats* shared_pq = reinterpret_cast<SoftmaxStats*>(state_raw + sizeof(TreeWalk));
  const int64_t r = blockIdx.x, V = p.shard_vocab;
  const TreeView t = tree_view(p, r, block_first_row(p.counts, r, 0, p.width, sh));
  const float inv_t = inverse_temperature(t.temperature);
  const ShardRowStats* gathered = reinterpret_cast<const ShardRowStats*>(p.stats);
  if (threadIdx.x == 0) {
    TreeWalk w = fresh ? tree_walk_start() : walks[r];
    if (t.nodes == 0 || !rows_exist(t.first_row, t.nodes, p.rows)) {
      w.status = kWalkDone;
      w.token = -1;
    } else {
      float D = 0.0f;  // rank order, as on the CPU
      for (int64_t k = 0; masses && k < mass_world; ++k) D += masses[k * p.requests + r];
      tree_advance(w, t, gathered, p.world, p.rows, D, p.eos, p.num_eos, out_tokens + r * p.width,
                   accepted_nodes + r * p.width);
      if (w.status == kWalkNeedMass) {
        const MergedRow m = merge_row(gathered, p.world, p.rows, t.first_row + w.node);
        shared_pq[0] = m.p;
        shared_pq[1] = m.q;
      }
    }
    walks[r] = w;
    shared_w = w;
  }
  __syncthreads();
  const TreeWalk w = shared_w;
  float sum = 0.0f;
  if (w.status == kWalkNeedMass) {
    const SoftmaxStats ps = shared_pq[0], qs = shared_pq[1];
    const TT* row = static_cast<const TT*>(p.target) + (t.first_row + w.node) * V;
    const TD* qrow = static_cast<const TD*>(p.draft) + (t.first_row + w.node) * V;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const float rv = tree_residual(ps.prob(scaled_logit(to_float(row[v]), inv_t)), w.c,
                                     qs.prob(scaled_logit(to_float(qrow[v]), inv_t)));
      if (rv > 0.0f) sum += rv;
    }
    sum = block_sum(sum, sh.as<float>());
  }
  if (threadIdx.x == 0) partial[r] = sum;
}

template <typename TT, typename TD>
__global__ void __launch_bounds__(kThreads) tree_race_kernel(ShardParams p, const TreeWalk* walks, uint64_t* keys,
                                                             int64_t* num_accepted, int64_t* num_emitted) {
  __shared__ SharedBytes sh;
  const int64_t r = blockIdx.x, V = p.shard_vocab;
  const TreeView t = tree_view(p, r, block_first_row(p.counts, r, 0, p.width, sh));
  const float inv_t = inverse_temperature(t.temperature);
  const TreeWalk w = walks[r];
  const bool race = w.status == kWalkNeedRace || w.status == kWalkNeedMass;
  uint64_t k2[2] = {!race && w.token >= 0 ? known_token_key(w.token) : 0, 0};
  if (race && p.draft) {
    const MergedRow m = merge_row(reinterpret_cast<const ShardRowStats*>(p.stats), p.world, p.rows,
                                  t.first_row + w.node);
    const TT* row = static_cast<const TT*>(p.target) + (t.first_row + w.node) * V;
    const TD* qrow = static_cast<const TD*>(p.draft) + (t.first_row + w.node) * V;
    block_two_races(row, V, p.vocab_start, inv_t, t.seed, t.offset, Purpose::kTreeResample,
                    static_cast<uint32_t>(w.node), true, sh, k2, [&](int64_t v, int64_t, float xs) {
                      const float rv = tree_residual(m.p.prob(xs), w.c,
                                                     m.q.prob(scaled_logit(to_float(qrow[v]), inv_t)));
                      return rv > 0.0f ? logf(rv) : -INFINITY;
                    });
  }
  if (threadIdx.x == 0) {
    num_accepted[r] = w.accepted;
    num_emitted[r] = w.accepted + (race || w.token >= 0 ? 1 : 0);
    keys[r * kRaceKeyWords] = k2[0];
    keys[r * kRaceKeyWords + 1] = k2[1];
  }
}

__global__ void finish_kernel(int64_t* out, int64_t requests, int64_t columns, const int64_t* num_accepted,
                              const int64_t* num_emitted, const uint64_t* keys, int64_t world) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= requests) return;
  const int64_t a = num_accepted[r];
  if (num_emitted[r] <= a || a < 0 || a >= columns) return;
  out[r * columns + a] = gathered_race_token(keys, world, requests, r);
}

// Launches kernel<TT, TD> with the storage types of the shard's target and draft.
template <template <typename, typename> class Launch, typename... Args>
cudaError_t dispatch_launch(const ShardParams& p, Args&&... args) {
  return DSPARK_DISPATCH_FLOAT(p.target_dtype, TT, [&] {
    return DSPARK_DISPATCH_FLOAT(p.draft_dtype, TD, [&] { return Launch<TT, TD>::run(p, args...); });
  });
}

int stats_fill_blocks(int64_t rows) {
  return static_cast<int>(rows / kThreads + 1 < 4096 ? rows / kThreads + 1 : 4096);
}

template <typename TT, typename TD>
struct ChainStats {
  static cudaError_t run(const ShardParams& p, int64_t* stats, cudaStream_t s) {
    auto* out = reinterpret_cast<ShardRowStats*>(stats);
    fill_empty_stats_kernel<<<stats_fill_blocks(p.rows), kThreads, 0, s>>>(out, p.rows);
    chain_stats_kernel<TT, TD><<<dim3(p.requests, p.width + 1), kThreads, 0, s>>>(p, out);
    return cudaGetLastError();
  }
};

template <typename TT, typename TD>
struct ChainDecide {
  static cudaError_t run(const ShardParams& p, int64_t* out, int64_t* acc, int64_t* emit, int64_t* keys,
                         cudaStream_t s) {
    chain_decide_kernel<TT, TD><<<p.requests, kThreads, 0, s>>>(p, out, acc, emit, reinterpret_cast<uint64_t*>(keys));
    return cudaGetLastError();
  }
};

template <typename TT, typename TD>
struct TreeStats {
  static cudaError_t run(const ShardParams& p, int64_t* stats, cudaStream_t s) {
    auto* out = reinterpret_cast<ShardRowStats*>(stats);
    fill_empty_stats_kernel<<<stats_fill_blocks(p.rows), kThreads, 0, s>>>(out, p.rows);
    tree_stats_kernel<TT, TD><<<dim3(p.requests, p.width), kThreads, 0, s>>>(p, out);
    return cudaGetLastError();
  }
};

template <typename TT, typename TD>
struct TreeWalkStep {
  static cudaError_t run(const ShardParams& p, bool fresh, int64_t* walk, int64_t* out, int64_t* nodes,
                         const float* masses, int64_t mass_world, float* partial, cudaStream_t s) {
    tree_walk_kernel<TT, TD><<<p.requests, kThreads, 0, s>>>(p, fresh, reinterpret_cast<TreeWalk*>(walk), out, nodes,
                                                             masses, mass_world, partial);
    return cudaGetLastError();
  }
};

template <typename TT, typename TD>
struct TreeRace {
  static cudaError_t run(const ShardParams& p, const int64_t* walk, int64_t* keys, int64_t* acc, int64_t* emit,
                         cudaStream_t s) {
    tree_race_kernel<TT, TD><<<p.requests, kThreads, 0, s>>>(p, reinterpret_cast<const TreeWalk*>(walk),
                                                             reinterpret_cast<uint64_t*>(keys), acc, emit);
    return cudaGetLastError();
  }
};

}  // namespace

cudaError_t launch_chain_shard_stats(const ShardParams& p, int64_t* stats, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  if (p.requests == 0) {
    fill_empty_stats_kernel<<<stats_fill_blocks(p.rows), kThreads, 0, stream>>>(reinterpret_cast<ShardRowStats*>(stats),
                                                                                p.rows);
    return cudaGetLastError();
  }
  return dispatch_launch<ChainStats>(p, stats, stream);
}

cudaError_t launch_chain_shard_decide(const ShardParams& p, int64_t* out_tokens, int64_t* num_accepted,
                                      int64_t* num_emitted, int64_t* race_keys, cudaStream_t stream) {
  if (p.requests == 0) return cudaSuccess;
  return dispatch_launch<ChainDecide>(p, out_tokens, num_accepted, num_emitted, race_keys, stream);
}

cudaError_t launch_tree_shard_stats(const ShardParams& p, int64_t* stats, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  if (p.requests == 0 || p.width == 0) {
    fill_empty_stats_kernel<<<stats_fill_blocks(p.rows), kThreads, 0, stream>>>(reinterpret_cast<ShardRowStats*>(stats),
                                                                                p.rows);
    return cudaGetLastError();
  }
  return dispatch_launch<TreeStats>(p, stats, stream);
}

cudaError_t launch_tree_shard_walk(const ShardParams& p, bool fresh, int64_t* walk, int64_t* out_tokens,
                                   int64_t* accepted_nodes, const float* masses, int64_t mass_world,
                                   float* partial_mass, cudaStream_t stream) {
  if (p.requests == 0 || p.width == 0) return cudaSuccess;
  return dispatch_launch<TreeWalkStep>(p, fresh, walk, out_tokens, accepted_nodes, masses, mass_world, partial_mass,
                                       stream);
}

cudaError_t launch_tree_shard_race(const ShardParams& p, const int64_t* walk, int64_t* race_keys, int64_t* num_accepted,
                                   int64_t* num_emitted, cudaStream_t stream) {
  if (p.requests == 0 || p.width == 0) return cudaSuccess;
  return dispatch_launch<TreeRace>(p, walk, race_keys, num_accepted, num_emitted, stream);
}

cudaError_t launch_shard_finish(int64_t* out_tokens, int64_t requests, int64_t columns, const int64_t* num_accepted,
                                const int64_t* num_emitted, const int64_t* race_keys, int64_t world,
                                cudaStream_t stream) {
  if (requests == 0) return cudaSuccess;
  const int blocks = static_cast<int>((requests + kThreads - 1) / kThreads);
  finish_kernel<<<blocks, kThreads, 0, stream>>>(out_tokens, requests, columns, num_accepted, num_emitted,
                                                 reinterpret_cast<const uint64_t*>(race_keys), world);
  return cudaGetLastError();
}

}  // namespace dspark::cuda
