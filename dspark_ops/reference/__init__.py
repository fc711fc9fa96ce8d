"""Pure-PyTorch references of every op: readable, vectorised where it keeps them clear,
and drawing the very same random numbers as the kernels (through ``reference.rng``)."""

from .block_draft import append_context_kv, block_attention, qk_norm_rope, rms_norm
from .dspark_drafter import drafter_backbone, markov_greedy
from .markov_draft import markov_draft
from .rng import gumbel, philox4x32_10, random_bits, random_uniform
from .schedule_lengths import schedule_lengths
from .verify_chain import verify_chain
from .verify_tree import tree_metadata, verify_tree

__all__ = [
    "append_context_kv",
    "block_attention",
    "drafter_backbone",
    "gumbel",
    "markov_draft",
    "markov_greedy",
    "philox4x32_10",
    "qk_norm_rope",
    "random_bits",
    "random_uniform",
    "rms_norm",
    "schedule_lengths",
    "tree_metadata",
    "verify_chain",
    "verify_tree",
]
