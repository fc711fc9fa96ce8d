"""``schedule_lengths``: load-aware verification lengths (SPEC §6, Algorithm 1 of the paper)."""

from __future__ import annotations

from typing import Optional

import torch

from ._documented import documented

CAUSAL = 0
GLOBAL = 1
TOP_K = 2


@documented
def schedule_lengths(
    confidence: torch.Tensor,
    sps: torch.Tensor,
    mode: int = CAUSAL,
    budget: int = -1,
    max_lengths: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose each request's verification length ``ℓ_r ∈ [0, γ]`` to maximise throughput.

    Throughput is ``Θ = τ · SPS(B)``: ``τ = Σ_r (1 + Σ_{j ≤ ℓ_r} a_{r,j})`` expected tokens per
    step, ``B = Σ_r (1 + ℓ_r)`` verify tokens, ``a_{r,j} = Π_{i ≤ j} c_{r,i}`` the survival
    probability of draft j. Candidates ``(r, j)`` with ``1 ≤ j ≤ max_lengths[r]`` and
    ``a_{r,j} > 0`` are ranked by ``a`` descending, ties by ``j`` ascending, then ``r``
    ascending, and admitted in that order starting from ``B = R, τ = R, Θ* = R · sps[R]``;
    admitting ``(r, j)`` sets ``ℓ_r = j`` (a is non-increasing in j and ties go to the smaller
    j, so the admitted drafts of a request are always a prefix, even when c saturates at 1).

    Args:
        confidence: ``[R, γ]`` float32, the calibrated conditional acceptance ``c_{r,k}``.
            Values are clamped to ``[0, 1]`` and NaN counts as 0 (no error, on any device).
        sps: ``[S]`` float32, profiled engine steps per second for a verify batch of ``B``
            tokens at ``sps[B]`` (see ``dspark_ops.speculative.sps_profile``), ``S > R·(γ+1)``, else a
            RuntimeError (a shape check: it never syncs).
        mode: ``0`` causal (Algorithm 1): keep a candidate while ``Θ > Θ*`` (raising ``Θ*``)
            and stop at the first one with ``Θ ≤ Θ*``. ``1`` global (section 5.2): walk the
            whole list and keep the shortest prefix reaching the largest ``Θ``. ``2`` top-K:
            admit the first ``budget`` candidates (all of them if there are fewer).
        budget: the K of mode 2 (must be ``>= 0`` there); ignored by modes 0 and 1.
        max_lengths: ``[R]`` int64 cap on each ``ℓ_r`` (e.g. tokens left before
            ``max_new_tokens``); values are clamped to ``[0, γ]``. None means γ.

    Returns:
        ``lengths [R]`` int64, ``admitted []`` int64 (draft tokens admitted, ``Σ ℓ_r``),
        ``expected_tokens []`` float32 (``τ`` of the kept prefix) and ``throughput []``
        float32 (``Θ`` of the kept prefix), all on the input's device.

    .. warning::
        **Mode 1 (global) is NOT lossless when the confidences depend on this round's draft
        tokens** — which is the case for DSpark's Markov confidence head, whose ``c_{r,k+1}``
        is computed from the sampled ``x_{r,k}``. Looking past a drop in ``Θ`` lets the
        realisation of ``x_{r,k}`` decide whether ``x_{r,k}`` itself is verified (a draft
        that leads to confident continuations gets admitted, one that does not is dropped),
        which biases the output away from the target distribution. Appendix A of the paper
        gives the counterexample, reproduced in ``tests/test_schedule_lengths.py``: target
        (0.7, 0.3), draft (0.5, 0.5), γ=2, SPS = (1.0, 0.5, 0.45): global mode outputs
        (0.85, 0.15). Use mode 1 only as in section 5.2, with confidences computed *before*
        this round's drafts exist (e.g. from two steps earlier in an asynchronous /
        zero-overhead-scheduling pipeline): then the truncation cannot depend on the drafts.

    Mode 0 (causal) is lossless with this round's confidences: because the walk stops at the
    first candidate that does not raise ``Θ``, the decision to admit draft k is made from
    candidates ranked before it; and since a candidate ``(r, j+1)`` (which depends on
    ``x_{r,j}``) always ranks after ``(r, j)``, admitting ``x_{r,j}`` never depends on the
    confidence computed from ``x_{r,j}`` (the non-anticipating property, appendix A). This
    relies on the ``j``-ascending tie-break when ``c = 1``. Mode 2 is lossless when ``budget``
    does not depend on this round's drafts.

    Arithmetic (shared bit for bit by the CPU and CUDA kernels, see ``dspark/schedule.h``):
    float32 throughout; ``a`` is a left fold of products; ``τ`` prefix sums are left folds
    within chunks of 16 ranked candidates, whose totals are combined by a Hillis-Steele scan,
    ``τ_i = R + (E_chunk + s_local)`` and ``Θ_i = τ_i · sps[R + i + 1]``; every add and
    multiply is a single rounded IEEE operation (no FMA). NaN in ``sps`` never wins: a NaN
    ``Θ`` stops mode 0 and is skipped by mode 1. Deterministic; no host sync; graph capturable.
    On CUDA the whole schedule runs in one thread block (bitonic sort in shared memory), which
    limits ``R·γ ≤ 16384`` (e.g. R = 1024 with γ = 16); a larger batch raises a RuntimeError.
    ``R = 0`` is valid.
    """
    return torch.ops.dspark.schedule_lengths(confidence, sps, mode, budget, max_lengths)


@torch.library.register_fake("dspark::schedule_lengths")
def _schedule_lengths_fake(confidence, sps, mode, budget=-1, max_lengths=None):
    torch._check(confidence.dim() == 2, lambda: "dspark::schedule_lengths: argument 'confidence' must have 2 dimensions")
    torch._check(sps.dim() == 1, lambda: "dspark::schedule_lengths: argument 'sps' must have 1 dimension")
    torch._check(mode in (0, 1, 2), lambda: "dspark::schedule_lengths: argument 'mode' must be 0, 1 or 2")
    requests = confidence.shape[0]
    lengths = confidence.new_empty((requests,), dtype=torch.int64)
    admitted = confidence.new_empty((), dtype=torch.int64)
    return lengths, admitted, confidence.new_empty(()), confidence.new_empty(())
