"""Vocab-parallel verification for tensor-parallel engines (SPEC §11).

A tensor-parallel engine holds the target's logits split by vocabulary: rank i has the columns
``[vocab_start, vocab_start + V_i)`` of every row. Instead of all-gathering the ``[N, V]``
logits and calling ``dspark_ops.verify_chain`` / ``verify_tree``, every rank calls the
functions here on its shard; they return, on every rank, the outputs the single-device op
gives on the concatenated logits (up to a normaliser summed in another order flipping a float
near-tie).

How: the Gumbel noise of the single-device ops is keyed by the global vocabulary id, so a rank
can run its part of every race. Each rank computes per-row statistics of its shard (softmax max
and sum, the draft token's logits if it owns that id, greedy argmax and race keys built on
global ids); an all-gather of these ``O(N)`` records lets every rank merge them in rank order
(bit-identical everywhere) and walk the drafts; the rank then runs the residual/bonus race of
each request on its shard, and a second all-gather of ``[R, 2]`` keys picks the winner (highest
score, lowest global id on ties, whatever the rank order). Collectives per call, all of
``O(R·(γ+1))`` or ``O(Σ n_r)`` int64 words and independent of V:

- ``verify_chain``: 2 (stats, race keys);
- ``verify_tree`` without ``draft_logits``: 1 (stats; every emitted token is decided by them);
- ``verify_tree`` with ``draft_logits``: ``max(M - 2, 0) + 2`` <= ``M + 1``: recursive
  rejection needs the residual mass ``D = Σ_v max(0, p(v) - c q(v))`` after each rejection that
  is followed by another child, and a walk has at most ``M - 2`` of them; the rounds run for
  every call (no host sync decides to stop early), each an all-gather of ``[R]`` floats.

Every collective is an all-gather on ``group`` (NCCL on CUDA, gloo on CPU), so merges are done
by the ops in a fixed rank order and nothing depends on a backend's reduction order. No op
syncs with the host; with NCCL the whole call can be captured in a CUDA graph.

Not supported here: the §9 filters (``top_k`` / ``top_p`` / ``min_p``). A filtered distribution
needs a global threshold over the vocabulary (the k-th largest logit, the top-p mass cut),
which takes a data-dependent number of rounds or ``O(k)`` words per row; passing any of them
raises ``NotImplementedError``; a TP engine with filters gathers the logits and calls the
single-device ops.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from .ops import verify_sharded as _records  # noqa: F401 (fake kernels of the phase ops)
from .ops.arguments import request_args

__all__ = ["verify_chain", "verify_tree", "shard_range"]


def shard_range(vocab_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The ``(vocab_start, V_i)`` of an even split with the remainder on the first ranks
    (the split most TP engines use; any disjoint cover of ``[0, vocab_size)`` works)."""
    base, extra = divmod(vocab_size, world_size)
    start = rank * base + min(rank, extra)
    return start, base + (1 if rank < extra else 0)


def _all_gather(t: torch.Tensor, group) -> torch.Tensor:
    """[W, *t.shape]: every rank's `t`, in rank order. The only collective of this module."""
    world = dist.get_world_size(group)
    out = t.new_empty((world, *t.shape))
    if t.numel() > 0:  # shapes are the same on every rank, so every rank skips together
        dist.all_gather_into_tensor(out.view(world * t.shape[0], *t.shape[1:]), t.contiguous(), group=group)
    return out


def _no_filters(top_k, top_p, min_p) -> None:
    for name, value in (("top_k", top_k), ("top_p", top_p), ("min_p", min_p)):
        if value is not None:
            raise NotImplementedError(
                f"dspark_ops.distributed: argument '{name}' is not supported: the SPEC §9 filters need a "
                "global threshold over the vocabulary; gather the logits and call the single-device op"
            )


def verify_chain(
    target_logits: torch.Tensor,
    draft_tokens: torch.Tensor,
    lengths: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    draft_logits: Optional[torch.Tensor] = None,
    eos_ids: Optional[torch.Tensor] = None,
    top_k: Optional[torch.Tensor] = None,
    top_p: Optional[torch.Tensor] = None,
    min_p: Optional[torch.Tensor] = None,
    *,
    vocab_start: int,
    vocab_size: int,
    group: Optional[dist.ProcessGroup] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dspark_ops.verify_chain`` on a vocabulary shard; the same outputs on every rank.

    Args:
        target_logits: ``[N, V_i]`` this rank's columns ``[vocab_start, vocab_start + V_i)``
            of the single-device ``target_logits``.
        draft_logits: ``[R, γ, V_i]`` the same columns of the draft logits, or None.
        draft_tokens, lengths, temperature, seed, offset, eos_ids: as the single-device op,
            with global vocabulary ids; identical on every rank. temperature, seed and offset
            may also be Python scalars or lists (one value per request).
        vocab_start: first global id of the shard. vocab_size: the full V. Shards must be
            disjoint and cover ``[0, vocab_size)`` (not checked: that would need a collective).
        group: the tensor-parallel process group (default: the world).

    Returns ``(out_tokens [R, γ+1], num_accepted [R], num_emitted [R])`` as
    ``dspark_ops.verify_chain``. Two all-gathers on ``group``: ``[N, 5]`` and ``[R, 2]`` int64.
    """
    _no_filters(top_k, top_p, min_p)
    ops = torch.ops.dspark
    per = request_args(draft_tokens.shape[0], target_logits.device, temperature=temperature, seed=seed, offset=offset)
    temperature, seed, offset = per["temperature"], per["seed"], per["offset"]
    stats = ops.verify_chain_shard_stats(
        target_logits, draft_tokens, lengths, temperature, seed, offset, draft_logits, vocab_start, vocab_size
    )
    stats = _all_gather(stats, group)
    out_tokens, num_accepted, num_emitted, keys = ops.verify_chain_shard_decide(
        target_logits, draft_tokens, lengths, temperature, seed, offset, stats, draft_logits, eos_ids, vocab_start,
        vocab_size,
    )
    keys = _all_gather(keys, group)
    return ops.verify_shard_finish(out_tokens, num_accepted, num_emitted, keys), num_accepted, num_emitted


def verify_tree(
    target_logits: torch.Tensor,
    tree_tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    draft_logits: Optional[torch.Tensor] = None,
    eos_ids: Optional[torch.Tensor] = None,
    top_k: Optional[torch.Tensor] = None,
    top_p: Optional[torch.Tensor] = None,
    min_p: Optional[torch.Tensor] = None,
    *,
    vocab_start: int,
    vocab_size: int,
    group: Optional[dist.ProcessGroup] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dspark_ops.verify_tree`` on a vocabulary shard; the same outputs on every rank.

    ``target_logits [Σ n_r, V_i]`` and ``draft_logits [Σ n_r, V_i]`` (or None) are this rank's
    columns ``[vocab_start, vocab_start + V_i)``; every other argument is the single-device
    op's, identical on every rank. Returns ``(out_tokens [R, M], accepted_nodes [R, M],
    num_accepted [R], num_emitted [R])``. Collectives: one all-gather of ``[Σ n_r, 5]`` int64
    without ``draft_logits``; with them, ``max(M - 2, 0)`` more of ``[R]`` float32 (residual
    masses) and one of ``[R, 2]`` int64 (race keys).
    """
    _no_filters(top_k, top_p, min_p)
    ops = torch.ops.dspark
    per = request_args(tree_tokens.shape[0], target_logits.device, temperature=temperature, seed=seed, offset=offset)
    temperature, seed, offset = per["temperature"], per["seed"], per["offset"]
    args = (target_logits, tree_tokens, parents, num_nodes, temperature, seed, offset)
    stats = _all_gather(ops.verify_tree_shard_stats(*args, draft_logits, vocab_start, vocab_size), group)
    walk, out_tokens, accepted_nodes, partial = ops.verify_tree_shard_walk(
        *args, stats, None, None, None, None, draft_logits, eos_ids, vocab_start, vocab_size
    )
    if draft_logits is not None:
        for _ in range(max(tree_tokens.shape[1] - 2, 0)):
            masses = _all_gather(partial, group)
            walk, out_tokens, accepted_nodes, partial = ops.verify_tree_shard_walk(
                *args, stats, walk, out_tokens, accepted_nodes, masses, draft_logits, eos_ids, vocab_start, vocab_size
            )
    keys, num_accepted, num_emitted = ops.verify_tree_shard_race(*args, stats, walk, draft_logits, vocab_start, vocab_size)
    # Without draft_logits every emitted token is already known to every rank (the same key).
    keys = _all_gather(keys, group) if draft_logits is not None else keys.unsqueeze(0)
    out_tokens = ops.verify_shard_finish(out_tokens, num_accepted, num_emitted, keys)
    return out_tokens, accepted_nodes, num_accepted, num_emitted
