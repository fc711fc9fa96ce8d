// Launchers of the tree kernels (declared for the torch binding, defined in verify_tree.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dspark/dtype.h"

namespace dspark::cuda {

// parents [R, M], num_nodes [R], prefix_lens [R] -> attn_mask [R, M, M] (bool as uint8),
// positions [R, M], depth [R, M]. Every output element is written.
cudaError_t launch_tree_metadata(const int64_t* parents, const int64_t* num_nodes, const int64_t* prefix_lens,
                                 int64_t requests, int64_t width, bool* attn_mask, int64_t* positions, int64_t* depth,
                                 cudaStream_t stream);

struct VerifyTreeParams {
  const void* target;  // [rows, vocab] of target_dtype
  DType target_dtype;
  const void* draft;  // [rows, W] of draft_dtype (logits), or nullptr
  DType draft_dtype;
  const float* draft_probs;  // [rows, W] q as given, or nullptr (neither: deterministic children)
  const int64_t* draft_ids;  // [rows, W] sparse q's ids (-1 padding), or nullptr (dense: W = vocab)
  int64_t draft_width;       // W
  const int64_t* top_k;      // [R] or nullptr (SPEC §9 filters of the target rows)
  const float* top_p;        // [R] or nullptr
  const float* min_p;        // [R] or nullptr
  int64_t rows, vocab;
  const int64_t* tokens;     // [R, M]
  const int64_t* parents;    // [R, M]
  const int64_t* num_nodes;  // [R]
  int64_t requests, width;   // R, M
  const float* temperature;  // [R]
  const int64_t* seed;       // [R]
  const int64_t* offset;     // [R]
  const int64_t* eos;        // [E] (may be nullptr when E = 0)
  int64_t num_eos;
  int64_t* out_tokens;      // [R, M] every element written
  int64_t* accepted_nodes;  // [R, M] every element written
  int64_t* num_accepted;    // [R]
  int64_t* num_emitted;     // [R]
};

// The legacy kernel (DSPARK_VERIFY_TREE_KERNEL=legacy): one block per request, dense q only.
cudaError_t launch_verify_tree_legacy(const VerifyTreeParams& p, cudaStream_t stream);

// The split kernel (default): a group of blocks per request, each pass over a row split into
// fixed chunks (verify_tree_split.cu). Its device scratch, from the caller's allocator:
struct VerifyTreeSplitPlan {
  int group;              // blocks per request (depends on R and the SM count, never the outputs)
  int64_t zeroed_words;   // uint32 words that must be zero at launch: counters, listed-id bitmaps
  int64_t partial_bytes;  // chunk partials (no initial value needed)
};
// Blocks of the split kernel for p's dtypes that one SM of the current device holds at once
// (an occupancy query: callers cache it per device and dtypes). Sets *err on failure.
int verify_tree_split_blocks_per_sm(const VerifyTreeParams& p, cudaError_t* err);
// `sms`: the SMs the launch's stream may use (cuda/device_sms.h). The group never exceeds
// sms x blocks_per_sm, the blocks that can wait for each other at once (nor drops below 1).
VerifyTreeSplitPlan plan_verify_tree_split(const VerifyTreeParams& p, int sms, int blocks_per_sm);
cudaError_t launch_verify_tree_split(const VerifyTreeParams& p, const VerifyTreeSplitPlan& plan, uint32_t* zeroed,
                                     void* partials, cudaStream_t stream);

}  // namespace dspark::cuda
