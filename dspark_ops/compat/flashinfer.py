"""FlashInfer's ``flashinfer.sampling.chain_speculative_sampling``, built on ``verify_chain``.

Swap ``from flashinfer.sampling import chain_speculative_sampling`` for
``from dspark_ops.compat.flashinfer import chain_speculative_sampling``: same arguments, same
outputs (int32 tokens with ``-1`` padding, counters added in place).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from ..ops.random_bits import Purpose, random_bits
from ..ops.verify_chain import verify_chain
from ._common import keys_from_generator, probs_as_logits, row_keys


def chain_speculative_sampling(
    draft_probs: torch.Tensor,
    draft_token_ids: torch.Tensor,
    target_probs: torch.Tensor,
    maybe_output_accepted_token_num: Optional[torch.Tensor] = None,
    maybe_output_emitted_draft_token_num: Optional[torch.Tensor] = None,
    deterministic: bool = True,
    generator: Optional[torch.Generator] = None,
    seed: Optional[Union[int, torch.Tensor]] = None,
    offset: Optional[Union[int, torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chain speculative sampling on probabilities, FlashInfer's call and conventions.

    Args:
        draft_probs: ``[B, S, V]`` the distribution each draft was drawn from (read as ``q``
            directly through ``verify_chain(draft_probs=...)``: a 0 stays exactly 0).
        draft_token_ids: ``[B, S]`` int32/int64 drafts.
        target_probs: ``[B, S+1, V]`` the target's (already tempered and filtered)
            probabilities; row S is the bonus position.
        maybe_output_accepted_token_num: ``[B]`` or None. Receives, added in place, the
            number of drafts that pass their coin *independently* (FlashInfer's alignment
            metric: positions after the first rejection are tested too).
        maybe_output_emitted_draft_token_num: ``[B]`` or None. Receives, added in place, the
            number of drafts emitted (the accepted prefix, bonus not counted).
        deterministic: accepted for compatibility; ours is always deterministic.
        generator: draws ``seed``/``offset`` when they are not given (FlashInfer's rule).
        seed, offset: an int, or an int64 tensor of 1 or B elements. Per-row tensors are
            per-request Philox keys (batch invariant); a single seed gives row r the key
            ``seed + r * GOLDEN`` (like FlashInfer's per-row curand subsequence). Advance
            ``offset`` between calls (any change gives fresh numbers; +1 per call is enough).

    Returns:
        ``(output_token_ids [B, S+1] int32, output_accepted_token_num [B],
        output_emitted_draft_token_num [B])``: accepted drafts, then the correction or bonus
        token, then ``-1``; the counters are the given tensors (int32 zeros when None).

    Differences from FlashInfer, none of which changes the output distribution:

    - Randomness: coins and the resampled token come from our Philox streams keyed by
      ``(seed, offset)`` (``Purpose.CHAIN_COIN`` / ``CHAIN_RESAMPLE``), not curand, so the
      tokens differ draw by draw from FlashInfer's for the same seed; both are exact samples.
    - ``target_probs`` go through ``log`` into ``verify_chain`` (``T = 1``): zeros stay exactly
      0, other entries within float32 rounding, and rows are renormalised (FlashInfer uses
      them as given). Passing logits here would be silently wrong: convert them with
      ``softmax`` first, or call ``verify_chain`` on the logits directly.
    - The accepted-count metric uses the same coin as the accept test at every position,
      so it is exactly "how many drafts pass when each is tested alone"; FlashInfer redraws
      the coin of the rejected position.
    """
    batch, steps = draft_token_ids.shape
    vocab = target_probs.shape[-1]
    device = target_probs.device
    if seed is None or offset is None:
        seed, offset = keys_from_generator(generator, device)
    seeds, offsets = row_keys(seed, offset, batch, device)
    drafts = draft_token_ids.to(torch.int64)
    lengths = torch.full((batch,), steps, dtype=torch.int64, device=device)
    ones = torch.ones(batch, dtype=torch.float32, device=device)

    out, num_accepted, _ = verify_chain(
        probs_as_logits(target_probs.reshape(batch * (steps + 1), vocab)),
        drafts,
        lengths,
        ones,
        seeds,
        offsets,
        draft_probs=draft_probs.float(),
    )
    alone = _independent_accepts(draft_probs, drafts, target_probs, seeds, offsets, num_accepted)

    accepted = maybe_output_accepted_token_num
    if accepted is None:
        accepted = torch.zeros(batch, dtype=torch.int32, device=device)
    emitted = maybe_output_emitted_draft_token_num
    if emitted is None:
        emitted = torch.zeros(batch, dtype=torch.int32, device=device)
    accepted.add_(alone.to(accepted.dtype))
    emitted.add_(num_accepted.to(emitted.dtype))
    return out.to(torch.int32), accepted, emitted


def _independent_accepts(
    draft_probs: torch.Tensor,  # [B, S, V]
    drafts: torch.Tensor,  # [B, S] int64
    target_probs: torch.Tensor,  # [B, S+1, V]
    seeds: torch.Tensor,  # [B]
    offsets: torch.Tensor,  # [B]
    num_accepted: torch.Tensor,  # [B]
) -> torch.Tensor:
    """FlashInfer's ``output_accepted_token_num``: the accepted prefix plus every later
    position k > prefix + 1 whose own coin passes (``u_k * q_k(x_k) < p_k(x_k)``, the op's
    coin from ``random_bits``). Reads ``2 * B * S`` probabilities and S coins per request."""
    batch, steps = drafts.shape
    vocab = target_probs.shape[-1]
    if steps == 0:
        return num_accepted
    valid = (drafts >= 0) & (drafts < vocab)
    safe = drafts.clamp(0, vocab - 1)[..., None]
    q = draft_probs.float().gather(-1, safe).squeeze(-1)
    p = target_probs[:, :steps].float().gather(-1, safe).squeeze(-1)
    # The op's coin: position k (1-based), index 0, 24-bit uniform (philox.h bits_to_uniform).
    bits = torch.cat([random_bits(seeds, offsets, Purpose.CHAIN_COIN, k, 1) for k in range(1, steps + 1)], 1)
    coins = (bits >> 8).float() * (1.0 / 16777216.0)
    passes = valid & (coins * q < p)
    later = torch.arange(1, steps + 1, device=drafts.device)[None] > (num_accepted + 1)[:, None]
    return num_accepted + (passes & later).sum(1)
