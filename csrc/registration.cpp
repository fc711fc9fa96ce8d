// The only TORCH_LIBRARY(dspark, m): every schema of torch.ops.dspark in one place.
// Kernels register per dispatch key in csrc/cpu/<family>.cpp and csrc/cuda/<family>_op.cpp;
// fake (meta) kernels live beside the Python wrappers in dspark_ops/ops/. Every op is
// documented in docs/ops.md.
#include <torch/library.h>

TORCH_LIBRARY(dspark, m) {
  // Raw counter-based random bits (SPEC §2), exposed so that the pure-PyTorch reference and
  // the tests can check that CPU and CUDA draw the same numbers. -> [R, count] int64 in [0, 2^32).
  m.def("random_bits(Tensor seed, Tensor offset, int purpose, int position, int count) -> Tensor");

  // SPEC §3: the sequential Markov / gated / RNN head fused with sampling and confidence;
  // top_k / top_p / min_p (SPEC §9) filter L_k / T before sampling.
  m.def(
      "markov_draft(Tensor base_logits, Tensor anchor, Tensor w1, Tensor w2, "
      "Tensor temperature, Tensor seed, Tensor offset, Tensor? hidden=None, "
      "Tensor? gate_weight=None, Tensor? gate_bias=None, Tensor? rnn_weight=None, "
      "Tensor? rnn_bias=None, Tensor? conf_weight=None, Tensor? conf_bias=None, "
      "Tensor? conf_scale=None, Tensor? top_k=None, Tensor? top_p=None, "
      "Tensor? min_p=None) -> (Tensor, Tensor, Tensor, Tensor)");

  // SPEC §10: markov_draft pruned to the backbone's K = num_candidates best ids per position.
  // -> (tokens [R, γ], draft_ids [R, γ, K], draft_logits [R, γ, K], token_logprob, confidence).
  m.def(
      "markov_draft_topk(Tensor base_logits, Tensor anchor, Tensor w1, Tensor w2, "
      "Tensor temperature, Tensor seed, Tensor offset, int num_candidates, Tensor? hidden=None, "
      "Tensor? gate_weight=None, Tensor? gate_bias=None, Tensor? rnn_weight=None, "
      "Tensor? rnn_bias=None, Tensor? conf_weight=None, Tensor? conf_bias=None, "
      "Tensor? conf_scale=None, Tensor? top_k=None, Tensor? top_p=None, "
      "Tensor? min_p=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // SPEC §4: lossless verification of chain drafts; §9 engine filters and draft_probs;
  // §10 sparse q through draft_ids.
  m.def(
      "verify_chain(Tensor target_logits, Tensor draft_tokens, Tensor lengths, "
      "Tensor temperature, Tensor seed, Tensor offset, Tensor? draft_logits=None, "
      "Tensor? eos_ids=None, Tensor? top_k=None, Tensor? top_p=None, Tensor? min_p=None, "
      "Tensor? draft_probs=None, Tensor? draft_ids=None) -> (Tensor, Tensor, Tensor)");

  // SPEC §5: tree drafts (with the same §9 / §10 arguments as verify_chain).
  m.def("tree_metadata(Tensor parents, Tensor num_nodes, Tensor prefix_lens) -> (Tensor, Tensor, Tensor)");
  m.def(
      "verify_tree(Tensor target_logits, Tensor tree_tokens, Tensor parents, Tensor num_nodes, "
      "Tensor temperature, Tensor seed, Tensor offset, Tensor? draft_logits=None, "
      "Tensor? eos_ids=None, Tensor? top_k=None, Tensor? top_p=None, Tensor? min_p=None, "
      "Tensor? draft_probs=None, Tensor? draft_ids=None) -> (Tensor, Tensor, Tensor, Tensor)");

  // SPEC §11: vocab-parallel verification. Per-rank phases over a column shard
  // [vocab_start, vocab_start + V_i) of the logits, composed with torch.distributed collectives
  // in dspark_ops/distributed.py; records exchanged between phases are int64 tensors laid out
  // as in dspark/verify_sharded.h. stats [W, N, 5] / race_keys [W, R, 2] / masses [W, R] are
  // the all-gathered outputs of every rank, in rank order.
  //   *_shard_stats -> [N, 5] per-row statistics of the shard
  //   verify_chain_shard_decide -> (out_tokens, num_accepted, num_emitted, race_keys [R, 2])
  //   verify_tree_shard_walk  -> (walk [R, 6], out_tokens, accepted_nodes, partial_mass [R])
  //   verify_tree_shard_race  -> (race_keys [R, 2], num_accepted, num_emitted)
  //   verify_shard_finish     -> out_tokens with the race winners placed
  m.def(
      "verify_chain_shard_stats(Tensor target_logits, Tensor draft_tokens, Tensor lengths, Tensor temperature, "
      "Tensor seed, Tensor offset, Tensor? draft_logits, int vocab_start, int vocab_size) -> Tensor");
  m.def(
      "verify_chain_shard_decide(Tensor target_logits, Tensor draft_tokens, Tensor lengths, Tensor temperature, "
      "Tensor seed, Tensor offset, Tensor stats, Tensor? draft_logits, Tensor? eos_ids, int vocab_start, "
      "int vocab_size) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "verify_tree_shard_stats(Tensor target_logits, Tensor tree_tokens, Tensor parents, Tensor num_nodes, "
      "Tensor temperature, Tensor seed, Tensor offset, Tensor? draft_logits, int vocab_start, int vocab_size) "
      "-> Tensor");
  m.def(
      "verify_tree_shard_walk(Tensor target_logits, Tensor tree_tokens, Tensor parents, Tensor num_nodes, "
      "Tensor temperature, Tensor seed, Tensor offset, Tensor stats, Tensor? walk, Tensor? out_tokens, "
      "Tensor? accepted_nodes, Tensor? masses, Tensor? draft_logits, Tensor? eos_ids, int vocab_start, "
      "int vocab_size) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "verify_tree_shard_race(Tensor target_logits, Tensor tree_tokens, Tensor parents, Tensor num_nodes, "
      "Tensor temperature, Tensor seed, Tensor offset, Tensor stats, Tensor walk, Tensor? draft_logits, "
      "int vocab_start, int vocab_size) -> (Tensor, Tensor, Tensor)");
  m.def("verify_shard_finish(Tensor out_tokens, Tensor num_accepted, Tensor num_emitted, Tensor race_keys) -> Tensor");

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
  // RoPE scaling for both RoPE helpers: `inv_freq` [Dh/2] float32 (precomputed from the
  // model's rope config; replaces rope_theta) and `attention_scaling` (multiplies cos/sin).
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def(
      "qk_norm_rope(Tensor q, Tensor k, Tensor q_norm_weight, Tensor k_norm_weight, "
      "Tensor positions, float eps, float rope_theta, Tensor? inv_freq=None, "
      "float attention_scaling=1.0) -> (Tensor, Tensor)");
  m.def(
      "append_context_kv(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k_new, Tensor v_new, "
      "Tensor k_norm_weight, Tensor start, Tensor num_new, float eps, float rope_theta, "
      "Tensor? inv_freq=None, float attention_scaling=1.0) -> ()");
}
