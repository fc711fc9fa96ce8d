"""The ops of ``torch.ops.dspark``: one module per op family with its thin Python wrapper
(docstring, keyword arguments) and its fake (meta) kernel. Nothing here but op calls."""

from . import verify_sharded  # noqa: F401  (fake kernels of the vocab-parallel phase ops)
from .block_draft import append_context_kv, block_attention, qk_norm_rope, rms_norm
from .markov_draft import markov_draft, markov_draft_topk
from .random_bits import Purpose, gumbel, random_bits
from .schedule_lengths import schedule_lengths
from .verify_chain import verify_chain
from .verify_tree import tree_metadata, verify_tree

__all__ = [
    "Purpose",
    "append_context_kv",
    "block_attention",
    "gumbel",
    "markov_draft",
    "markov_draft_topk",
    "qk_norm_rope",
    "random_bits",
    "rms_norm",
    "schedule_lengths",
    "tree_metadata",
    "verify_chain",
    "verify_tree",
]
