"""sgl-kernel's tree verification (``sgl_kernel.speculative``), built on ``verify_tree``.

``tree_speculative_sampling_target_only`` and ``verify_tree_greedy`` keep sgl-kernel's
arguments and write its mutable outputs (``predicts``, ``accept_index``, ``accept_token_num``).
Their tree encoding differs from ours:

| sgl-kernel (per request, ``n`` nodes)            | dspark_ops (``verify_tree``)                  |
| ------------------------------------------------- | --------------------------------------------- |
| ``candidates [bs, n]``: node tokens, node 0 root  | ``tree_tokens [R, M]`` (``M = n``)            |
| ``retrive_next_token [bs, n]``: first child / -1  | ``parents [R, M]``: parent / -1 for the root  |
| ``retrive_next_sibling [bs, n]``: next sibling    | children tried in index order                 |
| ``retrive_index [bs, n]``: flat slot of each node | ``accepted_nodes`` (node indices, root out)   |
| ``target_probs [bs, n, V]`` node rows             | ``target_logits [R*M, V]`` (log of the probs) |

:func:`sgl_tree_to_parents` and :func:`parents_to_sgl_tree` convert between the two.
Nodes must be in topological order (every parent before its children), which is what
SGLang's ``build_tree_kernel_efficient`` produces; it also links siblings in increasing
index order, so our "children in index order" is the same walk. Trees whose sibling lists
run in another order are verified with children in index order instead (the same output
distribution; only which of two identical sibling tokens is taken can differ).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..ops.verify_tree import tree_metadata, verify_tree
from ._common import keys_from_uniforms, probs_as_logits


def sgl_tree_to_parents(retrive_next_token: torch.Tensor, retrive_next_sibling: torch.Tensor) -> torch.Tensor:
    """First-child / next-sibling pointers ``[bs, n]`` -> ``parents [bs, n]`` int64.

    Node 0 is the root (parent -1). A node no pointer reaches gets parent -1 as well
    (the adapters below give it parent 0 and token -1: present, never accepted). Pointer
    jumping, ``ceil(log2 n)`` gathers: no host sync, CUDA-graph capturable.
    """
    batch, n = retrive_next_token.shape
    device = retrive_next_token.device
    nodes = torch.arange(n, device=device).expand(batch, n)
    pred = torch.full((batch, n + 1), -1, dtype=torch.int64, device=device)  # column n: discard slot
    first = torch.zeros((batch, n + 1), dtype=torch.bool, device=device)
    child = _pointer(retrive_next_token, n)
    sibling = _pointer(retrive_next_sibling, n)
    pred.scatter_(1, child, nodes)  # a first child's predecessor is its parent
    first.scatter_(1, child, torch.ones_like(child, dtype=torch.bool))
    pred.scatter_(1, sibling, nodes)  # a later sibling's predecessor is the sibling before it
    pred, first = pred[:, :n], first[:, :n]
    # head[j]: the first child of j's sibling list (j itself for first children, the root
    # and unreached nodes); found by pointer jumping along the predecessor links.
    head = torch.where(first | (pred < 0), nodes, pred)
    for _ in range(max(1, math.ceil(math.log2(max(n, 2))))):
        head = head.gather(1, head)
    parent = torch.where(first.gather(1, head), pred.gather(1, head), -1)
    return parent


def parents_to_sgl_tree(parents: torch.Tensor, num_nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``parents [R, M]`` (our encoding) -> ``(retrive_index, retrive_next_token,
    retrive_next_sibling)``, each ``[R, M]`` int64, siblings linked in index order (as SGLang
    builds them). ``retrive_index[r, i] = r * M + i``. Nodes at ``i >= num_nodes[r]`` get -1
    pointers. ``O(M^2)`` per request, no host sync."""
    batch, width = parents.shape
    device = parents.device
    nodes = torch.arange(width, device=device)
    live = nodes[None] < num_nodes[:, None]  # [R, M]
    # is_child[r, i, j]: node j is a child of node i.
    is_child = (parents[:, None, :] == nodes[None, :, None]) & live[:, None, :] & live[:, :, None]
    next_token = _first_true(is_child)
    # later_sibling[r, j, k]: k > j and k has j's parent.
    later_sibling = (parents[:, :, None] == parents[:, None, :]) & (nodes[None, None, :] > nodes[None, :, None])
    later_sibling &= live[:, None, :] & live[:, :, None] & (nodes[None, :, None] > 0)
    next_sibling = _first_true(later_sibling)
    retrive_index = torch.arange(batch * width, device=device, dtype=torch.int64).reshape(batch, width)
    return retrive_index, next_token, next_sibling


def tree_speculative_sampling_target_only(
    predicts: torch.Tensor,
    accept_index: torch.Tensor,
    accept_token_num: torch.Tensor,
    candidates: torch.Tensor,
    retrive_index: torch.Tensor,
    retrive_next_token: torch.Tensor,
    retrive_next_sibling: torch.Tensor,
    uniform_samples: torch.Tensor,
    uniform_samples_for_final_sampling: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: Optional[torch.Tensor] = None,
    threshold_single: float = 1.0,
    threshold_acc: float = 1.0,
    deterministic: bool = True,
) -> None:
    """sgl-kernel's target-only tree sampling: writes ``predicts``, ``accept_index`` and
    ``accept_token_num`` in place.

    Args:
        predicts: ``[bs * n]`` int32, mutable: at the flat slot (``retrive_index``) of every
            node on the accepted path, the token that follows it (the next accepted child's
            token, and at the last node the correction/bonus token). Other slots untouched.
        accept_index: ``[bs, num_spec_step]`` int32, mutable: flat slots of the root and the
            accepted nodes, then -1. At most ``num_spec_step - 1`` drafts are accepted
            (deeper nodes are treated as absent, as sgl-kernel's walk stops there).
        accept_token_num: ``[bs]`` int32, mutable: accepted drafts (root and emitted not counted).
        candidates: ``[bs, n]`` int64 node tokens (node 0, the root, is not read).
        retrive_index, retrive_next_token, retrive_next_sibling: ``[bs, n]`` int64 tree.
        uniform_samples: ``[bs, n]`` float32, uniform_samples_for_final_sampling: ``[bs]``:
            not used as coins. Their bits seed our Philox stream
            (:func:`~dspark_ops.compat._common.keys_from_uniforms`): fresh uniforms each step
            give fresh, independent numbers, so the call stays a drop-in.
        target_probs: ``[bs, n, V]`` the target's (tempered, top-k/top-p renormalised)
            probabilities at each node; read through ``log`` with ``T = 1`` (zeros stay 0).
        draft_probs: accepted for signature compatibility (older sgl-kernel passes a zero
            tensor it uses as scratch) and ignored: "target only" means the children were
            chosen deterministically, which is ``verify_tree`` without ``draft_logits``.
        threshold_single, threshold_acc: must be 1.0. Other values make sgl-kernel accept
            drafts the target would not have produced (not lossless); we refuse them.
        deterministic: accepted for compatibility; ours is always deterministic.

    What our walk does at node i: draw ``y ~ p_i``; move to the child whose token is y, else
    emit y. sgl-kernel accepts a child when its coin falls in the child's slice of the
    cumulative target mass and otherwise samples from ``p_i`` with the tried children
    removed: the same distribution, one draw each.
    """
    if threshold_single != 1.0 or threshold_acc != 1.0:
        raise ValueError(
            "tree_speculative_sampling_target_only: threshold_single and threshold_acc must be 1.0 "
            f"(got {threshold_single}, {threshold_acc}); other values are lossy and not supported"
        )
    batch, n = candidates.shape
    seed, offset = keys_from_uniforms(uniform_samples[:, 0], uniform_samples[:, -1], uniform_samples_for_final_sampling)
    logits = probs_as_logits(target_probs.reshape(batch * n, -1))
    ones = torch.ones(batch, dtype=torch.float32, device=candidates.device)
    _verify_into(predicts, accept_index, accept_token_num, candidates, retrive_index, retrive_next_token,
                 retrive_next_sibling, logits, ones, seed, offset)


def verify_tree_greedy(
    predicts: torch.Tensor,
    accept_index: torch.Tensor,
    accept_token_num: torch.Tensor,
    candidates: torch.Tensor,
    retrive_index: torch.Tensor,
    retrive_next_token: torch.Tensor,
    retrive_next_sibling: torch.Tensor,
    target_predict: torch.Tensor,
) -> None:
    """sgl-kernel's greedy tree verification; same mutable outputs as
    :func:`tree_speculative_sampling_target_only`.

    ``target_predict [bs, n]`` int64 holds the target's argmax at each node (indexed by the
    flat slot ``retrive_index``), not logits, so the vocabulary is unknown. Greedy
    verification only compares tokens for equality, so we hand ``verify_tree`` a vocabulary
    of ``n + 1`` classes per request: class j < n is "the token of node j" (the first node
    carrying it), class n is "a token no node carries", and the target row of node i is
    one-hot on the class of its argmax. Cost: ``O(n^2)`` comparisons per request.
    """
    batch, n = candidates.shape
    device = candidates.device
    nodes = torch.arange(n, device=device)
    argmax = target_predict.reshape(-1)[retrive_index.to(torch.int64)]  # [bs, n], node order
    # Class of a token: the first node of the request that carries it, else n.
    node_class = _first_true(candidates[:, :, None] == candidates[:, None, :]).clamp_min(0)  # [bs, n]
    match = argmax[:, :, None] == candidates[:, None, :]  # [bs, i, j]
    target_class = torch.where(match.any(-1), _first_true(match), n)
    logits = torch.zeros((batch, n, n + 1), dtype=torch.float32, device=device)
    logits.scatter_(2, target_class[..., None], 1.0)
    zeros = torch.zeros(batch, dtype=torch.float32, device=device)
    keys = torch.zeros(batch, dtype=torch.int64, device=device)
    _, accepted_nodes, num_accepted = _verify_into(
        predicts, accept_index, accept_token_num, node_class.where(nodes[None] > 0, 0), retrive_index,
        retrive_next_token, retrive_next_sibling, logits.reshape(batch * n, n + 1), zeros, keys, keys,
        write_predicts=False,
    )
    # Tokens of the path: the accepted children's own ids, then the argmax at the last node.
    _write_predicts(predicts, retrive_index, candidates, accepted_nodes, num_accepted,
                    last_token=argmax.gather(1, _last_node(accepted_nodes, num_accepted)[:, None]).squeeze(1))


def _verify_into(predicts, accept_index, accept_token_num, tokens, retrive_index, retrive_next_token,
                 retrive_next_sibling, logits, temperature, seed, offset, write_predicts=True):
    """Run ``verify_tree`` on an sgl-kernel tree and write sgl-kernel's outputs."""
    batch, n = tokens.shape
    device = tokens.device
    steps = accept_index.shape[1]
    parents = sgl_tree_to_parents(retrive_next_token.to(torch.int64), retrive_next_sibling.to(torch.int64))
    reached = parents >= 0
    parents = torch.where(reached, parents, 0)
    parents[:, 0] = -1
    full = torch.full((batch,), n, dtype=torch.int64, device=device)
    _, _, depth = tree_metadata(parents, full, torch.zeros_like(full))
    # Unreached nodes and nodes deeper than sgl-kernel's walk are present but never accepted.
    usable = (reached | (torch.arange(n, device=device) == 0)[None]) & (depth < steps)
    tree_tokens = torch.where(usable, tokens.to(torch.int64), -1)
    out, accepted_nodes, num_accepted, _ = verify_tree(logits, tree_tokens, parents, full, temperature, seed, offset)
    path = torch.cat([torch.zeros_like(accepted_nodes[:, :1]), accepted_nodes], 1)[:, :steps]
    if path.shape[1] < steps:
        path = torch.nn.functional.pad(path, (0, steps - path.shape[1]), value=-1)
    slots = retrive_index.to(torch.int64).gather(1, path.clamp_min(0))
    accept_index.copy_(torch.where(path >= 0, slots, -1))
    accept_token_num.copy_(num_accepted)
    if write_predicts:
        emitted = out.gather(1, num_accepted[:, None]).squeeze(1)
        _write_predicts(predicts, retrive_index, tokens, accepted_nodes, num_accepted, emitted)
    return out, accepted_nodes, num_accepted


def _write_predicts(predicts, retrive_index, tokens, accepted_nodes, num_accepted, last_token):
    """``predicts[slot(path[k])] = token(path[k+1])`` along the accepted path, and
    ``predicts[slot(last node)] = last_token``; every other slot keeps its value."""
    batch, n = tokens.shape
    width = accepted_nodes.shape[1]
    k = torch.arange(width + 1, device=tokens.device)
    path = torch.cat([torch.zeros_like(accepted_nodes[:, :1]), accepted_nodes], 1)  # [bs, M+1]
    on_path = k[None] <= num_accepted[:, None]
    nxt = torch.cat([accepted_nodes, torch.full_like(accepted_nodes[:, :1], -1)], 1)
    next_token = tokens.to(torch.int64).gather(1, nxt.clamp_min(0))
    value = torch.where(k[None] < num_accepted[:, None], next_token, last_token[:, None])
    slot = retrive_index.to(torch.int64).gather(1, path.clamp_min(0))
    discard = predicts.numel()
    buffer = torch.cat([predicts, predicts.new_zeros(1)])
    buffer.scatter_(0, torch.where(on_path, slot, discard).reshape(-1), value.to(predicts.dtype).reshape(-1))
    predicts.copy_(buffer[:discard])


def _last_node(accepted_nodes: torch.Tensor, num_accepted: torch.Tensor) -> torch.Tensor:
    """The node the walk ended at: the last accepted node, or the root (0)."""
    at = (num_accepted - 1).clamp_min(0)[:, None]
    return torch.where(num_accepted > 0, accepted_nodes.gather(1, at).squeeze(1), 0)


def _pointer(ptr: torch.Tensor, n: int) -> torch.Tensor:
    """Pointers with -1 (or anything outside ``[0, n)``) sent to the discard column n."""
    return torch.where((ptr >= 0) & (ptr < n), ptr, n)


def _first_true(mask: torch.Tensor) -> torch.Tensor:
    """Index of the first True along the last dim, -1 when there is none."""
    first = mask.to(torch.int8).argmax(-1)
    return torch.where(mask.any(-1), first, -1)
