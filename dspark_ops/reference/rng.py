"""Philox4x32-10 in pure PyTorch (int64 arithmetic), the twin of csrc/include/dspark/philox.h."""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) words of a * b for a constant a and int64 tensor b, both < 2**32, without
    overflowing int64: a = a_hi * 2**16 + a_lo."""
    x = (a >> 16) * b  # < 2**48
    y = (a & 0xFFFF) * b  # < 2**48
    mid = x + (y >> 16)  # (a * b) >> 16, < 2**49
    hi = mid >> 16
    lo = ((mid & 0xFFFF) << 16) | (y & 0xFFFF)
    return hi, lo


def philox4x32_10(counter: list[torch.Tensor], key: list[torch.Tensor]) -> list[torch.Tensor]:
    """Ten Philox rounds on broadcastable int64 tensors holding uint32 words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return [c0, c1, c2, c3]


def random_bits(seed: torch.Tensor, offset: torch.Tensor, purpose: int, position, index: torch.Tensor) -> torch.Tensor:
    """Words for every broadcast combination of seed/offset ``[...]``, position and index."""
    seed = seed.to(torch.int64)
    offset = offset.to(torch.int64)
    index = torch.as_tensor(index, dtype=torch.int64, device=seed.device)
    position = torch.as_tensor(position, dtype=torch.int64, device=seed.device)
    key = [seed & _MASK32, (seed >> 32) & _MASK32]
    counter = [
        offset & _MASK32,
        (offset >> 32) & _MASK32,
        ((int(purpose) << 16) | (position & 0xFFFF)) & _MASK32,
        (index >> 2) & _MASK32,
    ]
    shape = torch.broadcast_shapes(*(t.shape for t in counter + key))
    words = philox4x32_10([c.expand(shape) for c in counter], [k.expand(shape) for k in key])
    lane = (index & 3).expand(shape)
    stacked = torch.stack(words, dim=-1)
    return stacked.gather(-1, lane.unsqueeze(-1)).squeeze(-1)


def random_uniform(bits: torch.Tensor) -> torch.Tensor:
    """[0, 1) with 24 bits, as ``bits_to_uniform``."""
    return (bits >> 8).to(torch.float32) * (1.0 / 16777216.0)


def gumbel(bits: torch.Tensor) -> torch.Tensor:
    """-log(-log(u)) with u the open (0, 1) 23-bit midpoint uniform, as ``gumbel_from_bits``:
    u in [2^-24, 1 - 2^-24], so the noise is finite and at most 16.64."""
    u = ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / 8388608.0)
    return -torch.log(-torch.log(u))


def vocab_gumbel(seed, offset, purpose: int, position, vocab: int) -> torch.Tensor:
    """Gumbel noise of ``(seed, offset, purpose, position, v)`` for every ``v < vocab`` on a new
    last axis; seed, offset and position broadcast (``[R]`` gives ``[R, V]``, scalars ``[V]``)."""
    seed = torch.as_tensor(seed, dtype=torch.int64)
    offset = torch.as_tensor(offset, dtype=torch.int64, device=seed.device)
    position = torch.as_tensor(position, dtype=torch.int64, device=seed.device)
    index = torch.arange(vocab, device=seed.device)
    return gumbel(random_bits(seed[..., None], offset[..., None], purpose, position[..., None], index))
