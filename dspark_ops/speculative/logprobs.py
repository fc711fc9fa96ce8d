"""Log-probabilities of the tokens a verify op emitted, for engines that return logprobs.

The verify ops never compute ``log p`` of what they emit (they race Gumbel noise against
logits and compare coins with probabilities), so logprobs are a separate, optional pass.
Cost: it gathers the ``W`` verify rows of each request (the rows the emitted tokens were
drawn at) into one float32 ``[R, W, V]`` temporary and runs one log-softmax over it: one
more read of the verify rows, about what the verify op itself reads. Skip it for requests
that did not ask for logprobs by passing only their rows.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..ops.greedy import inverse_temperature


def chain_rows(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``rows [R, width]``: the ``target_logits`` row each ``verify_chain`` output position was
    drawn at (request r's verify row j for output j). ``lengths [R]`` as given to the op."""
    first = torch.cumsum(lengths + 1, 0) - (lengths + 1)
    return first[:, None] + torch.arange(width, device=lengths.device)


def tree_rows(num_nodes: torch.Tensor, accepted_nodes: torch.Tensor) -> torch.Tensor:
    """``rows [R, M]`` for ``verify_tree`` outputs: output k was drawn at the k-th node of the
    accepted path (the root for k = 0, ``accepted_nodes[k-1]`` after), whose row gives the
    distribution of the token that follows it."""
    first = torch.cumsum(num_nodes, 0) - num_nodes
    path = torch.cat([torch.zeros_like(accepted_nodes[:, :1]), accepted_nodes[:, :-1]], 1)
    return first[:, None] + path.clamp_min(0)


def token_logprobs(
    target_logits: torch.Tensor,
    rows: torch.Tensor,
    tokens: torch.Tensor,
    temperature: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``log p(token)`` for each emitted token, ``[R, W]`` float32 (0 where ``tokens`` is -1).

    Args:
        target_logits: ``[N, V]`` the logits given to the verify op.
        rows: ``[R, W]`` int64 row of each token (:func:`chain_rows` / :func:`tree_rows`).
        tokens: ``[R, W]`` int64, the op's ``out_tokens`` (-1 padding).
        temperature: ``[R]`` float32 or None. None gives the raw model distribution
            ``log_softmax(z)`` (vLLM's default ``raw_logprobs``); a tensor gives
            ``log_softmax(z / T)`` with greedy requests (``T <= 1e-5``) read at ``T = 1``.
            Top-k/top-p/min-p filters are not applied: a filtered logprob is this value minus
            the log of the kept mass, and ``-inf`` for tokens the filters removed.
    """
    picked = target_logits[rows.clamp(0, target_logits.shape[0] - 1)].float()  # [R, W, V]
    if temperature is not None:
        scale = torch.where(temperature > 1e-5, temperature, torch.ones_like(temperature))
        picked = picked * inverse_temperature(scale)[:, None, None]
    logp = torch.log_softmax(picked, -1).gather(-1, tokens.clamp_min(0)[..., None]).squeeze(-1)
    return torch.where(tokens >= 0, logp, torch.zeros_like(logp))
