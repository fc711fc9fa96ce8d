"""Pure-PyTorch references of every op: readable, vectorised where it keeps them clear,
and drawing the very same random numbers as the kernels (through ``reference.rng``)."""

from .rng import philox4x32_10, random_bits, random_uniform, gumbel
from .markov_draft import markov_draft
from .verify_chain import verify_chain

__all__ = ["philox4x32_10", "random_bits", "random_uniform", "gumbel", "verify_chain", "markov_draft"]
