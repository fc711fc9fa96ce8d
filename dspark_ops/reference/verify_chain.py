"""Pure-PyTorch reference of ``verify_chain`` (SPEC §4), vectorised over requests.

It materialises ``[R, γ+1, V]`` probabilities (the kernels never do) and draws the same
counter-based random numbers as the kernels, so the two agree token for token except where
float rounding flips a near-tie.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..ops.greedy import inverse_temperature, is_greedy
from ..ops.random_bits import Purpose
from .filters import apply_filter, filter_threshold
from .rng import random_bits, random_uniform, vocab_gumbel


def scaled_logits(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """logits * (1/T) in float32 with NaN read as -inf (probability 0), like ``scaled_logit``."""
    x = logits.float() * inverse_temperature(temperature)
    return torch.where(torch.isnan(x), torch.full_like(x, float("-inf")), x)


def softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """softmax over the last dim; a row without a finite normaliser (all -inf, or any +inf)
    gives all zeros instead of NaN, like the kernels' ``SoftmaxStats::prob``."""
    m = x.amax(-1, keepdim=True)
    e = torch.exp(x - torch.where(torch.isinf(m), torch.zeros_like(m), m))
    s = e.sum(-1, keepdim=True)
    ok = (s > 0) & (m < float("inf"))
    return torch.where(ok, e / s.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(e))


def draft_q(draft_logits, draft_probs, draft_ids, temperature, vocab: int):
    """Dense q ``[..., V]`` from any of its encodings (the reference may build it; the kernels
    never do): softmax of ``draft_logits / T`` or ``draft_probs`` as given (NaN / <= 0 as 0), over ``V`` entries,
    or over the ``K`` entries listed in ``draft_ids [..., K]`` (-1: padding, q = 0 elsewhere).
    None when neither is given."""
    if draft_logits is None and draft_probs is None:
        return None
    if draft_probs is not None:
        values = draft_probs.float()
        keep = values > 0  # NaN and values <= 0 read as 0, as draft_prob in dspark/sampling.h
        if draft_ids is not None:
            keep = keep & (draft_ids >= 0)
        values = torch.where(keep, values, torch.zeros_like(values))
    else:
        x = scaled_logits(draft_logits, temperature)
        if draft_ids is not None:
            x = torch.where(draft_ids >= 0, x, torch.full_like(x, float("-inf")))
        values = softmax_rows(x)
    if draft_ids is None:
        return values
    slot = torch.where(draft_ids >= 0, draft_ids, torch.full_like(draft_ids, vocab))  # padding -> spare column
    q = values.new_zeros((*values.shape[:-1], vocab + 1))
    return q.scatter(-1, slot, values)[..., :vocab]


def race(log_weight: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel-max over the last dim: (winner, whether any candidate had weight > 0).
    Ties go to the lowest index; with no candidate the winner is 0."""
    score = log_weight + noise
    score = torch.where(torch.isfinite(log_weight) & ~torch.isnan(score), score, torch.full_like(score, float("-inf")))
    return score.argmax(-1), torch.isfinite(log_weight).any(-1)


def verify_chain(
    target_logits: torch.Tensor,
    draft_tokens: torch.Tensor,
    lengths: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    draft_logits: Optional[torch.Tensor] = None,
    eos_ids: Optional[torch.Tensor] = None,
    top_k: Optional[torch.Tensor] = None,
    top_p: Optional[torch.Tensor] = None,
    min_p: Optional[torch.Tensor] = None,
    draft_probs: Optional[torch.Tensor] = None,
    draft_ids: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same arguments and results as ``dspark_ops.verify_chain``."""
    requests, gamma = draft_tokens.shape
    vocab = target_logits.shape[1]
    device = draft_tokens.device
    if requests == 0:
        empty = draft_tokens.new_zeros((0,))
        return draft_tokens.new_full((0, gamma + 1), -1), empty, empty

    steps = torch.arange(gamma + 1, device=device)  # verify row i of each request
    first_row = torch.cumsum(lengths + 1, 0) - (lengths + 1)
    rows = (first_row[:, None] + steps).clamp_max(target_logits.shape[0] - 1)  # [R, γ+1]
    raw = target_logits[rows].float()  # [R, γ+1, V]
    greedy = is_greedy(temperature)
    temp = torch.where(greedy, torch.ones_like(temperature), temperature)[:, None, None]
    x = scaled_logits(raw, temp)
    per_row = [None if a is None else a[:, None] for a in (top_k, top_p, min_p)]
    x = apply_filter(x, filter_threshold(x, *per_row))  # SPEC §9: the target rows only
    p = softmax_rows(x)  # [R, γ+1, V]

    tokens = draft_tokens
    valid = (tokens >= 0) & (tokens < vocab)
    safe = tokens.clamp(0, vocab - 1)
    p_x = torch.where(valid, p[:, :gamma].gather(-1, safe[..., None]).squeeze(-1), torch.zeros(()))
    q = draft_q(draft_logits, draft_probs, draft_ids, temp, vocab)  # [R, γ, V] or None
    if q is not None:
        q_x = torch.where(valid, q.gather(-1, safe[..., None]).squeeze(-1), torch.ones(()))
    else:
        q = torch.nn.functional.one_hot(safe, vocab).float() * valid[..., None]
        q_x = torch.ones_like(p_x)
    k = steps[1:]  # positions 1..γ
    coins = random_uniform(random_bits(seed[:, None], offset[:, None], Purpose.CHAIN_COIN, k, 0))
    accept_sampled = coins * q_x < p_x
    argmax = _nan_argmax(raw)  # [R, γ+1]
    accept_greedy = valid & (tokens == argmax[:, :gamma])
    accept = torch.where(greedy[:, None], accept_greedy, accept_sampled) & (k[None] <= lengths[:, None])

    leading = torch.cumprod(accept.long(), 1)  # 1 while every draft so far is accepted
    if eos_ids is not None and eos_ids.numel() > 0:
        is_eos = (tokens[..., None] == eos_ids).any(-1) & leading.bool()
        # Positions after the first accepted EOS are not accepted.
        after_eos = torch.cumsum(is_eos.long(), 1) - is_eos.long() > 0
        leading = leading * (~after_eos).long()
        stopped = is_eos.any(1)
    else:
        stopped = torch.zeros(requests, dtype=torch.bool, device=device)
    num_accepted = leading.sum(1)

    # The emitted token: residual at the rejected position, else the bonus after ℓ.
    rejected = num_accepted < lengths
    position = num_accepted + 1  # 1-based position of the rejection or the bonus
    row = torch.where(rejected, num_accepted, lengths)  # verify row that emits
    at_row = row[:, None, None].expand(-1, 1, vocab)
    p_row = p.gather(1, at_row).squeeze(1)
    x_row = x.gather(1, at_row).squeeze(1)
    q_row = q.gather(1, row.clamp_max(gamma - 1)[:, None, None].expand(-1, 1, vocab)).squeeze(1) if gamma else p_row
    noise = vocab_gumbel(seed, offset, Purpose.CHAIN_RESAMPLE, position, vocab)
    residual = torch.clamp(p_row - q_row, min=0)
    res_token, res_any = race(torch.log(torch.where(residual > 0, residual, torch.zeros(()))), noise)
    fallback, _ = race(x_row, noise)
    sampled_residual = torch.where(res_any, res_token, fallback)
    # A rejected id outside [0, V) was not drawn from q: the draw is from p itself (SPEC §4).
    rejected_valid = valid.gather(1, row.clamp_max(gamma - 1)[:, None]).squeeze(1) if gamma else rejected
    sampled = torch.where(rejected & rejected_valid, sampled_residual, fallback)
    emitted = torch.where(greedy, argmax.gather(1, row[:, None]).squeeze(1), sampled)

    out = torch.full((requests, gamma + 1), -1, dtype=torch.int64, device=device)
    keep = steps[None, :gamma] < num_accepted[:, None]
    out[:, :gamma] = torch.where(keep, tokens, out[:, :gamma])
    emit_now = ~stopped
    out[emit_now, num_accepted[emit_now]] = emitted[emit_now]
    num_emitted = num_accepted + emit_now.long()
    return out, num_accepted, num_emitted


def _nan_argmax(raw: torch.Tensor) -> torch.Tensor:
    """argmax with NaN read as -inf and the lowest index winning ties."""
    clean = torch.where(torch.isnan(raw), torch.full_like(raw, float("-inf")), raw)
    best = clean.amax(-1, keepdim=True)
    hits = clean == best
    return hits.float().argmax(-1)  # first True
