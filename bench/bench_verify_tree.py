"""verify_tree: ours vs the eager reference (the DeepSpec-style per-request, per-node loop).

Inputs look like a real round of tree speculation with sampled drafts: every request has a
binary-heap tree of M nodes (node i's parent is (i - 1) // 2), the draft logits are the
target's plus noise, and each node's children are drawn i.i.d. from that node's q (the
recursive-rejection path at T = 1, which reads target and draft rows). A "greedy" case uses
the same trees at T = 0.

The floor reads each visited node's target row once, plus the draft row of every visited
node that has children (where recursive rejection needs q); visited nodes are counted from
one run of the op (num_accepted + 1 per request).
"""

from __future__ import annotations

import torch

import dspark_ops
from dspark_ops import reference
from dspark_ops.ops.arguments import request_args

from harness import Case

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_inputs(R: int, M: int, V: int, dtype: torch.dtype, device: str, greedy: bool, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    parents = ((torch.arange(M) - 1) // 2).repeat(R, 1)
    parents[:, 0] = -1
    target = torch.randn(R * M, V, generator=g) * 3.0
    draft = target + torch.randn(R * M, V, generator=g)
    # Children of node i are drawn from q_i; greedy runs take the top-2 of the target instead.
    parent_rows = (torch.arange(R)[:, None] * M + parents.clamp_min(0)).reshape(-1)
    if greedy:
        top2 = target.topk(2, dim=-1).indices  # [R*M, 2]
        side = (torch.arange(M) + 1) % 2  # node 1 takes the top-1 of the root, node 2 the top-2
        tokens = top2[parent_rows].view(R, M, 2).gather(-1, side.repeat(R, 1)[..., None]).squeeze(-1)
    else:
        probs = torch.softmax(draft, -1)
        tokens = torch.multinomial(probs[parent_rows], 1, generator=g).view(R, M)
    tokens[:, 0] = 0
    return dict(
        target_logits=target.to(device=device, dtype=dtype),
        tree_tokens=tokens.to(device),
        parents=parents.to(device),
        num_nodes=torch.full((R,), M, dtype=torch.int64, device=device),
        temperature=torch.full((R,), 0.0 if greedy else 1.0, device=device),
        seed=torch.arange(R, device=device),
        offset=torch.zeros(R, dtype=torch.int64, device=device),
        draft_logits=None if greedy else draft.to(device=device, dtype=dtype),
    )


def floor_bytes(args, elem: int, greedy: bool) -> float:
    out, nodes, acc, emit = dspark_ops.verify_tree(**args)
    R, M = args["tree_tokens"].shape
    V = args["target_logits"].shape[1]
    visited = (acc + 1).sum().item()
    rows = visited
    if not greedy:  # draft rows of visited nodes that have children (heap: node i < M // 2)
        path = torch.cat([torch.zeros(R, 1, dtype=torch.long, device=nodes.device), nodes], 1)
        live = torch.arange(M + 1, device=nodes.device) <= acc[:, None]
        rows += ((path < M // 2) & (path >= 0) & live).sum().item()
    return float(rows * V * elem)


def case(R, M, V, dtype_name, device, greedy=False, filters=None):
    """filters: SPEC §9 arguments applied to every request (e.g. {"top_p": 0.9}), or None."""
    # Per-request tensors (the reference, unlike the wrappers, takes no Python scalars).
    args = {**make_inputs(R, M, V, DTYPES[dtype_name], device, greedy), **request_args(R, device, **(filters or {}))}
    providers = {
        "ours": lambda: dspark_ops.verify_tree(**args),
        "eager": lambda: reference.verify_tree(**args),
    }
    mode = ("greedy" if greedy else "rrs") + "".join(f" {k.replace('_', '-')} {v}" for k, v in (filters or {}).items())
    return Case("verify_tree", f"R={R} M={M} V={V} {mode}", dtype_name, providers,
                floor_bytes(args, DTYPES[dtype_name].itemsize, greedy),
                note="binary-heap tree; " + ("T=0, top-2 children" if greedy else "T=1, children ~ q, drafts = target + noise"))


def cases(preset: str, device: str) -> list[Case]:
    if device == "cpu":
        out = [case(16, 16, 32000, "fp32", device), case(16, 16, 32000, "fp32", device, greedy=True)]
        out += [case(16, 16, 32000, "fp32", device, filters=f) for f in ({"top_p": 0.9}, {"top_k": 50})]
        if preset != "quick":
            out += [case(R, M, 32000, "bf16", device) for R in (1, 16) for M in (8, 32)]
        return out
    out = [case(R, M, 151936, "bf16", device) for R in (1, 16, 64) for M in (8, 32, 64)]
    out.append(case(64, 32, 151936, "bf16", device, greedy=True))
    out += [case(64, 32, 151936, "bf16", device, filters=f) for f in ({"top_p": 0.9}, {"top_k": 50})]
    return out
