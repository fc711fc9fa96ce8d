// Launcher of the CUDA verify_chain pipeline (defined in verify_chain.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "dspark/dtype.h"

namespace dspark::cuda {

struct VerifyChainParams {
  const void* target_logits;  // [N, V], dtype target_dtype
  const void* draft_logits;   // [R, γ, W], dtype draft_dtype, or nullptr
  const float* draft_probs;   // [R, γ, W] q as given, or nullptr (neither: one-hot q)
  const int64_t* draft_ids;   // [R, γ, W] sparse q's ids (-1 padding), or nullptr (dense: W = V)
  int64_t draft_width;        // W
  const int64_t* top_k;       // [R] or nullptr (SPEC §9 filters of the target rows)
  const float* top_p;         // [R] or nullptr
  const float* min_p;         // [R] or nullptr
  const int64_t* draft_tokens;  // [R, γ]
  const int64_t* lengths;       // [R]
  const float* temperature;     // [R]
  const int64_t* seed;          // [R]
  const int64_t* offset;        // [R]
  const int64_t* eos_ids;       // [E] or nullptr
  int64_t num_eos, requests, gamma, vocab, rows;
  DType target_dtype, draft_dtype;
  int64_t* out_tokens;    // [R, γ + 1], pre-filled with -1
  int64_t* num_accepted;  // [R]
  int64_t* num_emitted;   // [R]
};

// Bytes of device scratch the pipeline needs for these sizes.
size_t verify_chain_workspace_bytes(int64_t requests, int64_t gamma, int64_t vocab);

// Runs the pipeline on `stream`; `workspace` holds verify_chain_workspace_bytes(...) bytes.
cudaError_t launch_verify_chain(const VerifyChainParams& p, void* workspace, cudaStream_t stream);

}  // namespace dspark::cuda
