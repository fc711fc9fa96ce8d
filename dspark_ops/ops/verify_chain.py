"""``verify_chain``: lossless verification of chain drafts (SPEC §4)."""

from __future__ import annotations

from typing import Optional

import torch

from ._documented import documented


@documented
def verify_chain(
    target_logits: torch.Tensor,
    draft_tokens: torch.Tensor,
    lengths: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    draft_logits: Optional[torch.Tensor] = None,
    eos_ids: Optional[torch.Tensor] = None,
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
            (``q_k`` one-hot on ``x_k``).
        eos_ids: ``[E]`` int64 stop tokens: an accepted EOS ends the request's output.

    Returns:
        ``out_tokens [R, γ+1]`` int64: accepted drafts, then the emitted token, then ``-1``;
        ``num_accepted [R]``; ``num_emitted [R]`` (``num_accepted + 1``, or ``num_accepted``
        when stopped at an EOS).

    Sampling accepts ``x_k`` when ``u_k * q_k(x_k) < p_k(x_k)`` (coin from
    ``Purpose.CHAIN_COIN`` at position k); at the first rejection it draws from
    ``norm(max(0, p_k - q_k))`` (``p_k`` if that mass is 0), and after a full accept it draws
    the bonus token from ``p_{ℓ+1}``; both draws are Gumbel-max races with noise from
    ``Purpose.CHAIN_RESAMPLE`` at position k (or ℓ+1). NaN logits count as probability 0;
    a row with no finite logit yields token 0, never an out-of-range id.

    On CPU, value checks (lengths in range, rows summing to N) always run. On CUDA they run
    only with ``DSPARK_CHECK=1`` (they need a host sync); otherwise a request whose rows run
    past ``N`` verifies only the rows that exist and the kernel never reads out of bounds.
    """
    return torch.ops.dspark.verify_chain(
        target_logits, draft_tokens, lengths, temperature, seed, offset, draft_logits, eos_ids
    )


@torch.library.register_fake("dspark::verify_chain")
def _verify_chain_fake(target_logits, draft_tokens, lengths, temperature, seed, offset, draft_logits=None, eos_ids=None):
    torch._check(target_logits.dim() == 2, lambda: "dspark::verify_chain: argument 'target_logits' must have 2 dimensions")
    torch._check(draft_tokens.dim() == 2, lambda: "dspark::verify_chain: argument 'draft_tokens' must have 2 dimensions")
    requests, gamma = draft_tokens.shape
    out_tokens = draft_tokens.new_empty((requests, gamma + 1))
    return out_tokens, draft_tokens.new_empty((requests,)), draft_tokens.new_empty((requests,))
