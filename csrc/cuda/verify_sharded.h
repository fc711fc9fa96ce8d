// Launchers of the vocab-parallel phase kernels (declared for the torch binding, defined in
// verify_sharded.cu). Records are laid out as in dspark/verify_sharded.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dspark/dtype.h"

namespace dspark::cuda {

// What every phase kernel reads: the shard and the per-request arguments.
struct ShardParams {
  const void* target;  // [rows, shard_vocab] of target_dtype
  DType target_dtype;
  const void* draft;  // chain: [R, γ, shard_vocab]; tree: [rows, shard_vocab]; or nullptr
  DType draft_dtype;
  int64_t rows, shard_vocab, vocab_start, vocab_size;
  int64_t requests, width;   // R; γ (chain) or M (tree)
  const int64_t* tokens;     // chain: draft_tokens [R, γ]; tree: tree_tokens [R, M]
  const int64_t* counts;     // chain: lengths [R]; tree: num_nodes [R]
  const int64_t* parents;    // tree: [R, M]; chain: nullptr
  const float* temperature;  // [R]
  const int64_t* seed;       // [R]
  const int64_t* offset;     // [R]
  const int64_t* eos;        // [E] or nullptr
  int64_t num_eos;
  const int64_t* stats;  // gathered [world, rows, 5] (the phases after the stats)
  int64_t world;
};

// -> stats [rows, 5] (every element written).
cudaError_t launch_chain_shard_stats(const ShardParams& p, int64_t* stats, cudaStream_t stream);
// out_tokens [R, γ+1] pre-filled with -1; -> num_accepted, num_emitted [R], race_keys [R, 2].
cudaError_t launch_chain_shard_decide(const ShardParams& p, int64_t* out_tokens, int64_t* num_accepted,
                                      int64_t* num_emitted, int64_t* race_keys, cudaStream_t stream);
cudaError_t launch_tree_shard_stats(const ShardParams& p, int64_t* stats, cudaStream_t stream);
// walk [R, 6] (written first when fresh), out_tokens / accepted_nodes [R, M] updated in place;
// masses [mass_world, R] or nullptr; -> partial_mass [R].
cudaError_t launch_tree_shard_walk(const ShardParams& p, bool fresh, int64_t* walk, int64_t* out_tokens,
                                   int64_t* accepted_nodes, const float* masses, int64_t mass_world,
                                   float* partial_mass, cudaStream_t stream);
cudaError_t launch_tree_shard_race(const ShardParams& p, const int64_t* walk, int64_t* race_keys, int64_t* num_accepted,
                                   int64_t* num_emitted, cudaStream_t stream);
// out_tokens [R, C] updated in place from race_keys [world, R, 2].
cudaError_t launch_shard_finish(int64_t* out_tokens, int64_t requests, int64_t columns, const int64_t* num_accepted,
                                const int64_t* num_emitted, const int64_t* race_keys, int64_t world,
                                cudaStream_t stream);

}  // namespace dspark::cuda
