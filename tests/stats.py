"""The statistics of every distribution test: one chi-square test, one exact test, one
false-failure rate.

Random ops are tested by drawing many samples with fixed seeds and comparing their counts
with the exact distribution. Every such assertion rejects at p-value ``<= ALPHA``: a correct
op fails one with probability ``ALPHA`` over the choice of seeds (the seeds are fixed, so a
run is deterministic), while a wrong rule (a biased coin, a wrong residual) fails it by
orders of magnitude with the sample sizes used.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

# The false-failure rate of each distribution assertion.
ALPHA = 1e-4

# Pearson's chi-square approximation needs about 5 expected draws per cell.
_MIN_EXPECTED = 5.0


def chi_square_pvalue(observed, probs, ddof: int = 0) -> float:
    """Pearson chi-square goodness of fit of counts against probabilities.

    ``observed`` and ``probs`` have the same number of cells (any shapes); ``probs`` need not
    be normalised: it is scaled to the observed total. A count in a cell of probability 0
    fails outright (no finite p-value explains it). Cells expecting fewer than 5 draws are
    pooled into one cell (into the smallest kept cell if the pool itself is too small), so the
    approximation holds. ``ddof``: parameters estimated from the data or totals fixed in
    advance beyond the grand total (e.g. ``groups - 1`` for conditional counts of several
    groups laid side by side).
    """
    obs = np.asarray(observed, dtype=np.float64).ravel()
    exp = np.asarray(probs, dtype=np.float64).ravel()
    assert obs.shape == exp.shape, f"{obs.shape} counts against {exp.shape} probabilities"
    zero = exp <= 0
    assert obs[zero].sum() == 0, f"{obs[zero].sum():g} samples fell in cells of probability 0"
    obs, exp = obs[~zero], exp[~zero] * (obs.sum() / exp[~zero].sum())
    small = exp < _MIN_EXPECTED
    if small.any():
        pool_obs, pool_exp = obs[small].sum(), exp[small].sum()
        obs, exp = obs[~small], exp[~small]
        if pool_exp >= _MIN_EXPECTED or obs.size == 0:
            obs, exp = np.append(obs, pool_obs), np.append(exp, pool_exp)
        else:
            smallest = np.argmin(exp)
            obs[smallest] += pool_obs
            exp[smallest] += pool_exp
    assert obs.size - 1 - ddof >= 1, "too few cells left for a chi-square test"
    return float(stats.chisquare(obs, exp, ddof=ddof).pvalue)


def assert_distribution(observed, probs, what: str, ddof: int = 0) -> None:
    """Counts ``observed`` follow ``probs`` (chi-square at false-failure rate ``ALPHA``)."""
    p = chi_square_pvalue(observed, probs, ddof)
    assert p > ALPHA, f"{what}: chi-square p-value {p:.3g} <= {ALPHA} (counts {np.asarray(observed).ravel()})"


def assert_same_distribution(counts_a, counts_b, what: str) -> None:
    """Two samples over the same cells come from one distribution (chi-square test of
    homogeneity at false-failure rate ``ALPHA``): the 2k counts against the pooled
    proportions, k - 1 of which are estimated from the data (hence ``ddof = k - 1``)."""
    a = np.asarray(counts_a, dtype=np.float64).ravel()
    b = np.asarray(counts_b, dtype=np.float64).ravel()
    both = a + b
    share = min(a.sum(), b.sum()) / both.sum()
    # Pool the cells too rare for the approximation first, so that the test below sees
    # exactly the cells that ddof counts.
    rare = both * share < _MIN_EXPECTED
    if rare.any():
        a, b = np.append(a[~rare], a[rare].sum()), np.append(b[~rare], b[rare].sum())
        both = a + b
        if both[-1] * share < _MIN_EXPECTED and both.size > 1:
            smallest = np.argmin(both[:-1])
            a[smallest] += a[-1]
            b[smallest] += b[-1]
            a, b = a[:-1], b[:-1]
            both = a + b
    expected = np.concatenate([both * (a.sum() / both.sum()), both * (b.sum() / both.sum())])
    assert_distribution(np.concatenate([a, b]), expected, what, ddof=both.size - 1)


def binomial_pvalue(successes: int, trials: int, p: float) -> float:
    """Exact two-sided binomial test: no approximation, for a single rate (an acceptance
    probability, one token of two)."""
    return float(stats.binomtest(int(successes), int(trials), float(p)).pvalue)


def assert_binomial(successes: int, trials: int, p: float, what: str) -> None:
    """``successes`` of ``trials`` agree with rate ``p`` (exact test, false-failure rate ``ALPHA``)."""
    pv = binomial_pvalue(successes, trials, p)
    assert pv > ALPHA, f"{what}: {successes}/{trials} against rate {p:.6g}: exact binomial p-value {pv:.3g} <= {ALPHA}"
