"""The peers' own call signatures on top of ``torch.ops.dspark``, one module per peer.

- :mod:`dspark_ops.compat.flashinfer`: ``chain_speculative_sampling`` (probabilities in);
- :mod:`dspark_ops.compat.vllm`: vLLM v1's ``RejectionSampler`` / ``rejection_sample``
  (flattened ragged drafts, target logits, sampling metadata, ``-1`` placeholders out);
- :mod:`dspark_ops.compat.sglang`: sgl-kernel's ``tree_speculative_sampling_target_only`` and
  ``verify_tree_greedy``, with converters between its first-child / next-sibling trees and our
  parent arrays.

An engine switches by changing an import; each function's docstring says where our
behaviour differs from the peer's (randomness source, where the bonus token is drawn,
refused lossy options) and why the output distribution is still exactly the target's.
The argument mapping tables are in ``docs/compat.md``.
"""

from . import flashinfer, sglang, vllm

__all__ = ["flashinfer", "sglang", "vllm"]
