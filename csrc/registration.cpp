// The only TORCH_LIBRARY(dspark, m): every schema of torch.ops.dspark in one place.
// Kernels register per dispatch key in csrc/cpu/<family>.cpp and csrc/cuda/<family>_op.cpp;
// fake (meta) kernels live beside the Python wrappers in dspark_ops/ops/. Every op is
// documented in docs/ops.md.
#include <torch/library.h>

TORCH_LIBRARY(dspark, m) {
  // Raw counter-based random bits (SPEC §2), exposed so that the pure-PyTorch reference and
  // the tests can check that CPU and CUDA draw the same numbers. -> [R, count] int64 in [0, 2^32).
  m.def("random_bits(Tensor seed, Tensor offset, int purpose, int position, int count) -> Tensor");

  // SPEC §3: the sequential Markov / gated / RNN head fused with sampling and confidence.
  m.def(
      "markov_draft(Tensor base_logits, Tensor anchor, Tensor w1, Tensor w2, "
      "Tensor temperature, Tensor seed, Tensor offset, Tensor? hidden=None, "
      "Tensor? gate_weight=None, Tensor? gate_bias=None, Tensor? rnn_weight=None, "
      "Tensor? rnn_bias=None, Tensor? conf_weight=None, Tensor? conf_bias=None, "
      "Tensor? conf_scale=None) -> (Tensor, Tensor, Tensor, Tensor)");

  // SPEC §4: lossless verification of chain drafts.
  m.def(
      "verify_chain(Tensor target_logits, Tensor draft_tokens, Tensor lengths, "
      "Tensor temperature, Tensor seed, Tensor offset, Tensor? draft_logits=None, "
      "Tensor? eos_ids=None) -> (Tensor, Tensor, Tensor)");

  // SPEC §5: tree drafts.
  m.def("tree_metadata(Tensor parents, Tensor num_nodes, Tensor prefix_lens) -> (Tensor, Tensor, Tensor)");
  m.def(
      "verify_tree(Tensor target_logits, Tensor tree_tokens, Tensor parents, Tensor num_nodes, "
      "Tensor temperature, Tensor seed, Tensor offset, Tensor? draft_logits=None, "
      "Tensor? eos_ids=None) -> (Tensor, Tensor, Tensor, Tensor)");

  // SPEC §6: load-aware verification length.
  m.def(
      "schedule_lengths(Tensor confidence, Tensor sps, int mode, int budget=-1, "
      "Tensor? max_lengths=None) -> (Tensor, Tensor, Tensor, Tensor)");

  // SPEC §7: the parallel block draft.
  m.def(
      "block_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_lens, "
      "Tensor k_block, Tensor v_block, float scale) -> Tensor");

  // Fused helpers of the block draft (issue 6; SPEC §7 leaves their design to the
  // implementer). GEMMs stay on torch; these cover what sits between them.
  //   rms_norm:          x [..., D], weight [D] -> [..., D] (Qwen3 RMSNorm rounding)
  //   qk_norm_rope:      q [..., Hq, Dh], k [..., Hkv, Dh], positions [...] -> per-head
  //                      RMSNorm (q_norm / k_norm) then rotate-half RoPE at `positions`
  //   append_context_kv: writes k_norm + RoPE(k_new) and v_new [R, C, Hkv, Dh] into the
  //                      drafter's per-layer cache [R, Lmax, Hkv, Dh] at slots
  //                      start[r] .. start[r] + num_new[r] - 1 (slot = position); ragged
  //                      per-request counts, no host sync.
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def(
      "qk_norm_rope(Tensor q, Tensor k, Tensor q_norm_weight, Tensor k_norm_weight, "
      "Tensor positions, float eps, float rope_theta) -> (Tensor, Tensor)");
  m.def(
      "append_context_kv(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k_new, Tensor v_new, "
      "Tensor k_norm_weight, Tensor start, Tensor num_new, float eps, float rope_theta) -> ()");
}
