"""Pure-PyTorch references of every op: readable, vectorised where it keeps them clear,
and drawing the very same random numbers as the kernels (through ``reference.rng``)."""

from .rng import philox4x32_10, random_bits, random_uniform, gumbel
from .verify_chain import verify_chain
from .verify_tree import tree_metadata, verify_tree

__all__ = ["philox4x32_10", "random_bits", "random_uniform", "gumbel", "verify_chain", "tree_metadata", "verify_tree"]
