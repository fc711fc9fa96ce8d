"""vLLM's v1 rejection sampler (``vllm/v1/sample/rejection_sampler.py``), built on ``verify_chain``.

Two entry points:

- :class:`RejectionSampler`: ``forward(metadata, draft_probs, logits, sampling_metadata)``
  with vLLM's own argument objects (duck-typed, so vLLM is not a dependency) and vLLM's
  output (``.sampled_token_ids [B, max_spec_len + 1]`` int32, ``-1`` placeholders);
- :func:`rejection_sample`: the same computation on plain tensors, for engines that keep
  their own metadata.

``logits`` is vLLM's ``[num_tokens + B, V]`` layout: each request's draft positions, then its
bonus position, requests back to back (``target_logits_indices`` / ``bonus_logits_indices`` of
``SpecDecodeMetadata`` select exactly these rows in this order), which is ``verify_chain``'s
``target_logits`` as it stands, so no row is copied.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch

from ..ops.arguments import request_args
from ..ops.verify_chain import verify_chain

PLACEHOLDER_TOKEN_ID = -1


class SamplerOutput(NamedTuple):
    """The fields of vLLM's ``SamplerOutput`` that the rejection sampler fills."""

    sampled_token_ids: torch.Tensor  # [B, max_spec_len + 1] int32, -1 placeholders
    logprobs_tensors: Optional[Any] = None


def rejection_sample(
    draft_token_ids: torch.Tensor,
    cu_num_draft_tokens: torch.Tensor,
    max_spec_len: int,
    draft_probs: Optional[torch.Tensor],
    logits: torch.Tensor,
    temperature: Optional[torch.Tensor],
    seed: torch.Tensor,
    offset: torch.Tensor,
    top_k: Optional[torch.Tensor] = None,
    top_p: Optional[torch.Tensor] = None,
    min_p: Optional[torch.Tensor] = None,
    bonus_token_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Verify vLLM's flattened ragged drafts; returns ``[B, max_spec_len + 1]`` int32.

    Args:
        draft_token_ids: ``[num_tokens]`` int32/int64, request r's drafts at
            ``[cu[r-1], cu[r])``.
        cu_num_draft_tokens: ``[B]`` inclusive cumulative draft counts (vLLM's convention).
        max_spec_len: the padded width (a Python int, as in ``SpecDecodeMetadata``).
        draft_probs: ``[num_tokens, V]`` float32 probabilities the drafts were drawn from,
            read as ``q`` exactly (``verify_chain(draft_probs=...)``); None for drafts chosen
            deterministically (n-gram, greedy EAGLE: ``q`` one-hot, vLLM's ``draft_prob = 1``).
        logits: ``[num_tokens + B, V]`` the target's raw logits (after any penalties or
            logits processors the engine applies), bonus row last for each request.
        temperature: ``[B]`` float32; ``0`` (vLLM's ``GREEDY_TEMPERATURE``, or ``-1`` in
            older vLLM) is greedy; None means every request is greedy (``all_greedy``).
            This and the other per-request arguments also take Python scalars or lists.
        seed, offset: ``[B]`` int64 Philox keys. vLLM's model runner v2 keys its Philox by
            (request seed, position): pass the same, ``offset`` = the position of the
            request's first verify token (it moves every step, so numbers are never reused).
        top_k: ``[B]`` int (``<= 0`` or ``>= V``: off), top_p ``[B]`` float32 (1: off),
            min_p ``[B]`` float32 (0: off): applied to the target rows, after temperature,
            exactly as SPEC §9 (vLLM applies top-k/top-p there too, and min-p not at all).
        bonus_token_ids: ``[B, 1]`` or ``[B]`` or None. vLLM samples the bonus token outside
            the rejection sampler; ours draws it inside from the same (filtered, tempered)
            bonus row, so None is the normal call. Given, it replaces our bonus where all
            drafts were accepted: still exact when it was sampled from the bonus row's
            distribution (it is independent of the accept decisions).

    Returns:
        ``output_token_ids [B, max_spec_len + 1]`` int32: accepted drafts, the recovered or
        bonus token, then ``-1`` (``PLACEHOLDER_TOKEN_ID``). Draft ids of ``-1`` end the
        request's chain there (the emitted token is drawn from the target row itself).

    Cost beyond ``verify_chain``: none when every request has ``max_spec_len`` drafts
    (``draft_probs`` is viewed as ``[B, γ, V]``); otherwise one gather of ``draft_probs``
    into ``[B, γ, V]``.
    """
    batch = cu_num_draft_tokens.shape[0]
    gamma = int(max_spec_len)
    device = logits.device
    cu = cu_num_draft_tokens.to(torch.int64)
    lengths = torch.diff(cu, prepend=cu.new_zeros(1))
    idx, valid = _ragged_index(cu, lengths, gamma, draft_token_ids.shape[0])
    flat = draft_token_ids.to(torch.int64)
    if flat.numel() == 0:
        drafts = torch.full((batch, gamma), PLACEHOLDER_TOKEN_ID, dtype=torch.int64, device=device)
    else:
        drafts = torch.where(valid, flat[idx], PLACEHOLDER_TOKEN_ID)
    probs = None
    if draft_probs is not None:
        vocab = draft_probs.shape[-1]
        if draft_probs.shape[0] == batch * gamma:  # every request has γ drafts: a view
            probs = draft_probs.reshape(batch, gamma, vocab)
        else:
            probs = draft_probs[idx.reshape(-1)].reshape(batch, gamma, vocab)
    args = request_args(batch, device, temperature=0.0 if temperature is None else temperature,
                        seed=seed, offset=offset, top_k=top_k, top_p=top_p, min_p=min_p)
    out, num_accepted, _ = verify_chain(
        logits,
        drafts,
        lengths,
        args["temperature"].to(torch.float32),
        args["seed"],
        args["offset"],
        top_k=None if top_k is None else args["top_k"].to(torch.int64),
        top_p=args["top_p"],
        min_p=args["min_p"],
        draft_probs=None if probs is None else probs.float(),
    )
    if bonus_token_ids is not None:
        at = lengths[:, None]
        full = (num_accepted == lengths)[:, None]
        bonus = bonus_token_ids.reshape(batch, 1).to(torch.int64)
        out = out.scatter(1, at, torch.where(full, bonus, out.gather(1, at)))
    return out.to(torch.int32)


def _ragged_index(
    cu: torch.Tensor, lengths: torch.Tensor, gamma: int, num_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``idx [B, γ]`` into the flattened drafts (clamped into range) and ``valid [B, γ]``."""
    steps = torch.arange(gamma, device=cu.device)
    idx = (cu - lengths)[:, None] + steps
    return idx.clamp(0, max(num_tokens - 1, 0)), steps[None] < lengths[:, None]


class RejectionSampler(torch.nn.Module):
    """Drop-in for vLLM's ``RejectionSampler`` (``forward(metadata, draft_probs, logits,
    sampling_metadata) -> SamplerOutput``).

    Read from ``metadata`` (vLLM's ``SpecDecodeMetadata``): ``draft_token_ids [num_tokens]``,
    ``cu_num_draft_tokens [B]``, ``max_spec_len``. Read from ``sampling_metadata`` (vLLM's
    ``SamplingMetadata``): ``temperature [B]`` (None when ``all_greedy``), ``top_k``,
    ``top_p`` (None or ``[B]``), ``generators`` (request index -> ``torch.Generator``).

    What differs from vLLM, and why the output is still exact:

    - The bonus token is drawn inside ``verify_chain`` from the bonus row (filtered and
      tempered like every other row) instead of by vLLM's ``Sampler`` beforehand; both are
      one draw from the same distribution. Penalties, bad words and allowed-token masks are
      logit edits: apply them to ``logits`` before calling (vLLM's
      ``apply_logits_processors``); this class does not.
    - Randomness: each request gets a Philox key (seed, offset) drawn from its own generator
      when it has one (so seeded requests are reproducible, as in vLLM) and from the
      device's default generator otherwise; our coins replace vLLM's ``uniform_probs`` and
      our Gumbel race its exponential race. Same distributions, different draws.
    - Logprobs are not computed here (``logprobs_tensors`` is None): use
      ``dspark_ops.speculative.logprobs.token_logprobs`` on the emitted tokens.
    """

    def forward(self, metadata: Any, draft_probs: Optional[torch.Tensor], logits: torch.Tensor, sampling_metadata: Any) -> SamplerOutput:
        batch = metadata.cu_num_draft_tokens.shape[0]
        seed, offset = _request_keys(batch, getattr(sampling_metadata, "generators", None) or {}, logits.device)
        out = rejection_sample(
            metadata.draft_token_ids,
            metadata.cu_num_draft_tokens,
            metadata.max_spec_len,
            draft_probs,
            logits,
            None if getattr(sampling_metadata, "all_greedy", False) else sampling_metadata.temperature,
            seed,
            offset,
            top_k=getattr(sampling_metadata, "top_k", None),
            top_p=getattr(sampling_metadata, "top_p", None),
        )
        return SamplerOutput(sampled_token_ids=out)

    @staticmethod
    def parse_output(output_token_ids: torch.Tensor, vocab_size: int) -> list[list[int]]:
        """vLLM's ``parse_output``: the valid tokens of each row, on the host (this syncs)."""
        rows = output_token_ids.cpu().tolist()
        return [[t for t in row if 0 <= t < vocab_size] for row in rows]


def _request_keys(batch: int, generators: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``seed [B]``, ``offset [B]``: from each request's generator where it has one, else from
    the default generator of ``device``; device-side draws, no host sync."""
    keys = torch.randint(0, 2**62, (batch, 2), device=device, dtype=torch.int64)
    for index, generator in generators.items():
        keys[index] = torch.randint(0, 2**62, (2,), generator=generator, device=generator.device, dtype=torch.int64).to(device)
    return keys[:, 0].contiguous(), keys[:, 1].contiguous()
