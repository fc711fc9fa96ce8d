"""Fake kernels of the vocab-parallel phase ops (SPEC §11).

The ops are the per-rank phases of ``dspark_ops.distributed.verify_chain`` / ``verify_tree``;
that module composes them with the collectives and documents them. Each phase reads only the
rank's column shard ``[vocab_start, vocab_start + V_i)`` of the logits and exchanges int64
records laid out as in ``csrc/include/dspark/verify_sharded.h``:

- ``*_shard_stats`` -> ``[N, 5]`` per logit row (softmax statistics of the shard, the scaled
  logits of the row's draft token if the shard owns it, greedy argmax key, race key);
- ``verify_chain_shard_decide`` -> ``(out_tokens [R, γ+1], num_accepted, num_emitted,
  race_keys [R, 2])`` from the gathered stats ``[W, N, 5]``;
- ``verify_tree_shard_walk`` -> ``(walk [R, 6], out_tokens [R, M], accepted_nodes [R, M],
  partial_mass [R] float32)``: one step of the tree walk (``walk`` None: a fresh walk);
- ``verify_tree_shard_race`` -> ``(race_keys [R, 2], num_accepted, num_emitted)``;
- ``verify_shard_finish`` -> ``out_tokens`` with the gathered race winners ``[W, R, 2]`` placed.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._checks import ArgChecks
from ._documented import documented

STATS_WORDS = 5  # ShardRowStats
RACE_KEY_WORDS = 2  # residual, fallback
WALK_WORDS = 6  # TreeWalk


T = torch.Tensor


@documented
def verify_chain_shard_stats(target_logits: T, draft_tokens: T, lengths: T, temperature: T, seed: T, offset: T,
                             draft_logits: Optional[T], vocab_start: int, vocab_size: int) -> T:
    """Phase 1 of ``dspark_ops.distributed.verify_chain`` on one rank's columns
    ``[vocab_start, vocab_start + V_i)``: ``target_logits [N, V_i]``, ``draft_logits
    [R, γ, V_i]`` or None, the other arguments as ``verify_chain``. Returns ``[N, 5]`` int64
    records (ShardRowStats): softmax max/sum of the shard of each row / T (and of its draft
    row), the scaled logits of the row's draft token if the shard owns it, the greedy argmax key."""
    return torch.ops.dspark.verify_chain_shard_stats(target_logits, draft_tokens, lengths, temperature, seed,
                                                     offset, draft_logits, vocab_start, vocab_size)


@documented
def verify_chain_shard_decide(target_logits: T, draft_tokens: T, lengths: T, temperature: T, seed: T, offset: T,
                              stats: T, draft_logits: Optional[T], eos_ids: Optional[T], vocab_start: int,
                              vocab_size: int) -> tuple[T, T, T, T]:
    """Phase 2 of ``dspark_ops.distributed.verify_chain``: merges the all-gathered ``stats
    [W, N, 5]`` in rank order, walks every chain (coins, acceptance, EOS) and runs the shard's
    part of the residual / bonus race. Returns ``(out_tokens [R, γ+1]`` with the accepted drafts,
    ``num_accepted [R], num_emitted [R], race_keys [R, 2])``."""
    return torch.ops.dspark.verify_chain_shard_decide(target_logits, draft_tokens, lengths, temperature, seed,
                                                      offset, stats, draft_logits, eos_ids, vocab_start, vocab_size)


@documented
def verify_tree_shard_stats(target_logits: T, tree_tokens: T, parents: T, num_nodes: T, temperature: T, seed: T,
                            offset: T, draft_logits: Optional[T], vocab_start: int, vocab_size: int) -> T:
    """Phase 1 of ``dspark_ops.distributed.verify_tree`` on one rank's columns: ``[N, 5]`` int64
    records per node row (softmax statistics of p_i and q_i where node i has a valid child and
    ``draft_logits`` are given, the scaled p/q logits of node i's token in its parent's row if the
    shard owns it, the greedy argmax key, the Gumbel race key of p_i)."""
    return torch.ops.dspark.verify_tree_shard_stats(target_logits, tree_tokens, parents, num_nodes, temperature,
                                                    seed, offset, draft_logits, vocab_start, vocab_size)


@documented
def verify_tree_shard_walk(target_logits: T, tree_tokens: T, parents: T, num_nodes: T, temperature: T, seed: T,
                           offset: T, stats: T, walk: Optional[T], out_tokens: Optional[T],
                           accepted_nodes: Optional[T], masses: Optional[T], draft_logits: Optional[T],
                           eos_ids: Optional[T], vocab_start: int, vocab_size: int) -> tuple[T, T, T, T]:
    """One step of the tree walk of ``dspark_ops.distributed.verify_tree`` on the gathered
    ``stats [W, N, 5]``. ``walk``, ``out_tokens``, ``accepted_nodes`` None: a fresh walk from the
    root; else the previous step's outputs, with ``masses [W, R]`` float32 the all-gathered
    partial residual masses. Returns ``(walk [R, 6], out_tokens [R, M], accepted_nodes [R, M],
    partial_mass [R])``: the walk stops where a rejection needs the residual mass over the whole
    vocabulary, and ``partial_mass`` is this shard's part of it."""
    return torch.ops.dspark.verify_tree_shard_walk(target_logits, tree_tokens, parents, num_nodes, temperature,
                                                   seed, offset, stats, walk, out_tokens, accepted_nodes, masses,
                                                   draft_logits, eos_ids, vocab_start, vocab_size)


@documented
def verify_tree_shard_race(target_logits: T, tree_tokens: T, parents: T, num_nodes: T, temperature: T, seed: T,
                           offset: T, stats: T, walk: T, draft_logits: Optional[T], vocab_start: int,
                           vocab_size: int) -> tuple[T, T, T]:
    """The last phase of the tree walk: for requests whose every child was rejected, the shard's
    part of the race over ``max(0, p - c q)`` (and over p as the fallback); for the others the
    known token's key. Returns ``(race_keys [R, 2], num_accepted [R], num_emitted [R])``."""
    return torch.ops.dspark.verify_tree_shard_race(target_logits, tree_tokens, parents, num_nodes, temperature,
                                                   seed, offset, stats, walk, draft_logits, vocab_start, vocab_size)


@documented
def verify_shard_finish(out_tokens: T, num_accepted: T, num_emitted: T, race_keys: T) -> T:
    """Places each request's emitted token, the winner of the all-gathered ``race_keys
    [W, R, 2]`` (residual race, else the fallback race; highest score, lowest global id on ties),
    at ``out_tokens[r, num_accepted[r]]`` where ``num_emitted > num_accepted``. Returns a new
    ``out_tokens``."""
    return torch.ops.dspark.verify_shard_finish(out_tokens, num_accepted, num_emitted, race_keys)


def _check_devices(op: str, args: dict) -> None:
    """Every tensor argument (``args``: the fake's parameters, in schema order) on the device of
    the first one, as the bindings' check_device: a cpu/meta mix raises naming the argument."""
    tensors = [(name, t) for name, t in args.items() if isinstance(t, torch.Tensor)]
    c = ArgChecks(f"dspark::{op}", tensors[0][1])
    for name, t in tensors[1:]:
        c.device(t, name)


def _check_2d(t, op, name):
    torch._check(t.dim() == 2, lambda: f"dspark::{op}: argument '{name}' must have 2 dimensions")


@torch.library.register_fake("dspark::verify_chain_shard_stats")
def _chain_stats_fake(target_logits, draft_tokens, lengths, temperature, seed, offset, draft_logits, vocab_start, vocab_size):
    _check_devices("verify_chain_shard_stats", locals())
    _check_2d(target_logits, "verify_chain_shard_stats", "target_logits")
    return draft_tokens.new_empty((target_logits.shape[0], STATS_WORDS))


@torch.library.register_fake("dspark::verify_chain_shard_decide")
def _chain_decide_fake(
    target_logits, draft_tokens, lengths, temperature, seed, offset, stats, draft_logits, eos_ids, vocab_start, vocab_size
):
    _check_devices("verify_chain_shard_decide", locals())
    _check_2d(draft_tokens, "verify_chain_shard_decide", "draft_tokens")
    requests, gamma = draft_tokens.shape
    return (
        draft_tokens.new_empty((requests, gamma + 1)),
        draft_tokens.new_empty((requests,)),
        draft_tokens.new_empty((requests,)),
        draft_tokens.new_empty((requests, RACE_KEY_WORDS)),
    )


@torch.library.register_fake("dspark::verify_tree_shard_stats")
def _tree_stats_fake(
    target_logits, tree_tokens, parents, num_nodes, temperature, seed, offset, draft_logits, vocab_start, vocab_size
):
    _check_devices("verify_tree_shard_stats", locals())
    _check_2d(target_logits, "verify_tree_shard_stats", "target_logits")
    return tree_tokens.new_empty((target_logits.shape[0], STATS_WORDS))


@torch.library.register_fake("dspark::verify_tree_shard_walk")
def _tree_walk_fake(
    target_logits,
    tree_tokens,
    parents,
    num_nodes,
    temperature,
    seed,
    offset,
    stats,
    walk,
    out_tokens,
    accepted_nodes,
    masses,
    draft_logits,
    eos_ids,
    vocab_start,
    vocab_size,
):
    _check_devices("verify_tree_shard_walk", locals())
    _check_2d(tree_tokens, "verify_tree_shard_walk", "tree_tokens")
    requests, width = tree_tokens.shape
    return (
        tree_tokens.new_empty((requests, WALK_WORDS)),
        tree_tokens.new_empty((requests, width)),
        tree_tokens.new_empty((requests, width)),
        tree_tokens.new_empty((requests,), dtype=torch.float32),
    )


@torch.library.register_fake("dspark::verify_tree_shard_race")
def _tree_race_fake(
    target_logits, tree_tokens, parents, num_nodes, temperature, seed, offset, stats, walk, draft_logits, vocab_start, vocab_size
):
    _check_devices("verify_tree_shard_race", locals())
    _check_2d(tree_tokens, "verify_tree_shard_race", "tree_tokens")
    requests = tree_tokens.shape[0]
    return (
        tree_tokens.new_empty((requests, RACE_KEY_WORDS)),
        tree_tokens.new_empty((requests,)),
        tree_tokens.new_empty((requests,)),
    )


@torch.library.register_fake("dspark::verify_shard_finish")
def _finish_fake(out_tokens, num_accepted, num_emitted, race_keys):
    _check_devices("verify_shard_finish", locals())
    _check_2d(out_tokens, "verify_shard_finish", "out_tokens")
    return torch.empty_like(out_tokens, memory_format=torch.contiguous_format)
