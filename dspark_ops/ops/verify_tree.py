"""``tree_metadata`` and ``verify_tree``: tree drafts (SPEC §5)."""

from __future__ import annotations

from typing import Optional

import torch

from ._documented import documented


@documented
def tree_metadata(
    parents: torch.Tensor, num_nodes: torch.Tensor, prefix_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention mask, positions and depths of a batch of draft trees for the target's verify pass.

    A request's tree has ``num_nodes[r] = n_r <= M`` nodes in topological order: node 0 is the
    root (the anchor, already committed), ``parents[r, 0] = -1`` and ``0 <= parents[r, i] < i``
    for ``1 <= i < n_r``; entries at ``i >= n_r`` are ignored.

    Args:
        parents: ``[R, M]`` int64 parent of every node (the parent-array encoding).
        num_nodes: ``[R]`` int64 in ``[0, M]``. ``0`` is an empty slot (all rows are padding).
        prefix_lens: ``[R]`` int64, the committed length before the root (its position).

    Returns:
        ``attn_mask [R, M, M]`` bool: ``attn_mask[r, i, j]`` iff j is i or an ancestor of i;
        ``positions [R, M]`` int64: ``prefix_lens[r] + depth``; ``depth [R, M]`` int64 (root 0).
        Padding rows (``i >= n_r``) attend only to themselves and have position and depth -1.

    On CPU the value checks (counts in range, root parent -1, parents before children) always
    run and raise ``RuntimeError`` naming ``num_nodes`` or ``parents``. On CUDA they run only
    with ``DSPARK_CHECK=1`` (they need a host sync); otherwise a node whose parent is out of
    ``[0, i)`` is detached: it and its descendants are laid out like padding rows.
    """
    return torch.ops.dspark.tree_metadata(parents, num_nodes, prefix_lens)


@documented
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Verify each request's draft tree against the target; the output is exactly the target's.

    Args:
        target_logits: ``[N, V]`` float32/bf16/fp16, ``N = Σ_r num_nodes[r]``, requests back to
            back in order; the row of node i holds the target's logits for the token after
            node i (``p_i = softmax(row / T)``).
        tree_tokens: ``[R, M]`` int64 node tokens (``tree_tokens[r, 0]``, the anchor, is not
            read). A token outside ``[0, V)`` (e.g. ``-1``) is never accepted.
        parents: ``[R, M]`` int64, ``parents[r, 0] = -1``, ``0 <= parents[r, i] < i``.
        num_nodes: ``[R]`` int64 in ``[0, M]``; a request with 0 nodes takes no rows and
            emits nothing (``num_emitted = 0``).
        temperature: ``[R]`` float32; ``<= 1e-5`` is greedy (argmax, lowest index on ties).
        seed, offset: ``[R]`` int64 keys of the counter-based generator (never changed).
        draft_logits: ``[N, V]`` (any float dtype) or None. The row of node i gives
            ``q_i = softmax(row / T)``, the distribution node i's children were drawn from,
            independently and with replacement. None: children were chosen deterministically
            (e.g. top-k).
        eos_ids: ``[E]`` int64 stop tokens: an accepted EOS ends the request's output.

    Walk from the root; at node i with children c_1..c_m in index order:

    - greedy: move to the first child whose token is ``argmax p_i``, else emit it and stop;
    - sampling, no ``draft_logits``: draw ``y ~ p_i``, move to the first child with token y,
      else emit y and stop;
    - sampling with ``draft_logits``: recursive rejection sampling. ``p' = p_i``; for each
      child c in index order accept when ``u_c * q_i(c) < p'(c)`` (coin from
      ``Purpose.TREE_COIN``, position i, index c); after a rejection
      ``p' = norm(max(0, p' - q_i))``. If no child is accepted, emit a token from the final
      ``p'`` (from ``p_i`` if ``p'`` has no mass left, which also ends the loop early).
      Children with an out-of-range token are skipped (they cannot have come from ``q_i``).

    At a leaf the bonus token is drawn from ``p_leaf``. Every token drawn (``y``, the residual
    token, the bonus) is a Gumbel-max race with noise from ``Purpose.TREE_RESAMPLE`` at
    position i (the node it is drawn at), index = vocab id. An accepted token in ``eos_ids``
    stops the request right after it, with nothing more emitted. Every mode is lossless.

    Returns:
        ``out_tokens [R, M]``: the accepted path's tokens, then the emitted token, then -1;
        ``accepted_nodes [R, M]``: node indices of the accepted path (root excluded), then -1,
        for KV-cache compaction; ``num_accepted [R]``; ``num_emitted [R]``
        (``num_accepted + 1``, or ``num_accepted`` when stopped at an EOS, 0 for an empty tree).

    On CPU the value checks (node counts in ``[0, M]``, ``parents`` topological, rows
    summing to N) always run and raise ``RuntimeError``. On CUDA they run only with
    ``DSPARK_CHECK=1``; otherwise nodes with a bad parent are unreachable, counts are clamped
    to ``[0, M]``, nodes whose rows lie past N are absent, and nothing is read out of bounds.
    """
    return torch.ops.dspark.verify_tree(
        target_logits, tree_tokens, parents, num_nodes, temperature, seed, offset, draft_logits, eos_ids
    )


@torch.library.register_fake("dspark::tree_metadata")
def _tree_metadata_fake(parents, num_nodes, prefix_lens):
    torch._check(parents.dim() == 2, lambda: "dspark::tree_metadata: argument 'parents' must have 2 dimensions")
    requests, width = parents.shape
    return (
        parents.new_empty((requests, width, width), dtype=torch.bool),
        parents.new_empty((requests, width)),
        parents.new_empty((requests, width)),
    )


@torch.library.register_fake("dspark::verify_tree")
def _verify_tree_fake(
    target_logits, tree_tokens, parents, num_nodes, temperature, seed, offset, draft_logits=None, eos_ids=None
):
    torch._check(target_logits.dim() == 2, lambda: "dspark::verify_tree: argument 'target_logits' must have 2 dimensions")
    torch._check(tree_tokens.dim() == 2, lambda: "dspark::verify_tree: argument 'tree_tokens' must have 2 dimensions")
    requests, width = tree_tokens.shape
    return (
        tree_tokens.new_empty((requests, width)),
        tree_tokens.new_empty((requests, width)),
        tree_tokens.new_empty((requests,)),
        tree_tokens.new_empty((requests,)),
    )
