"""Helpers shared by the tests: devices and the statistics of the distribution tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Each distribution test fails with probability ALPHA when the op is right (over the choice
# of seeds); the seeds are fixed, so a run is deterministic.
ALPHA = 1e-4


def chi_square_pvalue(observed, expected_probs) -> float:
    """Pearson chi-square p-value of counts against probabilities (cells with p=0 must be empty)."""
    observed = np.asarray(observed, dtype=np.float64).ravel()
    probs = np.asarray(expected_probs, dtype=np.float64).ravel()
    n = observed.sum()
    zero = probs <= 0
    assert observed[zero].sum() == 0, f"{observed[zero].sum()} samples fell in cells of probability 0"
    if (~zero).sum() == 1:  # one cell of probability 1: the check above is the whole test
        return 1.0
    expected = probs[~zero] * n
    return float(stats.chisquare(observed[~zero], expected * observed[~zero].sum() / expected.sum()).pvalue)


def assert_distribution(observed, expected_probs, what: str) -> None:
    p = chi_square_pvalue(observed, expected_probs)
    assert p > ALPHA, f"{what}: chi-square p-value {p:.3g} <= {ALPHA} (counts {np.asarray(observed).ravel()})"


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
