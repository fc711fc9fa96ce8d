"""Pure-PyTorch reference of ``markov_draft`` (SPEC §3), vectorised over requests.

A plain left-to-right loop over the γ positions, all arithmetic in float32, drawing the
very same counter-based Gumbel noise as the kernels (``Purpose.DRAFT_SAMPLE``, position k,
index = vocab id), so the kernels and this reference agree token for token except where
float rounding of a logit flips a near-tie.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..ops.greedy import is_greedy
from ..ops.random_bits import Purpose
from .rng import vocab_gumbel


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same arguments and results as ``dspark_ops.markov_draft`` (no argument checks)."""
    if gate_weight is not None and rnn_weight is not None:
        raise RuntimeError("markov_draft: argument 'rnn_weight' cannot be combined with gate_weight")
    requests, gamma, vocab = base_logits.shape
    rank = w1.shape[1]
    dtype = base_logits.dtype
    f32 = torch.float32
    w1f, w2f = w1.to(f32), w2.to(f32)
    hf = hidden.to(f32) if hidden is not None else None
    d = hf.shape[-1] if hf is not None else 0
    temp = temperature.to(f32)
    greedy = is_greedy(temp)
    safe_t = torch.where(greedy, torch.ones_like(temp), temp)[:, None]

    tokens = torch.empty(requests, gamma, dtype=torch.int64, device=base_logits.device)
    draft_logits = torch.empty_like(base_logits)
    logprob = torch.zeros(requests, gamma, dtype=f32, device=base_logits.device)
    confidence = torch.ones(requests, gamma, dtype=f32, device=base_logits.device)
    state = torch.zeros(requests, rank, dtype=f32, device=base_logits.device)
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
        logits = base_logits[:, k - 1].to(f32) + p @ w2f.T
        rounded = logits.to(dtype)  # the values returned AND sampled from
        draft_logits[:, k - 1] = rounded
        lr = rounded.to(f32)
        lr_clean = torch.where(torch.isnan(lr), torch.full_like(lr, float("-inf")), lr)
        arg = lr_clean.argmax(-1)  # lowest index on ties
        scaled = lr_clean / safe_t
        noise = vocab_gumbel(seed, offset, Purpose.DRAFT_SAMPLE, k, vocab)
        score = torch.where(torch.isinf(scaled) & (scaled < 0), scaled, scaled + noise)
        sampled = score.argmax(-1)
        xk = torch.where(greedy, arg, sampled)
        lsm = torch.log_softmax(scaled, -1).gather(1, xk[:, None])[:, 0]
        logprob[:, k - 1] = torch.where(greedy, torch.zeros_like(lsm), lsm)
        tokens[:, k - 1] = xk
        x = xk
    return tokens, draft_logits, logprob, confidence
