// The head and confidence-head kinds of dspark::markov_draft, shared by the argument checks
// (torch) and the torch-free CUDA kernels.
#pragma once

namespace dspark {

// Which sequential head the call asks for: chosen by which weights are passed (SPEC §3).
enum class MarkovHead : int { kVanilla = 0, kGated = 1, kRnn = 2 };

// Which confidence head: none (all ones), input h_k ([d]) or [h_k ; e_k] ([d+r]).
enum class ConfidenceInput : int { kNone = 0, kHidden = 1, kHiddenEmbedding = 2 };

}  // namespace dspark
