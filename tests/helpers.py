"""Helpers shared by the tests: the devices every op test runs on, and the SPEC §9 filters by
their definition (the independent oracle of the filter tests)."""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def brute_filter(p, top_k, top_p, min_p):
    """SPEC §9 on a probability vector by its definition (sorting, Python floats)."""
    p = [float(x) for x in p]
    kept = [i for i, x in enumerate(p) if x > 0]
    m = max(p)
    if min_p > 0:
        kept = [i for i in kept if p[i] >= min_p * m - 1e-12]
    if 0 < top_k < len(p):
        vals = sorted((p[i] for i in kept), reverse=True)
        if top_k < len(vals):
            kept = [i for i in kept if p[i] >= vals[top_k - 1] - 1e-12]
    if top_p < 1:
        total = sum(p[i] for i in kept)
        for t in sorted({p[i] for i in kept}, reverse=True):
            if sum(p[i] for i in kept if p[i] >= t - 1e-12) >= top_p * total - 1e-9:
                kept = [i for i in kept if p[i] >= t - 1e-12]
                break
    out = torch.zeros(len(p), dtype=torch.float64)
    for i in kept:
        out[i] = p[i]
    return out / out.sum()
