"""Tests of dspark::schedule_lengths (SPEC §6): exact agreement with the numpy reference,
the paper's Algorithm 1 literally transcribed, the appendix-A counterexample end to end with
verify_chain, bad inputs, and (with a GPU) CPU == CUDA bit for bit at large batches (the
generic checks: test_every_op.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dspark_ops
from dspark_ops import reference

from helpers import requires_cuda
from stats import assert_binomial, binomial_pvalue


def random_case(gen: torch.Generator, R: int, gamma: int, kind: str):
    """confidence [R, γ], sps [R(γ+1)+1+extra], max_lengths [R] or None of one flavour."""
    if kind == "uniform":
        c = torch.rand(R, gamma, generator=gen)
    elif kind == "ties":  # coarse values: many exact ties, saturation at 1, zeros
        c = torch.randint(0, 5, (R, gamma), generator=gen).float() / 4
        c[torch.rand(R, gamma, generator=gen) < 0.3] = 1.0
    else:  # "wild": out-of-range and NaN confidences are clamped (NaN -> 0)
        c = torch.rand(R, gamma, generator=gen) * 1.4 - 0.2
        c[torch.rand(R, gamma, generator=gen) < 0.05] = float("nan")
    size = R * (gamma + 1) + 1 + int(torch.randint(0, 3, (1,), generator=gen))
    shape = int(torch.randint(0, 3, (1,), generator=gen))
    b = torch.arange(size, dtype=torch.float32)
    if shape == 0:  # smooth, decreasing
        sps = 100.0 / (1.0 + b / max(R, 1) * float(torch.rand(1, generator=gen)) * 2)
    elif shape == 1:  # step-wise cliffs
        sps = 50.0 * 0.8 ** torch.div(b, 7, rounding_mode="floor")
    else:  # jagged, non-monotone
        sps = 10.0 + torch.rand(size, generator=gen) * 5 - b * 0.01
    caps = None
    if bool(torch.rand(1, generator=gen) < 0.5):
        caps = torch.randint(-1, gamma + 2, (R,), generator=gen)
    return c, sps, caps


def assert_same(got, want):
    names = ("lengths", "admitted", "expected_tokens", "throughput")
    for name, g, w in zip(names, got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        # Bit-for-bit: the kernels and the reference share one arithmetic order.
        assert torch.equal(g.cpu(), w.cpu()), f"{name}: {g} != {w}"


@pytest.mark.parametrize("R", [1, 3, 17, 256])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_matches_reference(device, R, mode):
    gen = torch.Generator().manual_seed(1000 * R + mode)
    trials = 4 if R == 256 else 12
    for trial in range(trials):
        gamma = [1, 2, 4, 7][trial % 4]
        kind = ["uniform", "ties", "wild"][trial % 3]
        c, sps, caps = random_case(gen, R, gamma, kind)
        budget = int(torch.randint(0, R * gamma + 3, (1,), generator=gen)) if mode == 2 else -1
        want = reference.schedule_lengths(c, sps, mode, budget, caps)
        got = dspark_ops.schedule_lengths(c.to(device), sps.to(device), mode, budget,
                                          None if caps is None else caps.to(device))
        assert_same(got, want)
        lengths = got[0].cpu()
        assert int(lengths.sum()) == int(got[1])
        assert bool((lengths >= 0).all()) and bool((lengths <= gamma).all())
        if caps is not None:
            assert bool((lengths <= caps.clamp(min=0)).all())


def algorithm1_literal(c, sps, R, gamma, global_search=False):
    """Algorithm 1 of the paper, line by line, in float64 (exact for the dyadic inputs used)."""
    a = {(r, j): float(np.prod(c[r, :j])) for r in range(R) for j in range(1, gamma + 1)}
    E = sorted([(r, j) for (r, j), v in a.items() if v > 0], key=lambda rj: (-a[rj], rj[1], rj[0]))
    ell, B, tau = [0] * R, R, float(R)
    best, best_ell = R * sps[R], [0] * R
    for r, j in E:
        ell[r] = j
        B += 1
        tau += a[(r, j)]
        theta = tau * sps[B]
        if theta > best:
            best, best_ell = theta, list(ell)
        elif not global_search:
            break
    return best_ell


@pytest.mark.parametrize("mode", [0, 1])
def test_algorithm1_literal(mode):
    # Dyadic confidences and sps make every float32 sum exact, so any summation order
    # gives the same Θ and the literal float64 transcription must agree exactly.
    rng = np.random.default_rng(7 + mode)
    for _ in range(60):
        R, gamma = int(rng.integers(1, 12)), int(rng.integers(1, 5))
        c = rng.integers(0, 5, (R, gamma)) / 4.0
        steps = rng.integers(0, 3, R * (gamma + 1) + 1)
        sps = 64.0 - np.cumsum(steps) / 8.0 if mode == 0 else 64.0 - rng.integers(0, 64, R * (gamma + 1) + 1) / 8.0
        want = algorithm1_literal(c, sps, R, gamma, global_search=mode == 1)
        got = dspark_ops.schedule_lengths(torch.tensor(c, dtype=torch.float32), torch.tensor(sps, dtype=torch.float32), mode)
        assert got[0].tolist() == want


def test_tie_break_j_then_r(device):
    # c = 1 everywhere: every a is 1; ranking is j ascending then r ascending, so the first
    # four admitted are (0,1), (1,1), (2,1), (0,2).
    c = torch.ones(3, 2, device=device)
    sps = torch.full((10,), 1.0, device=device)
    lengths, admitted, tau, theta = dspark_ops.schedule_lengths(c, sps, 2, 4)
    assert lengths.tolist() == [2, 1, 1] and int(admitted) == 4
    assert float(tau) == 7.0 and float(theta) == 7.0
    # Causal with flat sps admits everything (every step raises Θ by 1).
    assert dspark_ops.schedule_lengths(c, sps, 0)[0].tolist() == [2, 2, 2]
    # Caps: request 0 capped at 1 skips (0,2).
    caps = torch.tensor([1, 2, 0], device=device)
    assert dspark_ops.schedule_lengths(c, sps, 2, 3, caps)[0].tolist() == [1, 2, 0]


def test_paper_numbers(device):
    sps = torch.tensor([0.0, 1.0, 0.5, 0.45], device=device)
    high = torch.tensor([[0.8, 0.9]], device=device)
    low = torch.tensor([[0.8, 0.0]], device=device)
    lengths, admitted, tau, theta = dspark_ops.schedule_lengths(high, sps, 0)
    assert lengths.tolist() == [0] and int(admitted) == 0 and float(theta) == 1.0 and float(tau) == 1.0
    lengths, admitted, tau, theta = dspark_ops.schedule_lengths(high, sps, 1)
    assert lengths.tolist() == [2] and int(admitted) == 2
    assert float(tau) == pytest.approx(2.52) and float(theta) == pytest.approx(1.134)
    assert dspark_ops.schedule_lengths(low, sps, 1)[0].tolist() == [0]


def test_empty_and_degenerate(device):
    sps = torch.tensor([3.0], device=device)
    for mode in (0, 1, 2):
        lengths, admitted, tau, theta = dspark_ops.schedule_lengths(torch.empty(0, 5, device=device), sps, mode, 0)
        assert lengths.shape == (0,) and int(admitted) == 0 and float(tau) == 0.0 and float(theta) == 0.0
    # γ = 0 and all-zero confidence: nothing to admit.
    out = dspark_ops.schedule_lengths(torch.empty(4, 0, device=device), torch.ones(5, device=device) * 2, 1)
    assert out[0].tolist() == [0] * 4 and float(out[2]) == 4.0 and float(out[3]) == 8.0
    out = dspark_ops.schedule_lengths(torch.zeros(4, 3, device=device), torch.ones(17, device=device), 2, 100)
    assert out[0].tolist() == [0] * 4 and int(out[1]) == 0


# ---- Appendix A: causal is lossless, global (with this round's confidences) is biased ----

P_TARGET = torch.tensor([0.7, 0.3])
P_DRAFT = torch.tensor([0.5, 0.5])


def simulate_first_token(mode: int, sps_values, n: int, seed: int) -> np.ndarray:
    """n independent requests; returns the counts of the first output token (A=0, B=1)."""
    gen = torch.Generator().manual_seed(seed)
    drafts = torch.multinomial(P_DRAFT, 2 * n, replacement=True, generator=gen).view(n, 2)
    sps = torch.tensor(sps_values, dtype=torch.float32)
    lengths = torch.empty(n, dtype=torch.int64)
    for i in range(n):
        # c1 = 0.8 is known before drafting; c2 depends on the sampled x1 (Markov head).
        c2 = 0.9 if int(drafts[i, 0]) == 0 else 0.0
        lengths[i] = dspark_ops.schedule_lengths(torch.tensor([[0.8, c2]]), sps, mode)[0][0]
    rows = int((lengths + 1).sum())
    target_logits = P_TARGET.log().expand(rows, 2).contiguous()
    draft_logits = P_DRAFT.log().expand(n, 2, 2).contiguous()
    out, _, _ = dspark_ops.verify_chain(target_logits, drafts, lengths, torch.ones(n),
                                        torch.arange(n, dtype=torch.int64) + seed * n,
                                        torch.zeros(n, dtype=torch.int64), draft_logits)
    return np.bincount(out[:, 0].numpy(), minlength=2), lengths


# Two outcomes: an exact binomial test of the count of A (stats.assert_binomial).
@pytest.mark.parametrize("sps_values, expect_lengths", [
    ([0.0, 1.0, 0.5, 0.45], {0}),      # the paper's table: causal stops at once (Θ1 = 0.9 < 1)
    ([0.0, 1.0, 0.6, 0.45], {1, 2}),   # Θ1 = 1.08 > 1: causal admits x1 (and x2 when x1 = A)
])
def test_appendix_a_causal_is_lossless(sps_values, expect_lengths):
    counts, lengths = simulate_first_token(0, sps_values, 6000, seed=11)
    assert set(lengths.unique().tolist()) == expect_lengths
    assert_binomial(counts[0], counts.sum(), float(P_TARGET[0]), "first token A")


def test_appendix_a_global_is_biased():
    counts, lengths = simulate_first_token(1, [0.0, 1.0, 0.5, 0.45], 6000, seed=12)
    assert set(lengths.unique().tolist()) == {0, 2}
    # The documented bias: (0.85, 0.15) instead of (0.7, 0.3).
    assert_binomial(counts[0], counts.sum(), 0.85, "first token A under global mode")
    assert binomial_pvalue(counts[0], counts.sum(), float(P_TARGET[0])) < 1e-10


# ---- argument checks ----

def test_bad_inputs(device):
    c = torch.rand(4, 3, device=device)
    sps = torch.ones(17, device=device)
    with pytest.raises(RuntimeError, match="confidence"):
        dspark_ops.schedule_lengths(c.double(), sps, 0)
    with pytest.raises(RuntimeError, match="confidence"):
        dspark_ops.schedule_lengths(c.view(-1), sps, 0)
    with pytest.raises(RuntimeError, match="sps"):
        dspark_ops.schedule_lengths(c, torch.ones(16, device=device), 0)  # S must be > R(γ+1) = 16
    with pytest.raises(RuntimeError, match="sps"):
        dspark_ops.schedule_lengths(c, sps.double(), 0)
    with pytest.raises(RuntimeError, match="sps"):
        dspark_ops.schedule_lengths(c, sps.view(1, -1), 0)
    with pytest.raises(RuntimeError, match="mode"):
        dspark_ops.schedule_lengths(c, sps, 3)
    with pytest.raises(RuntimeError, match="budget"):
        dspark_ops.schedule_lengths(c, sps, 2, -1)
    with pytest.raises(RuntimeError, match="max_lengths"):
        dspark_ops.schedule_lengths(c, sps, 0, -1, torch.ones(3, dtype=torch.int64, device=device))
    with pytest.raises(RuntimeError, match="max_lengths"):
        dspark_ops.schedule_lengths(c, sps, 0, -1, torch.ones(4, dtype=torch.int32, device=device))
    if device == "cuda":
        with pytest.raises(RuntimeError, match="sps"):
            dspark_ops.schedule_lengths(c, sps.cpu(), 0)
        with pytest.raises(RuntimeError, match="confidence"):  # over the one-block limit
            dspark_ops.schedule_lengths(torch.rand(1025, 16, device=device), torch.ones(1025 * 17 + 1, device=device), 0)


# ---- CUDA: bit-identical to the CPU, large batches ----

@requires_cuda
@pytest.mark.parametrize("R, gamma", [(1024, 16), (256, 7), (1000, 3), (16384, 1), (5, 16)])
def test_cuda_matches_cpu(R, gamma):
    gen = torch.Generator().manual_seed(R + gamma)
    for mode in (0, 1, 2):
        for kind in ("uniform", "ties", "wild"):
            c, sps, caps = random_case(gen, R, gamma, kind)
            budget = R * gamma // 3 if mode == 2 else -1
            want = dspark_ops.schedule_lengths(c, sps, mode, budget, caps)
            got = dspark_ops.schedule_lengths(c.cuda(), sps.cuda(), mode, budget, None if caps is None else caps.cuda())
            assert_same(got, want)

