// Launcher of the markov_draft kernel (declared for the torch binding, defined in markov_draft.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dspark/dtype.h"

namespace dspark::cuda {

// Vocabulary rows per tile of the logits phase; its partials are per tile: [R, ceil(V / 32)].
constexpr int kMarkovTileRows = 32;

// Raw pointers of one markov_draft call. "T" below is the storage dtype of base_logits (and
// of every weight); float buffers are float32. Buffers written by one block and read by
// another inside the kernel are not const.
struct MarkovDraftParams {
  DType dtype;
  int64_t requests, gamma, vocab, rank, hidden_size;  // R, γ, V, r, d
  int head;                                      // dspark::MarkovHead
  int confidence;                                // dspark::ConfidenceInput
  const void* base_logits;     // [R, γ, V] T
  const int64_t* anchor;       // [R]
  const void* w1;              // [V, r] T
  const void* w2;              // [V, r] T
  const float* temperature;    // [R]
  const int64_t* seed;         // [R]
  const int64_t* offset;       // [R]
  const void* hidden;          // [R, γ, d] T or null
  const void* head_weight;     // gated [r, d + r] / RNN [3r, 2r + d] T, or null (vanilla)
  const void* head_bias;       // gated [r] / RNN [3r] T, or null
  const void* conf_weight;     // [d] or [d + r] T, or null
  const void* conf_bias;       // [1] T, or null
  const float* conf_scale;     // [γ] or null
  const int64_t* top_k;        // [R] or null: SPEC §9 filters (make_row_filter normalises them)
  const float* top_p;          // [R] or null
  const float* min_p;          // [R] or null
  int64_t* tokens;             // [R, γ] out
  void* draft_logits;          // [R, γ, V] T out
  float* token_logprob;        // [R, γ] out
  float* confidence_out;       // [R, γ] out (pre-filled with ones)
  float* head_vector;          // [R, r] scratch: the vector multiplied by w2 at this position
  // RNN state, zero on entry (RNN head only): [R, r] updated in place by head_step (the pruned and
  // legacy kernels), or [2, R, r] in the default and fma dense kernels (head_units: s_{k-1} in buffer
  // (k-1) & 1, s_k written to buffer k & 1).
  float* state;                  // [R, r] or [2, R, r] scratch
  float* part_max;               // [R, ceil(V / 32)] scratch: per-tile softmax max
  float* part_sum;               // [R, ceil(V / 32)] scratch: per-tile softmax sum
  unsigned long long* part_key;  // [R, ceil(V / 32)] scratch: per-tile race / argmax key
  int resident_tiles;          // > 0: each block keeps its w2 tiles in shared memory for the
                       // whole round (read from HBM once per round); 0: re-staged per position
  int subtiles;        // tiles a block computes at once (1 in the legacy kernel)
};

// The phase-B variants of the kernel (DSPARK_MARKOV_DRAFT_KERNEL, read once per process).
enum class MarkovKernel : int {
  kTensorCore = 0,  // default for bf16/fp16 with r % 16 == 0: the [R, r] x [r, V] product by mma.sync
  kFma = 1,         // CUDA-core FMAs from the same staged tiles ("fma"; the default for float32)
  kLegacy = 2,      // the first kernel ("legacy"), kept as the reference the tests compare against
};

// How the cooperative kernel is launched: blocks (all co-resident), dynamic shared memory,
// and the resident-w2 tiles per block (0 for the streaming kernel).
struct MarkovDraftLaunch {
  int blocks = 0;
  size_t smem = 0;
  int resident_tiles = 0;
  int subtiles = 1;  // tiles per group (default kernel: every warp busy at small R)
  MarkovKernel kind = MarkovKernel::kTensorCore;  // what runs (may differ from what was asked, see plan)
};

// Plans the launch of `requests` requests on `device` with `sms` SMs for the kernel `asked`: the tensor-core kernel
// only for bf16/fp16 with r % 16 == 0 (else the FMA kernel), the FMA kernel only when rows of w2 are a multiple of 16
// bytes (it copies 16-byte chunks; else the legacy kernel). With
// allow_resident, picks the resident-w2 kernel when every block's share of w2 fits in its
// shared memory (e.g. V = 32000, r = 256 in bf16 on an H100). Sets *err on failure.
MarkovDraftLaunch plan_markov_draft(DType dtype, int64_t vocab, int64_t rank, int64_t requests, int device, int sms,
                                    bool allow_resident, MarkovKernel asked, cudaError_t* err);

// Launches the cooperative kernel. If the grid does not fit (fewer SMs than planned, e.g. an MPS
// thread limit), retries with half the blocks, streaming w2, and leaves the smaller plan in
// *launch for the caller to keep.
cudaError_t launch_markov_draft(const MarkovDraftParams& params, MarkovDraftLaunch* launch, cudaStream_t stream);

}  // namespace dspark::cuda
