"""What the peer adapters share: probabilities as logits, and the peers' randomness
conventions (one seed for the batch, a torch generator, explicit uniforms) turned into the
per-request ``seed [R]`` / ``offset [R]`` keys of SPEC §2.

Everything here is a fixed sequence of tensor ops on the device of the inputs: no host sync,
no data-dependent shape, so every adapter can be captured in a CUDA graph.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

# An odd 64-bit constant (2^64 / golden ratio, as a signed int64): ``seed + row * GOLDEN``
# gives each row of a one-seed batch its own Philox key, the way FlashInfer gives each row
# its own curand subsequence. Different rows never share a key for the same seed.
GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 - 2^64

IntOrTensor = Union[int, torch.Tensor]


def probs_as_logits(probs: torch.Tensor) -> torch.Tensor:
    """``log(probs)`` in float32, to pass probabilities where the ops read logits with ``T = 1``.

    ``softmax(log p) = p / Σp``: a probability of 0 becomes ``-inf`` and stays exactly 0, the
    others come back within float32 rounding of one log/exp (a relative 1e-7), and rows that
    do not sum to 1 are renormalised. Costs one read and one float32 write of ``probs``.
    Never pass probabilities *as* logits without this: ``softmax(p)`` is a different, much
    flatter distribution, and the ops cannot tell (the result is silently wrong).
    """
    return torch.log(probs.float())


def row_keys(
    seed: IntOrTensor, offset: IntOrTensor, rows: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``seed [R]`` and ``offset [R]`` (int64) from FlashInfer-style arguments.

    A per-row tensor (``[R]``) is used as it is, so the caller keeps batch invariance. A
    single seed (an int or a one-element tensor) is one stream for the whole batch: each
    row gets the key ``seed + row * GOLDEN`` (the analogue of FlashInfer's per-row curand
    subsequence), so rows draw independent numbers; a row's output then depends on its row
    index, as in FlashInfer. A single offset is repeated.
    """
    seed_t = _as_int64(seed, device)
    offset_t = _as_int64(offset, device)
    if seed_t.numel() == 1 and rows != 1:
        seed_t = seed_t.reshape(1) + torch.arange(rows, device=device, dtype=torch.int64) * GOLDEN
    if offset_t.numel() == 1:
        offset_t = offset_t.reshape(1).expand(rows).contiguous()
    return seed_t.reshape(-1), offset_t.reshape(-1)


def keys_from_generator(
    generator: Optional[torch.Generator], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``(seed, offset)`` pair drawn from ``generator`` (the default generator of
    ``device`` when None) as two one-element int64 tensors on ``device``, without a host sync."""
    gen_device = generator.device if generator is not None else device
    words = torch.randint(0, 2**62, (2,), generator=generator, device=gen_device, dtype=torch.int64).to(device)
    return words[:1], words[1:]


def keys_from_uniforms(
    high: torch.Tensor, low: torch.Tensor, offset_bits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``seed [R]`` and ``offset [R]`` derived from the bits of the peer's uniform samples.

    Peers that take explicit uniforms (sgl-kernel) draw them fresh every step, independently
    of the logits. Their float32 bit patterns (24 random bits each from ``torch.rand``) make a
    fresh random key: ``seed = bits(high) << 32 | bits(low)``, ``offset = bits(offset_bits)``
    (each ``[R]`` float32). Conditional on any key the ops' output follows the target
    distribution exactly, and the key is independent of the logits and drafts, so the output
    is exact; the uniforms' values are not used as coins (ours come from Philox at that key).
    """
    return (_float_bits(high) << 32) | _float_bits(low), _float_bits(offset_bits)


def _float_bits(u: torch.Tensor) -> torch.Tensor:
    """The 32 bits of a float32 tensor as non-negative int64."""
    return u.to(torch.float32).contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def _as_int64(value: IntOrTensor, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.int64)
    return torch.tensor([int(value)], dtype=torch.int64, device=device)
