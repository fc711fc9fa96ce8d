"""Pure-PyTorch reference of ``markov_draft`` (SPEC §3) and ``markov_draft_topk`` (SPEC §10),
vectorised over requests.

A plain left-to-right loop over the γ positions, all arithmetic in float32, drawing the
very same counter-based Gumbel noise as the kernels (``Purpose.DRAFT_SAMPLE``, position k,
index = vocab id), so the kernels and this reference agree token for token except where
float rounding of a logit flips a near-tie. The pruned op is the same loop over the K
candidates of each position instead of the whole vocabulary.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..ops.greedy import inverse_temperature, is_greedy
from ..ops.random_bits import Purpose
from .filters import filter_threshold
from .rng import gumbel, random_bits


def select_candidates(base_logits: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """``[R, γ, K]`` ids of the K largest ``U_k`` per position (NaN as -inf), best first, ties
    to the lower id (a stable descending sort keeps equal values in id order)."""
    u = base_logits.float()
    u = torch.where(torch.isnan(u), torch.full_like(u, float("-inf")), u)
    return torch.sort(u, dim=-1, descending=True, stable=True).indices[..., :num_candidates]


def _draft(base_logits, anchor, w1, w2, temperature, seed, offset, candidates, hidden, gate_weight, gate_bias,
           rnn_weight, rnn_bias, conf_weight, conf_bias, conf_scale, top_k, top_p, min_p):
    """The loop shared by both ops; ``candidates [R, γ, K]`` or None (every id, in id order).
    The SPEC §9 filters apply to the sampled rows' scaled logits over the listed entries."""
    if gate_weight is not None and rnn_weight is not None:
        raise RuntimeError("markov_draft: argument 'rnn_weight' cannot be combined with gate_weight")
    requests, gamma, vocab = base_logits.shape
    rank = w1.shape[1]
    dtype = base_logits.dtype
    device = base_logits.device
    f32 = torch.float32
    w1f, w2f = w1.to(f32), w2.to(f32)
    hf = hidden.to(f32) if hidden is not None else None
    d = hf.shape[-1] if hf is not None else 0
    temp = temperature.to(f32)
    greedy = is_greedy(temp)
    inv_t = inverse_temperature(torch.where(greedy, torch.ones_like(temp), temp))[:, None]  # 1/T once
    entries = vocab if candidates is None else candidates.shape[-1]

    tokens = torch.empty(requests, gamma, dtype=torch.int64, device=device)
    draft_logits = torch.empty(requests, gamma, entries, dtype=dtype, device=device)
    logprob = torch.zeros(requests, gamma, dtype=f32, device=device)
    confidence = torch.ones(requests, gamma, dtype=f32, device=device)
    state = torch.zeros(requests, rank, dtype=f32, device=device)
    x = anchor.to(torch.int64)
    for k in range(1, gamma + 1):
        e = w1f[x]  # e_k = w1[x_{k-1}], [R, r]
        if gate_weight is not None:
            g = torch.sigmoid(torch.cat([hf[:, k - 1], e], 1) @ gate_weight.to(f32).T + gate_bias.to(f32))
            p = g * e
        elif rnn_weight is not None:
            z = torch.cat([state, e, hf[:, k - 1]], 1) @ rnn_weight.to(f32).T + rnn_bias.to(f32)
            a, b, o = z.split(rank, dim=1)
            state = torch.sigmoid(a) * state + (1 - torch.sigmoid(a)) * torch.tanh(b)
            p = torch.tanh(o)
        else:
            p = e
        if conf_weight is not None:
            f = hf[:, k - 1] if conf_weight.shape[0] == d else torch.cat([hf[:, k - 1], e], 1)
            logit = f @ conf_weight.to(f32) + conf_bias.to(f32)
            scale = conf_scale[k - 1].to(f32) if conf_scale is not None else 1.0
            confidence[:, k - 1] = torch.sigmoid(scale * logit)
        if candidates is None:
            ids = torch.arange(vocab, device=device).expand(requests, vocab)
            logits = base_logits[:, k - 1].to(f32) + p @ w2f.T
        else:
            ids = candidates[:, k - 1]  # [R, K]
            logits = base_logits[:, k - 1].to(f32).gather(1, ids) + torch.einsum("qj,qcj->qc", p, w2f[ids])
        rounded = logits.to(dtype)  # the values returned AND sampled from
        draft_logits[:, k - 1] = rounded
        lr = rounded.to(f32)
        lr_clean = torch.where(torch.isnan(lr), torch.full_like(lr, float("-inf")), lr)
        # Greedy: the largest rounded logit, lowest vocabulary id on ties.
        top = lr_clean.amax(-1, keepdim=True)
        arg = torch.where(lr_clean == top, ids, torch.full_like(ids, vocab)).amin(-1)
        scaled = lr_clean * inv_t
        if top_k is not None or top_p is not None or min_p is not None:
            theta = filter_threshold(scaled, top_k, top_p, min_p)
            out = ~greedy[:, None] & ~(scaled >= theta[:, None])
            scaled = torch.where(out, torch.full_like(scaled, float("-inf")), scaled)
            draft_logits[:, k - 1] = torch.where(out, torch.full_like(rounded, float("-inf")), rounded)
        noise = gumbel(random_bits(seed[:, None], offset[:, None], Purpose.DRAFT_SAMPLE, k, ids))
        score = torch.where(torch.isinf(scaled) & (scaled < 0), scaled, scaled + noise)
        sampled = ids.gather(1, score.argmax(-1, keepdim=True))[:, 0]
        xk = torch.where(greedy, arg, sampled)
        entry = (ids == xk[:, None]).int().argmax(-1, keepdim=True)
        lsm = torch.log_softmax(scaled, -1).gather(1, entry)[:, 0]
        # No finite normaliser (every logit NaN or -inf, or one +inf): -inf, as in the kernels.
        lsm = lsm.nan_to_num(nan=float("-inf"))
        logprob[:, k - 1] = torch.where(greedy, torch.zeros_like(lsm), lsm)
        tokens[:, k - 1] = xk
        x = xk
    return tokens, draft_logits, logprob, confidence


def markov_draft(
    base_logits: torch.Tensor,
    anchor: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    hidden: Optional[torch.Tensor] = None,
    gate_weight: Optional[torch.Tensor] = None,
    gate_bias: Optional[torch.Tensor] = None,
    rnn_weight: Optional[torch.Tensor] = None,
    rnn_bias: Optional[torch.Tensor] = None,
    conf_weight: Optional[torch.Tensor] = None,
    conf_bias: Optional[torch.Tensor] = None,
    conf_scale: Optional[torch.Tensor] = None,
    top_k: Optional[torch.Tensor] = None,
    top_p: Optional[torch.Tensor] = None,
    min_p: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same arguments and results as ``dspark_ops.markov_draft`` (no argument checks)."""
    return _draft(base_logits, anchor, w1, w2, temperature, seed, offset, None, hidden, gate_weight, gate_bias,
                  rnn_weight, rnn_bias, conf_weight, conf_bias, conf_scale, top_k, top_p, min_p)


def markov_draft_topk(
    base_logits: torch.Tensor,
    anchor: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    num_candidates: int,
    hidden: Optional[torch.Tensor] = None,
    gate_weight: Optional[torch.Tensor] = None,
    gate_bias: Optional[torch.Tensor] = None,
    rnn_weight: Optional[torch.Tensor] = None,
    rnn_bias: Optional[torch.Tensor] = None,
    conf_weight: Optional[torch.Tensor] = None,
    conf_bias: Optional[torch.Tensor] = None,
    conf_scale: Optional[torch.Tensor] = None,
    top_k: Optional[torch.Tensor] = None,
    top_p: Optional[torch.Tensor] = None,
    min_p: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same arguments and results as ``dspark_ops.markov_draft_topk`` (no argument checks)."""
    ids = select_candidates(base_logits, num_candidates)
    tokens, draft_logits, logprob, confidence = _draft(
        base_logits, anchor, w1, w2, temperature, seed, offset, ids, hidden, gate_weight, gate_bias, rnn_weight,
        rnn_bias, conf_weight, conf_bias, conf_scale, top_k, top_p, min_p)
    return tokens, ids, draft_logits, logprob, confidence
