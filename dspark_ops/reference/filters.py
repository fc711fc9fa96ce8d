"""Pure-PyTorch twin of ``csrc/include/dspark/filters.h``: the engine sampling filters of
SPEC §9 (top-k, top-p, min-p) as one threshold θ per row of scaled logits.

Every filter keeps an upper set of the scaled logits ``s``, so the filtered row is
``where(s >= θ, s, -inf)`` with θ either ``-inf`` (nothing filtered) or a value of the row.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def row_filter(top_k, top_p, min_p, vocab: int, shape, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The filters as tensors of ``shape`` with off values normalised and unchecked values
    clamped as ``make_row_filter`` does: top_k 0 = off, top_p 1 = off, min_p 0 = off."""
    k = torch.zeros(shape, dtype=torch.int64, device=device) if top_k is None else top_k.to(torch.int64).expand(shape)
    p = torch.ones(shape, device=device) if top_p is None else top_p.float().expand(shape)
    mp = torch.zeros(shape, device=device) if min_p is None else min_p.float().expand(shape)
    k = torch.where((k <= 0) | (k >= vocab), torch.zeros_like(k), k)
    p = torch.where(torch.isnan(p), torch.ones_like(p), p.clamp_max(1.0))
    mp = torch.where(torch.isnan(mp), torch.zeros_like(mp), mp.clamp(0.0, 1.0))
    return k, p, mp


def filter_threshold(s: torch.Tensor, top_k=None, top_p=None, min_p=None) -> torch.Tensor:
    """θ ``[...]`` of rows of scaled logits ``s [..., V]`` (NaN already -inf) for per-row
    filters broadcastable to ``[...]`` (each a tensor or None = off)."""
    vocab = s.shape[-1]
    k, p, mp = row_filter(top_k, top_p, min_p, vocab, s.shape[:-1], s.device)
    m = s.amax(-1)
    finite = torch.isfinite(m)
    m_safe = torch.where(finite, m, torch.zeros_like(m))[..., None]
    neg_inf = torch.full_like(m, NEG_INF)

    # min_p: the smallest value whose weight reaches min_p (the max always does).
    w = torch.exp(s - m_safe)
    keep_min = (w >= mp[..., None]) & (s > NEG_INF)
    smallest = torch.where(keep_min, s, torch.full_like(s, float("inf"))).amin(-1)
    theta = torch.where(mp > 0, smallest, neg_inf)

    # top_k: the k-th largest kept value when more than k are kept.
    kept = torch.where((s >= theta[..., None]) & (s > NEG_INF), s, torch.full_like(s, NEG_INF))
    desc = kept.sort(-1, descending=True).values
    n_kept = (desc > NEG_INF).sum(-1)
    kth = desc.gather(-1, (k - 1).clamp_min(0)[..., None]).squeeze(-1)
    theta = torch.where((k > 0) & (k < n_kept), kth, theta)

    # top_p: the first tie group, in descending order, whose cumulative mass reaches top_p · W.
    in_set = (desc >= theta[..., None]) & (desc > NEG_INF)
    cum = torch.cumsum(torch.where(in_set, torch.exp(desc - m_safe), torch.zeros_like(desc)), -1)
    total = cum[..., -1:]
    nxt = torch.cat([desc[..., 1:], torch.full_like(desc[..., :1], NEG_INF)], -1)
    group_end = nxt < desc  # the last of a tie group (the row's last entry included)
    hit = in_set & group_end & (cum >= p[..., None] * total)
    first = hit.float().argmax(-1)  # first True
    theta = torch.where(p < 1, desc.gather(-1, first[..., None]).squeeze(-1), theta)

    off = (k == 0) & ~(p < 1) & ~(mp > 0)
    return torch.where(finite & ~off, theta, neg_inf)


def apply_filter(s: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Scaled logits ``[..., V]`` with every value below θ ``[...]`` set to -inf."""
    return torch.where(s >= theta[..., None], s, torch.full_like(s, NEG_INF))
