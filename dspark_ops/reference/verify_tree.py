"""Pure-PyTorch references of ``tree_metadata`` and ``verify_tree`` (SPEC §5).

``verify_tree`` here is the readable, DeepSpec-style loop: one request at a time, one node at
a time, full-vocabulary probability vectors, and the recursive-rejection residual kept
explicitly as ``p' = norm(max(0, p' - q))`` (the kernels use the equivalent closed form of
``dspark/tree_sampling.h`` and never store ``p'``). It draws the same counter-based random
numbers as the kernels, so the two agree token for token except where float rounding flips
a near-tie.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..ops.greedy import is_greedy
from ..ops.random_bits import Purpose
from .rng import random_bits, random_uniform, vocab_gumbel
from .verify_chain import _nan_argmax, race, scaled_logits, softmax_rows


def tree_metadata(
    parents: torch.Tensor, num_nodes: torch.Tensor, prefix_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same arguments and results as ``dspark_ops.tree_metadata`` (valid trees)."""
    requests, width = parents.shape
    device = parents.device
    mask = torch.eye(width, dtype=torch.bool, device=device).repeat(requests, 1, 1)
    depth = torch.full((requests, width), -1, dtype=torch.int64, device=device)
    for i in range(width):
        live = i < num_nodes
        if i == 0:
            depth[:, 0] = torch.where(live, 0, -1)
            continue
        parent = parents[:, i].clamp(0, i - 1)
        ok = live & (parents[:, i] >= 0) & (parents[:, i] < i)
        ok = ok & (depth.gather(1, parent[:, None]).squeeze(1) >= 0)
        depth[:, i] = torch.where(ok, depth.gather(1, parent[:, None]).squeeze(1) + 1, -1)
        above = mask[torch.arange(requests, device=device), parent]  # [R, M]
        mask[:, i] = torch.where(ok[:, None], above, mask[:, i])
        mask[:, i, i] = True
    positions = torch.where(depth >= 0, prefix_lens[:, None] + depth, -1)
    return mask, positions, depth


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
    """Same arguments and results as ``dspark_ops.verify_tree``."""
    requests, width = tree_tokens.shape
    vocab = target_logits.shape[1]
    device = tree_tokens.device
    out = torch.full((requests, width), -1, dtype=torch.int64, device=device)
    out_nodes = torch.full((requests, width), -1, dtype=torch.int64, device=device)
    num_accepted = torch.zeros(requests, dtype=torch.int64, device=device)
    num_emitted = torch.zeros(requests, dtype=torch.int64, device=device)
    counts = num_nodes.tolist()
    eos = set(eos_ids.tolist()) if eos_ids is not None else set()
    first_row = 0
    for r in range(requests):
        n = counts[r]
        tokens, par = tree_tokens[r].tolist(), parents[r].tolist()
        T = float(temperature[r])
        greedy = is_greedy(T)
        s, o = seed[r], offset[r]
        node, path = 0, []
        emitted = None
        while n > 0:
            row = first_row + node
            children = [j for j in range(node + 1, n) if par[j] == node]
            raw = target_logits[row].float()
            if greedy:
                best = int(_nan_argmax(raw))
                nxt = next((j for j in children if tokens[j] == best), None)
                if nxt is None:
                    emitted = best
            else:
                x = scaled_logits(raw, T)
                valid = [j for j in children if 0 <= tokens[j] < vocab]
                if draft_logits is None or not valid:
                    y = int(race(x, vocab_gumbel(s, o, Purpose.TREE_RESAMPLE, node, vocab))[0])
                    nxt = next((j for j in children if tokens[j] == y), None) if draft_logits is None else None
                    if nxt is None:
                        emitted = y
                else:
                    nxt, emitted = _recursive_rejection(x, draft_logits[row], T, tokens, valid, node, s, o)
            if nxt is None:
                break
            path.append(nxt)
            node = nxt
            if tokens[nxt] in eos:
                break
        first_row += n
        acc = len(path)
        out[r, :acc] = torch.tensor([tokens[j] for j in path], dtype=torch.int64)
        out_nodes[r, :acc] = torch.tensor(path, dtype=torch.int64)
        num_accepted[r] = acc
        if emitted is not None:
            out[r, acc] = emitted
        num_emitted[r] = acc + (emitted is not None)
    return out, out_nodes, num_accepted, num_emitted


def _recursive_rejection(x_p, draft_row, T, tokens, valid, node, seed, offset):
    """SPEC §5 recursive rejection sampling at one node: (accepted child or None, token or None)."""
    p = softmax_rows(x_p)
    q = softmax_rows(scaled_logits(draft_row.float(), T))
    residual = p  # p', normalised
    for j in valid:
        t = tokens[j]
        coin = random_uniform(random_bits(seed, offset, Purpose.TREE_COIN, node, j))
        if bool(coin * q[t] < residual[t]):
            return j, None
        rest = torch.clamp(residual - q, min=0)
        mass = rest.sum()
        if not bool(mass > 0):  # p' has no mass left: emit from p
            return None, int(race(x_p, vocab_gumbel(seed, offset, Purpose.TREE_RESAMPLE, node, p.shape[0]))[0])
        residual = rest / mass
    noise = vocab_gumbel(seed, offset, Purpose.TREE_RESAMPLE, node, p.shape[0])
    return None, int(race(torch.log(residual), noise)[0])
