"""Straightforward reference of ``schedule_lengths`` (SPEC §6) in numpy float32.

It follows the kernels' documented arithmetic (``dspark/schedule.h``): the same float32
products, the same chunk-of-16 + Hillis-Steele order for the prefix sums of τ, so that its
results are bit-identical; ranking is a plain Python sort of ``(-a, j, r)`` tuples.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

CHUNK = 16


def _prefix_sums(values: list[np.float32]) -> list[np.float32]:
    """P_i of the kernels: left folds within chunks of 16, Hillis-Steele over chunk totals."""
    k = len(values)
    local: list[np.float32] = []
    totals: list[np.float32] = []
    for start in range(0, k, CHUNK):
        s = None
        for v in values[start : start + CHUNK]:
            s = v if s is None else np.float32(s + v)
            local.append(s)
        totals.append(s)
    d = 1
    while d < len(totals):
        totals = [totals[t] if t < d else np.float32(totals[t] + totals[t - d]) for t in range(len(totals))]
        d *= 2
    return [np.float32((totals[i // CHUNK - 1] if i >= CHUNK else np.float32(0)) + local[i]) for i in range(k)]


def schedule_lengths(
    confidence: torch.Tensor,
    sps: torch.Tensor,
    mode: int = 0,
    budget: int = -1,
    max_lengths: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    device = confidence.device
    c = np.clip(np.nan_to_num(confidence.detach().cpu().numpy().astype(np.float32), nan=0.0), 0.0, 1.0)
    table = sps.detach().cpu().numpy().astype(np.float32)
    R, gamma = c.shape
    assert table.shape[0] > R * (gamma + 1), "sps too short"
    caps = [gamma] * R if max_lengths is None else [min(max(int(x), 0), gamma) for x in max_lengths.tolist()]

    candidates = []  # (-a, j, r, a)
    for r in range(R):
        a = np.float32(1.0)
        for j in range(1, caps[r] + 1):
            a = c[r, 0] if j == 1 else np.float32(a * c[r, j - 1])
            if a > 0:
                candidates.append((-float(a), j, r, a))
    candidates.sort(key=lambda t: (t[0], t[1], t[2]))

    Rf = np.float32(R)
    theta_init = np.float32(Rf * table[R])
    prefix = _prefix_sums([t[3] for t in candidates])
    tau = [np.float32(Rf + p) for p in prefix]
    theta = [np.float32(tau[i] * table[R + i + 1]) for i in range(len(tau))]

    if mode == 0:  # Algorithm 1 with the early stop
        n, best = len(theta), theta_init
        for i, th in enumerate(theta):
            if not th > best:
                n = i
                break
            best = th
    elif mode == 1:  # no early stop: shortest prefix reaching the largest Θ
        n, best = 0, theta_init
        for i, th in enumerate(theta):
            if th > best:
                n, best = i + 1, th
    elif mode == 2:
        assert budget >= 0
        n = min(budget, len(theta))
    else:
        raise ValueError(mode)

    lengths = [0] * R
    for _, j, r, _ in candidates[:n]:
        assert lengths[r] == j - 1, "admitted drafts must form a prefix"
        lengths[r] = j
    return (
        torch.tensor(lengths, dtype=torch.int64, device=device),
        torch.tensor(n, dtype=torch.int64, device=device),
        torch.tensor(Rf if n == 0 else tau[n - 1], dtype=torch.float32, device=device),
        torch.tensor(theta_init if n == 0 else theta[n - 1], dtype=torch.float32, device=device),
    )
