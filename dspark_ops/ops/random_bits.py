"""The counter-based random numbers of SPEC §2, as seen from Python.

Every random number the ops draw is ``Philox4x32-10(key=seed, counter=(offset, purpose,
position, index // 4))[index % 4]``; ``dspark_ops.reference.rng`` recomputes the same words
in pure PyTorch, so references and tests can reproduce any op's randomness exactly.
"""

from __future__ import annotations

import enum

import torch

from ._documented import documented


class Purpose(enum.IntEnum):
    """Independent streams; must match ``dspark::Purpose`` in csrc/include/dspark/philox.h."""

    DRAFT_SAMPLE = 1
    CHAIN_COIN = 2
    CHAIN_RESAMPLE = 3
    TREE_COIN = 4
    TREE_RESAMPLE = 5


@documented
def random_bits(seed: torch.Tensor, offset: torch.Tensor, purpose: int, position: int, count: int) -> torch.Tensor:
    """Raw 32-bit Philox words, ``[R, count]`` int64 in ``[0, 2**32)``.

    Args:
        seed: ``[R]`` int64, one key per request.
        offset: ``[R]`` int64, the request's stream position (advanced by the caller per round).
        purpose: which stream (:class:`Purpose`, or any int in ``[0, 65536)``).
        position: block position or tree node (its low 16 bits are used).
        count: how many consecutive indices, starting at 0.
    """
    return torch.ops.dspark.random_bits(seed, offset, int(purpose), int(position), int(count))


@torch.library.register_fake("dspark::random_bits")
def _random_bits_fake(seed, offset, purpose, position, count):
    return seed.new_empty((seed.shape[0], count))


def gumbel(bits: torch.Tensor) -> torch.Tensor:
    """Gumbel noise ``-log(-log(u))`` from Philox words ``bits`` (any shape, int64 in
    ``[0, 2**32)``), with the same open 23-bit midpoint uniform as the kernels'
    ``gumbel_from_bits``: finite, at most 16.64."""
    u = ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / 8388608.0)
    return -torch.log(-torch.log(u))
