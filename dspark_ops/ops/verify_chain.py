"""``verify_chain``: lossless verification of chain drafts (SPEC §4)."""

from __future__ import annotations

from typing import Optional

import torch

from ._checks import FLOAT_DTYPES, ArgChecks
from ._documented import documented
from .arguments import PerRequest, request_args


@documented
def verify_chain(
    target_logits: torch.Tensor,
    draft_tokens: torch.Tensor,
    lengths: torch.Tensor,
    temperature: PerRequest,
    seed: PerRequest,
    offset: PerRequest,
    draft_logits: Optional[torch.Tensor] = None,
    eos_ids: Optional[torch.Tensor] = None,
    top_k: Optional[PerRequest] = None,
    top_p: Optional[PerRequest] = None,
    min_p: Optional[PerRequest] = None,
    draft_probs: Optional[torch.Tensor] = None,
    draft_ids: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Verify each request's draft chain against the target; the output is exactly the target's.

    Args:
        target_logits: ``[N, V]`` float32/bf16/fp16, ``N = Σ_r (lengths[r] + 1)``. Request r's
            rows come back to back in request order; its row i holds the target's logits for
            the token after its first i verify inputs ``[x0, x_1 .. x_ℓ]``.
        draft_tokens: ``[R, γ]`` int64. Only the first ``lengths[r]`` of a row are read; ``-1``
            or any id outside ``[0, V)`` is never accepted (it is rejected, not an error).
        lengths: ``[R]`` int64 in ``[0, γ]``, the number of drafts to verify per request.
        temperature: ``[R]`` float32; ``<= 1e-5`` is greedy (argmax, lowest index on ties).
        seed, offset: ``[R]`` int64 keys of the counter-based generator (the caller advances
            ``offset`` between rounds; the op never changes them).
        draft_logits: ``[R, γ, V]`` (any float dtype) the drafter's logits ``L_k``, with
            ``q_k = softmax(L_k / T)``; None when drafts were chosen deterministically
            (``q_k`` one-hot on ``x_k``). They must describe the distribution the drafts were
            really drawn from, after any filtering (filtered-out entries ``-inf``).
            Probabilities passed here are silently wrong: use ``draft_probs``.
        eos_ids: ``[E]`` int64 stop tokens: an accepted EOS ends the request's output.
        top_k, top_p, min_p: ``[R]`` engine filters (SPEC §9) applied to the **target** rows:
            ``p_k`` is the filtered target distribution everywhere (acceptance, residual,
            bonus). ``top_k`` int64 (``<= 0`` or ``>= V``: off), ``top_p`` float32 in
            ``(0, 1]`` (1: off), ``min_p`` float32 in ``[0, 1]`` (0: off); min_p, then top_k,
            then top_p, ties at every boundary kept (``dspark/filters.h``). Off values give
            outputs bit-identical to None. Greedy requests ignore them.
        draft_probs: ``[R, γ, V]`` float32 q read as it is (no temperature, no log/softmax
            round trip, ``q = 0`` stays 0); an alternative to ``draft_logits`` (both: error).
        draft_ids: ``[R, γ, K]`` int64: sparse q (SPEC §10). ``draft_logits`` / ``draft_probs``
            then hold K entries per row, ``q(v)`` being the entry whose id is v (logits: softmax
            over the K entries) and 0 for ids not listed; ``-1`` is padding. Other ids outside
            ``[0, V)`` or an id listed twice in a row raise on CPU (on CUDA with
            ``DSPARK_CHECK=1``; otherwise such entries are ignored). Reads O(K) per row.

    ``temperature``, ``seed``, ``offset``, ``top_k``, ``top_p`` and ``min_p`` may also be Python
    scalars or lists: they become ``[R]`` tensors on the device of ``target_logits``
    (``dspark_ops.ops.arguments``); the raw op ``torch.ops.dspark.verify_chain`` takes tensors.

    Returns:
        ``out_tokens [R, γ+1]`` int64: accepted drafts, then the emitted token, then ``-1``;
        ``num_accepted [R]``; ``num_emitted [R]`` (``num_accepted + 1``, or ``num_accepted``
        when stopped at an EOS).

    Sampling accepts ``x_k`` when ``u_k * q_k(x_k) < p_k(x_k)`` (coin from
    ``Purpose.CHAIN_COIN`` at position k); at the first rejection it draws from
    ``norm(max(0, p_k - q_k))`` (``p_k`` if that mass is 0; ``p_k`` itself when ``x_k`` is outside
    ``[0, V)``, which cannot have been drawn from ``q_k``), and after a full accept it draws
    the bonus token from ``p_{ℓ+1}``; both draws are Gumbel-max races with noise from
    ``Purpose.CHAIN_RESAMPLE`` at position k (or ℓ+1). NaN logits count as probability 0;
    a row with no finite logit yields token 0, never an out-of-range id. A row with a +inf
    logit has no finite normaliser: all its probabilities count as 0, and a token drawn from
    it is its first +inf entry.

    On CPU, value checks (lengths in range, rows summing to N) always run. On CUDA they run
    only with ``DSPARK_CHECK=1`` (they need a host sync); otherwise a request whose rows run
    past ``N`` verifies only the rows that exist and the kernel never reads out of bounds.
    """
    a = request_args(
        draft_tokens.shape[0], target_logits.device,
        temperature=temperature, seed=seed, offset=offset, top_k=top_k, top_p=top_p, min_p=min_p,
    )
    return torch.ops.dspark.verify_chain(
        target_logits, draft_tokens, lengths, a["temperature"], a["seed"], a["offset"], draft_logits, eos_ids,
        a["top_k"], a["top_p"], a["min_p"], draft_probs, draft_ids,
    )


@torch.library.register_fake("dspark::verify_chain")
def _verify_chain_fake(
    target_logits, draft_tokens, lengths, temperature, seed, offset, draft_logits=None, eos_ids=None,
    top_k=None, top_p=None, min_p=None, draft_probs=None, draft_ids=None,
):
    c = ArgChecks("dspark::verify_chain", target_logits)
    c.dtype(target_logits, "target_logits", FLOAT_DTYPES)
    c.dim(target_logits, "target_logits", 2)
    c.tensor(draft_tokens, "draft_tokens", (torch.int64,), [None, None])
    requests, gamma = draft_tokens.shape
    vocab = target_logits.size(1)
    c.check(vocab > 0, "target_logits", lambda: f"must have a vocabulary size in [1, 2^32), got {vocab}")
    c.check(vocab < 2**32, "target_logits", lambda: f"must have a vocabulary size in [1, 2^32), got {vocab}")
    c.check(gamma < 65535, "draft_tokens", lambda: f"must have fewer than 65535 columns (γ), got {gamma}")
    c.index_vector(lengths, "lengths", requests, "R, the rows of draft_tokens")
    c.sampling(temperature, seed, offset, eos_ids, requests)
    c.filters(top_k, top_p, min_p, requests)
    c.draft_q(draft_logits, draft_probs, draft_ids, [(requests, "R"), (gamma, "γ, the columns of draft_tokens")], vocab)
    out_tokens = draft_tokens.new_empty((requests, gamma + 1))
    return out_tokens, draft_tokens.new_empty((requests,)), draft_tokens.new_empty((requests,))
