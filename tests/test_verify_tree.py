"""Tests of tree_metadata and verify_tree (SPEC §5): hand-built trees with exact outputs,
kernel vs the pure-PyTorch reference, distribution tests of both sampling modes, chains as
trees against verify_chain, malformed trees, batch invariance, and CPU vs CUDA at large
vocabularies when a GPU is present (the generic checks: test_every_op.py).

Statistical tests use fixed seeds (so they are deterministic); each would fail with
probability stats.ALPHA for a correct kernel under fresh seeds."""

from __future__ import annotations

import collections

import pytest
import torch

import dspark_ops
from dspark_ops import reference as ref
from dspark_ops.reference.rng import gumbel

from helpers import requires_cuda
from stats import assert_distribution, assert_same_distribution


def random_trees(R, M, V, gen, min_nodes=1):
    """Random topological trees: counts in [min_nodes, M], mixed bushy/chain shapes, tokens
    sometimes copied from a sibling (repeats) or -1 (invalid)."""
    n = torch.randint(min_nodes, M + 1, (R,), generator=gen)
    parents = torch.full((R, M), -1, dtype=torch.long)
    for i in range(1, M):
        bushy = torch.randint(0, i, (R,), generator=gen)
        parents[:, i] = torch.where(torch.rand(R, generator=gen) < 0.6, bushy, torch.full((R,), i - 1))
    tokens = torch.randint(0, V, (R, M), generator=gen)
    tokens[torch.rand(R, M, generator=gen) < 0.05] = -1
    return tokens, parents, n


def batch_inputs(R, M, V, seed=0, greedy_every=4, dtype=torch.float32, draft_dtype=torch.bfloat16, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    tokens, parents, n = random_trees(R, M, V, g)
    N = int(n.sum())
    target = (torch.randn(N, V, generator=g) * scale).to(dtype)
    draft = (torch.randn(N, V, generator=g) * scale).to(draft_dtype)
    # Make some children match the argmax so greedy walks go deep.
    first = torch.cumsum(n, 0) - n
    for r in range(0, R, 2):
        for i in range(1, int(n[r])):
            if torch.rand(1, generator=g).item() < 0.7:
                tokens[r, i] = int(target[first[r] + parents[r, i]].float().argmax())
    temperature = torch.rand(R, generator=g) + 0.4
    if greedy_every:
        temperature[::greedy_every] = 0.0
    seeds = torch.randint(0, 2**62, (R,), generator=g)
    offsets = torch.randint(0, 2**40, (R,), generator=g)
    return target, tokens, parents, n, temperature, seeds, offsets, draft


def on(device, *tensors):
    return [t.to(device) if isinstance(t, torch.Tensor) else t for t in tensors]


# ---------------------------------------------------------------------------------------
# tree_metadata


def test_tree_metadata_hand_built(device):
    #      0
    #    /   \
    #   1     2
    #  / \     \
    # 3   4     5
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2, 7, 7], [-1] * 8, [-1, 0, 5, 5, 5, 5, 5, 5]])
    num_nodes = torch.tensor([6, 0, 2])
    prefix = torch.tensor([10, 3, 0])
    mask, pos, depth = dspark_ops.tree_metadata(*on(device, parents, num_nodes, prefix))
    expected_mask = torch.eye(8, dtype=torch.bool).repeat(3, 1, 1)
    for i, ancestors in {1: [0], 2: [0], 3: [0, 1], 4: [0, 1], 5: [0, 2]}.items():
        expected_mask[0, i, ancestors] = True
    expected_mask[2, 1, 0] = True
    expected_depth = torch.tensor([[0, 1, 1, 2, 2, 2, -1, -1], [-1] * 8, [0, 1] + [-1] * 6])
    expected_pos = torch.where(expected_depth >= 0, expected_depth + prefix[:, None], -1)
    assert torch.equal(mask.cpu(), expected_mask)
    assert torch.equal(depth.cpu(), expected_depth)
    assert torch.equal(pos.cpu(), expected_pos)


def test_tree_metadata_matches_reference(device):
    g = torch.Generator().manual_seed(3)
    _, parents, n = random_trees(9, 13, 5, g, min_nodes=0)
    prefix = torch.randint(0, 1000, (9,), generator=g)
    got = dspark_ops.tree_metadata(*on(device, parents, n, prefix))
    want = ref.tree_metadata(parents, n, prefix)
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b)
    # Non-contiguous parents (a column slice of a wider tensor) give the same result.
    wide = torch.stack([parents, parents], 2).reshape(9, 26)[:, ::2]
    assert not wide.is_contiguous()
    for a, b in zip(dspark_ops.tree_metadata(*on(device, wide, n, prefix)), want):
        assert torch.equal(a.cpu(), b)


# ---------------------------------------------------------------------------------------
# verify_tree: exact outputs


def hand_tree(V=8):
    """Root 0 (anchor 9) with children 1 (tok 3) and 2 (tok 5); node 1 has children 3 (tok 2)
    and 4 (tok 6); node 2 has children 5 (tok 1), 6 (tok 1, a repeat) and 7 (tok -1)."""
    tokens = torch.tensor([9 % V, 3, 5, 2, 6, 1, 1, -1])
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, 2, 2])
    return tokens, parents


def onehot_rows(argmaxes, V=8):
    rows = torch.randn(len(argmaxes), V, generator=torch.Generator().manual_seed(5))
    for i, a in enumerate(argmaxes):
        rows[i, a] = 10.0
    return rows


def test_greedy_hand_built(device):
    tokens, parents = hand_tree()
    M = 8
    cases = [
        # (row argmaxes per node, eos, expected out, expected nodes)
        ([5, 0, 1, 0, 0, 7, 4, 0], None, [5, 1, 7], [2, 5]),  # root -> 2 -> 5 (first of the repeats) -> bonus 7
        ([4, 0, 0, 0, 0, 0, 0, 0], None, [4], []),  # no child matches at the root
        ([3, 6, 0, 0, 2, 0, 0, 0], None, [3, 6, 2], [1, 4]),  # leaf 4's bonus
        ([3, 6, 0, 0, 2, 0, 0, 0], [6], [3, 6], [1, 4]),  # EOS accepted at node 4: stop
        ([5, 0, 3, 0, 0, 0, 0, 0], None, [5, 3], [2]),  # invalid child never matches
    ]
    R = len(cases)
    target = torch.cat([onehot_rows(c[0]) for c in cases])
    tree_tokens = tokens.repeat(R, 1)
    tree_parents = parents.repeat(R, 1)
    num_nodes = torch.full((R,), 8)
    for eos in (None, torch.tensor([6])):
        rows = [c for c in cases if (c[1] is not None) == (eos is not None)]
        idx = [i for i, c in enumerate(cases) if (c[1] is not None) == (eos is not None)]
        t = torch.cat([target[i * 8 : (i + 1) * 8] for i in idx])
        args = on(device, t, tree_tokens[idx], tree_parents[idx], num_nodes[idx], torch.zeros(len(idx)),
                  torch.arange(len(idx)), torch.zeros(len(idx), dtype=torch.long))
        out, nodes, acc, emit = dspark_ops.verify_tree(*args, None, None if eos is None else eos.to(device))
        for k, (_, e, want_out, want_nodes) in enumerate(rows):
            stopped = e is not None
            assert out[k].tolist() == want_out + [-1] * (M - len(want_out))
            assert nodes[k].tolist() == want_nodes + [-1] * (M - len(want_nodes))
            assert acc[k].item() == len(want_nodes)
            assert emit[k].item() == len(want_nodes) + (0 if stopped else 1)


def test_empty_and_single_node(device):
    V, M = 7, 4
    target = torch.randn(1 + 2, V)
    tokens = torch.tensor([[1, 2, 3, 4], [0, 0, 0, 0], [5, 6, -1, -1]])
    parents = torch.tensor([[-1, 0, 0, 0], [-1, -1, -1, -1], [-1, 0, 9, 9]])
    n = torch.tensor([1, 0, 2])
    for temp in (0.0, 1.0):
        args = on(device, target, tokens, parents, n, torch.full((3,), temp), torch.arange(3), torch.zeros(3, dtype=torch.long))
        out, nodes, acc, emit = dspark_ops.verify_tree(*args)
        assert emit.tolist()[:2] == [1, 0] and acc.tolist()[:2] == [0, 0]
        assert out[1].tolist() == [-1] * M and nodes[1].tolist() == [-1] * M
        if temp == 0.0:
            assert out[0, 0].item() == int(target[0].argmax())
    # M = 0 is valid (R = 0: test_every_op.py).
    flat = dspark_ops.verify_tree(*on(device, torch.zeros(0, V), torch.zeros(2, 0, dtype=torch.long),
                                      torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                                      torch.zeros(2), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)))
    assert [tuple(t.shape) for t in flat] == [(2, 0), (2, 0), (2,), (2,)] and flat[3].tolist() == [0, 0]


@pytest.mark.parametrize("with_draft", [False, True])
@pytest.mark.parametrize("with_eos", [False, True])
def test_matches_reference(device, with_draft, with_eos):
    V = 37  # odd
    target, tokens, parents, n, temp, seeds, offs, draft = batch_inputs(24, 9, V, seed=11, dtype=torch.float16)
    eos = torch.tensor([3, 8]) if with_eos else None
    d = draft if with_draft else None
    want = ref.verify_tree(target, tokens, parents, n, temp, seeds, offs, d, eos)
    got = dspark_ops.verify_tree(*on(device, target, tokens, parents, n, temp, seeds, offs, d, eos))
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b)
    assert (want[2] > 0).any() and (want[2] >= 2).any()  # the walks do go deep


def test_matches_reference_wide_rrs(device):
    """Bushy roots (7 children, repeats common with V=5) so that several rejections in a row
    and the residual after them are exercised against the reference's explicit p'."""
    R, M, V = 300, 8, 5
    g = torch.Generator().manual_seed(17)
    tokens = torch.randint(0, V, (R, M), generator=g)
    parents = torch.zeros(R, M, dtype=torch.long)
    parents[:, 0] = -1
    parents[::3, 5:] = 1  # some second-level nodes too
    n = torch.full((R,), M)
    target = torch.randn(R * M, V, generator=g) * 1.5
    draft = torch.randn(R * M, V, generator=g) * 1.5
    temp = torch.rand(R, generator=g) + 0.5
    seeds, offs = torch.arange(R) * 3, torch.full((R,), 77)
    want = ref.verify_tree(target, tokens, parents, n, temp, seeds, offs, draft)
    got = dspark_ops.verify_tree(*on(device, target, tokens, parents, n, temp, seeds, offs, draft))
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b)
    first = want[1][:, 0]
    assert (first >= 4).sum() > 10 and (first == -1).sum() > 10  # late accepts and all-rejected


def test_residual_without_mass_falls_back_to_p(device):
    """q = p and a first child whose token has p = q = 0: it is rejected, the residual
    max(0, p - q) has no mass, so no later child is accepted and the token comes from p, the
    very race a childless root runs."""
    R, V = 50, 9
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(R, V, generator=g)
    logits[:, 4] = float("-inf")
    tokens = torch.tensor([0, 4, 2]).repeat(R, 1)
    parents = torch.tensor([-1, 0, 0]).repeat(R, 1)
    target = torch.stack([logits, logits, logits], 1).reshape(R * 3, V)
    temp, seeds, offs = torch.full((R,), 0.7), torch.arange(R), torch.zeros(R, dtype=torch.long)
    out, nodes, acc, emit = dspark_ops.verify_tree(*on(device, target, tokens, parents, torch.full((R,), 3), temp,
                                                       seeds, offs, target))
    assert (acc == 0).all() and (emit == 1).all()
    alone = dspark_ops.verify_tree(*on(device, logits, tokens[:, :1], parents[:, :1], torch.ones(R, dtype=torch.long),
                                       temp, seeds, offs))
    assert torch.equal(out[:, 0], alone[0][:, 0])
    want = ref.verify_tree(target, tokens, parents, torch.full((R,), 3), temp, seeds, offs, target)
    assert torch.equal(out.cpu(), want[0])


def test_gumbel_bound_of_bounded_race():
    """BoundedRace (dspark/sampling.h) skips the noise of entries with
    log_weight + 17.5 < best; that is exact only if every Gumbel of the generator is finite
    and <= 17.5. The largest comes from the largest word."""
    top = torch.cat([torch.arange(0xFFFFFF00 - 4096, 0xFFFFFF00, 64), torch.arange(0xFFFFFE00, 0x100000000)])
    g = gumbel(top)
    assert torch.isfinite(g).all() and g.max() <= 17.5
    assert g.max() == gumbel(torch.tensor([0xFFFFFFFF])).item()
    assert torch.isfinite(gumbel(torch.tensor([0, 1, 511]))).all()


def test_closed_form_residual():
    """p'_j = max(0, p - c_j q) / D_j (dspark/tree_sampling.h) equals the SPEC's iterated
    p'_{j+1} = norm(max(0, p'_j - q))."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.softmax(torch.randn(50, generator=g, dtype=torch.float64) * 2, 0)
        q = torch.softmax(torch.randn(50, generator=g, dtype=torch.float64) * 2, 0)
        it, c, D = p.clone(), 0.0, 1.0
        for _ in range(5):
            assert torch.allclose(it, torch.clamp(p - c * q, min=0) / D, atol=1e-12)
            rest = torch.clamp(it - q, min=0)
            if rest.sum() <= 0:
                break
            it = rest / rest.sum()
            c = c + D
            D = float(torch.clamp(p - c * q, min=0).sum())


# ---------------------------------------------------------------------------------------
# Distributions


def check_first_two_tokens(out, p0, p2):
    """t0 ~ p0; whenever a second token exists after t0, it is ~ p2[t0]."""
    V = p0.numel()
    t0, t1 = out[:, 0], out[:, 1]
    assert (t0 >= 0).all()
    assert_distribution(torch.bincount(t0, minlength=V), p0, "first token")
    counts, probs = [], []
    for a in range(V):
        sel = (t0 == a) & (t1 >= 0)
        if sel.sum() < 50:
            continue
        counts.append(torch.bincount(t1[sel], minlength=V).double())
        probs.append(p2[a].double() / p2[a].double().sum() * float(sel.sum()))
    assert len(counts) >= 2
    # Each group's total is fixed by t0: ddof = groups - 1.
    assert_distribution(torch.cat(counts), torch.cat(probs), "second token given the first", ddof=len(counts) - 1)


def test_distribution_target_only(device):
    """Top-k style (deterministic) children, no draft_logits: the emitted tokens follow p."""
    V, R, T = 6, 8000, 0.8
    g = torch.Generator().manual_seed(21)
    L0 = torch.randn(V, generator=g)
    L2 = torch.randn(V, V, generator=g)
    p0, p2 = torch.softmax(L0 / T, 0), torch.softmax(L2 / T, 1)
    # 0 -> {1: tok 0, 2: tok 2, 3: tok 4}; 1 -> {4: tok 1, 5: tok 3}; 2 -> {6: tok 5}
    tok = torch.tensor([5, 0, 2, 4, 1, 3, 5])
    par = torch.tensor([-1, 0, 0, 0, 1, 1, 2])
    rows = torch.stack([L0, L2[0], L2[2], L2[4], L2[1], L2[3], L2[5]])
    target = rows.repeat(R, 1)
    args = on(device, target, tok.repeat(R, 1), par.repeat(R, 1), torch.full((R,), 7), torch.full((R,), T),
              torch.arange(R) * 7919 + 1, torch.full((R,), 5))
    out, nodes, acc, emit = dspark_ops.verify_tree(*args)
    check_first_two_tokens(out.cpu(), p0, p2)
    # accepted_nodes are consistent with the tokens.
    assert torch.equal(torch.where(nodes >= 0, tok.to(device)[nodes.clamp_min(0)], -1)[:, :2].cpu(),
                       torch.where(acc[:, None].cpu() > torch.arange(2), out[:, :2].cpu(), -1))


def rrs_batch(R, V, T, seed):
    """Trees whose children are drawn i.i.d. (with replacement) from the draft's q: root -> 3
    children ~ q0, each child a -> 2 children ~ Q2[a]. Target after token a is p2[a]."""
    g = torch.Generator().manual_seed(seed)
    L0, Lq0 = torch.randn(V, generator=g), torch.randn(V, generator=g) * 1.5
    L2, Lq2 = torch.randn(V, V, generator=g), torch.randn(V, V, generator=g) * 1.5
    q0, q2 = torch.softmax(Lq0 / T, 0), torch.softmax(Lq2 / T, 1)
    c1 = torch.multinomial(q0.expand(R, V), 3, replacement=True, generator=g)  # [R, 3]
    c2 = torch.multinomial(q2[c1.reshape(-1)], 2, replacement=True, generator=g).reshape(R, 6)
    tok = torch.cat([torch.full((R, 1), V - 1), c1, c2], 1)  # nodes 0, 1..3, 4..9
    par = torch.tensor([-1, 0, 0, 0, 1, 1, 2, 2, 3, 3]).repeat(R, 1)
    t_rows = torch.cat([L0.expand(R, 1, V), L2[c1], L2[c2]], 1).reshape(R * 10, V)
    d_rows = torch.cat([Lq0.expand(R, 1, V), Lq2[c1], torch.zeros(R, 6, V)], 1).reshape(R * 10, V)
    return t_rows, tok, par, d_rows, torch.softmax(L0 / T, 0), torch.softmax(L2 / T, 1)


def test_distribution_recursive_rejection(device):
    V, R, T = 6, 8000, 0.9
    target, tok, par, draft, p0, p2 = rrs_batch(R, V, T, seed=4)
    args = on(device, target, tok, par, torch.full((R,), 10), torch.full((R,), T), torch.arange(R) + 100,
              torch.full((R,), 3), draft.to(torch.bfloat16).float())
    out, nodes, acc, emit = dspark_ops.verify_tree(*args[:7], args[7])
    out = out.cpu()
    check_first_two_tokens(out, p0, p2)
    # Rejections do happen at the root, and so do acceptances of the 2nd/3rd child.
    first_acc = nodes[:, 0].cpu()
    assert (first_acc == -1).sum() > 100 and (first_acc >= 2).sum() > 100


# ---------------------------------------------------------------------------------------
# Chains as trees


def chain_batch(R, V, L, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(R * (L + 1), V, generator=g) * 1.5
    drafts = torch.randint(0, V, (R, L), generator=g)
    draft_logits = torch.randn(R, L, V, generator=g)
    return target, drafts, draft_logits


def as_tree(drafts, draft_logits, V):
    R, L = drafts.shape
    tok = torch.cat([torch.zeros(R, 1, dtype=torch.long), drafts], 1)
    par = (torch.arange(L + 1) - 1).repeat(R, 1)
    dl = None
    if draft_logits is not None:  # node i's row = q of its child i+1; the leaf's row is unused
        dl = torch.cat([draft_logits, torch.zeros(R, 1, V)], 1).reshape(R * (L + 1), V)
    return tok, par, dl


def test_chain_greedy_matches_verify_chain(device):
    R, V, L = 64, 9, 4
    target, drafts, _ = chain_batch(R, V, L, seed=1)
    rows = target.reshape(R, L + 1, V)
    argmax = rows.argmax(-1)
    keep = torch.rand(R, L, generator=torch.Generator().manual_seed(2)) < 0.8
    drafts = torch.where(keep, argmax[:, :L], drafts)  # mostly accepted chains
    tok, par, _ = as_tree(drafts, None, V)
    eos = torch.tensor([int(argmax[0, 1])])
    lengths = torch.full((R,), L)
    common = [torch.zeros(R), torch.arange(R), torch.zeros(R, dtype=torch.long)]
    chain = torch.ops.dspark.verify_chain(*on(device, target, drafts, lengths, *common, None, eos))
    tree = dspark_ops.verify_tree(*on(device, target, tok, par, lengths + 1, *common, None, eos))
    assert torch.equal(tree[0].cpu(), chain[0].cpu())
    assert torch.equal(tree[2].cpu(), chain[1].cpu()) and torch.equal(tree[3].cpu(), chain[2].cpu())
    want_nodes = torch.where(torch.arange(L + 1) < chain[1].cpu()[:, None], torch.arange(L + 1) + 1, -1)
    assert torch.equal(tree[1].cpu(), want_nodes)
    assert (chain[1] == L).any() and (chain[1] < L).any()


@pytest.mark.parametrize("with_draft", [False, True])
def test_chain_sampling_matches_verify_chain_in_distribution(device, with_draft):
    """Same fixed drafts for every request, different seeds: verify_chain and verify_tree
    (one child per node) must give the same distribution of output sequences."""
    R, V, L, T = 6000, 4, 2, 1.0
    target1, drafts1, dl1 = chain_batch(1, V, L, seed=8)
    target = target1.repeat(R, 1)
    drafts = drafts1.repeat(R, 1)
    dl = dl1.repeat(R, 1, 1) if with_draft else None
    tok, par, tdl = as_tree(drafts, dl, V)
    lengths = torch.full((R,), L)
    temp = torch.full((R,), T)
    chain = torch.ops.dspark.verify_chain(*on(device, target, drafts, lengths, temp, torch.arange(R),
                                             torch.zeros(R, dtype=torch.long), dl))
    tree = dspark_ops.verify_tree(*on(device, target, tok, par, lengths + 1, temp, torch.arange(R) + R,
                                      torch.zeros(R, dtype=torch.long), tdl))
    a = collections.Counter(map(tuple, chain[0].cpu().tolist()))
    b = collections.Counter(map(tuple, tree[0].cpu().tolist()))
    keys = sorted(set(a) | set(b))
    assert sum(a[k] + b[k] >= 20 for k in keys) >= 4
    assert_same_distribution([a[k] for k in keys], [b[k] for k in keys], "chain vs tree output sequences")


# ---------------------------------------------------------------------------------------
# Invariance, malformed inputs


def split_request(args, r):
    target, tokens, parents, n, temp, seeds, offs, draft = args
    first = int(n[:r].sum())
    rows = slice(first, first + int(n[r]))
    return (target[rows], tokens[r : r + 1], parents[r : r + 1], n[r : r + 1], temp[r : r + 1], seeds[r : r + 1],
            offs[r : r + 1], draft[rows])


def test_batch_invariance(device):
    args = batch_inputs(12, 8, 50, seed=5)
    full = dspark_ops.verify_tree(*on(device, *args))
    # Each request alone, and the batch reversed, give the same per-request outputs.
    for r in range(12):
        alone = dspark_ops.verify_tree(*on(device, *split_request(args, r)))
        for a, b in zip(full, alone):
            assert torch.equal(a[r].cpu(), b[0].cpu())
    parts = [split_request(args, r) for r in reversed(range(12))]
    rev = [torch.cat([p[k] for p in parts]) for k in range(8)]
    back = dspark_ops.verify_tree(*on(device, *rev))
    for a, b in zip(full, back):
        assert torch.equal(a.cpu(), b.flip(0).cpu())
    again = dspark_ops.verify_tree(*on(device, *args))
    for a, b in zip(full, again):
        assert torch.equal(a, b)


def malformed(name):
    target, tokens, parents, n, temp, seeds, offs, draft = batch_inputs(3, 5, 11, seed=1)
    n = torch.tensor([5, 3, 4])
    target, draft = target.new_zeros(12, 11), draft.new_zeros(12, 11)
    args = dict(target_logits=target, tree_tokens=tokens, parents=parents, num_nodes=n, temperature=temp,
                seed=seeds, offset=offs, draft_logits=draft)
    if name == "parent_ge_index":
        args["parents"] = parents.clone()
        args["parents"][1, 2] = 2
    elif name == "parent_negative":
        args["parents"] = parents.clone()
        args["parents"][0, 3] = -1
    elif name == "root_parent":
        args["parents"] = parents.clone()
        args["parents"][2, 0] = 0
    elif name == "count_gt_m":
        args["num_nodes"] = torch.tensor([6, 3, 3])
    elif name == "count_negative":
        args["num_nodes"] = torch.tensor([-1, 9, 4])
    elif name == "rows_mismatch":
        args["target_logits"] = target[:11]
        args["draft_logits"] = draft[:11]
    elif name == "draft_rows":
        args["draft_logits"] = draft[:10]
    elif name == "tokens_dtype":
        args["tree_tokens"] = tokens.int()
    elif name == "temperature_dtype":
        args["temperature"] = temp.double()
    elif name == "parents_shape":
        args["parents"] = parents[:, :4]
    return args


@pytest.mark.parametrize(
    "case,arg",
    [("parent_ge_index", "parents"), ("parent_negative", "parents"), ("root_parent", "parents"),
     ("count_gt_m", "num_nodes"), ("count_negative", "num_nodes"), ("rows_mismatch", "target_logits"),
     ("draft_rows", "draft_logits"), ("tokens_dtype", "tree_tokens"), ("temperature_dtype", "temperature"),
     ("parents_shape", "parents")],
)
def test_malformed_inputs_raise(case, arg):
    args = malformed(case)
    with pytest.raises(RuntimeError, match=f"'{arg}'"):
        dspark_ops.verify_tree(**args)
    if case in ("parent_ge_index", "parent_negative", "root_parent", "count_gt_m", "count_negative"):
        with pytest.raises(RuntimeError, match=f"'{arg}'"):
            dspark_ops.tree_metadata(args["parents"], args["num_nodes"], torch.zeros(3, dtype=torch.long))


def test_error_messages_are_clear():
    args = malformed("parent_ge_index")
    with pytest.raises(RuntimeError, match=r"topological order.*parents\[1, 2\] = 2"):
        dspark_ops.verify_tree(**args)
    args = malformed("count_gt_m")
    with pytest.raises(RuntimeError, match=r"\[0, M=5\].*got 6"):
        dspark_ops.verify_tree(**args)


# ---------------------------------------------------------------------------------------
# CUDA vs CPU


@requires_cuda
@pytest.mark.parametrize("with_draft", [False, True])
@pytest.mark.parametrize("V", [151_936, 151_937])  # vector loads (aligned rows) and the scalar path
def test_cuda_matches_cpu_large_vocab(with_draft, V):
    args = batch_inputs(16, 12, V, seed=13, dtype=torch.bfloat16, scale=3.0, draft_dtype=torch.float32)
    if not with_draft:
        args = args[:7] + (None,)
    cpu = dspark_ops.verify_tree(*args, torch.tensor([7]))
    gpu = dspark_ops.verify_tree(*on("cuda", *args), torch.tensor([7], device="cuda"))
    # Float rounding of the block reductions may flip a near-tie: allow a rare mismatch.
    same = (cpu[0] == gpu[0].cpu()).all(1) & (cpu[3] == gpu[3].cpu())
    assert same.sum() >= 15, f"{int((~same).sum())} of 16 requests differ"


@requires_cuda
def test_cuda_misaligned_rows_and_exact_small_vocab():
    """fp32 rows starting at an odd element (storage offset 1) take the scalar path."""
    args = list(batch_inputs(40, 9, 64, seed=14, dtype=torch.float32, draft_dtype=torch.float16))
    want = dspark_ops.verify_tree(*args)
    big = torch.randn(args[0].numel() + 1, device="cuda")
    target = big[1:].view_as(args[0])
    target.copy_(args[0])
    got = dspark_ops.verify_tree(target, *on("cuda", *args[1:]))
    for a, b in zip(want, got):
        assert torch.equal(a, b.cpu())
    got = dspark_ops.tree_metadata(*on("cuda", args[2], args[3], args[3] * 5))
    for a, b in zip(dspark_ops.tree_metadata(args[2], args[3], args[3] * 5), got):
        assert torch.equal(a, b.cpu())


@requires_cuda
def test_cuda_unchecked_bad_tree_stays_in_bounds():
    """Without DSPARK_CHECK, malformed trees must not fault (counts clamped, bad parents skipped)."""
    target = torch.randn(7, 10, device="cuda")
    tokens = torch.randint(0, 10, (2, 4), device="cuda")
    parents = torch.tensor([[-1, 3, 9, 0], [-1, 0, 1, 2]], device="cuda")
    n = torch.tensor([99, 5], device="cuda")
    try:
        out = dspark_ops.verify_tree(target, tokens, parents, n, torch.zeros(2, device="cuda"),
                                     torch.zeros(2, dtype=torch.long, device="cuda"),
                                     torch.zeros(2, dtype=torch.long, device="cuda"))
        torch.cuda.synchronize()
        assert (out[3] <= 4).all()
        dspark_ops.tree_metadata(parents, n, torch.zeros(2, dtype=torch.long, device="cuda"))
        torch.cuda.synchronize()
    except RuntimeError as e:  # DSPARK_CHECK=1 in the environment: value checks raise instead
        assert "num_nodes" in str(e) or "parents" in str(e)


# ---------------------------------------------------------------------------------------
# SPEC §9 filters, draft_probs and §10 sparse q (draft_ids)


def sparse_of(d_rows, T, K, gen):
    """A sparse q per row: K listed ids (one entry -1 padding) of the dense logits d_rows,
    returned as (ids [N, K], listed logits [N, K], the dense q [N, V] they define)."""
    N, V = d_rows.shape
    ids = torch.stack([torch.randperm(V, generator=gen)[:K] for _ in range(N)])
    ids[:, 1] = -1
    listed = d_rows.gather(1, ids.clamp_min(0))
    scaled = torch.where(ids >= 0, listed / T, torch.full_like(listed, float("-inf")))
    q = torch.zeros(N, V).scatter(1, ids.clamp_min(0), torch.softmax(scaled, 1) * (ids >= 0))
    return ids, listed, q


@pytest.mark.parametrize("q_kind", ["logits", "probs", "sparse_logits", "sparse_probs"])
def test_filtered_recursive_rejection_is_lossless(device, q_kind):
    # Children i.i.d. from q (given as logits, probabilities, or sparse), target filtered with
    # top-k 4 / top-p 0.8 / min-p 0.05: the first two tokens follow the filtered target.
    from helpers import brute_filter

    V, R, T, K = 6, 8000, 0.9, 5
    g = torch.Generator().manual_seed(17)
    L0, Lq0 = torch.randn(V, generator=g), torch.randn(V, generator=g) * 1.5
    L2, Lq2 = torch.randn(V, V, generator=g), torch.randn(V, V, generator=g) * 1.5
    d_dense = torch.cat([Lq0[None], Lq2])  # q rows: root, then after token a
    if q_kind.startswith("sparse"):
        ids, listed, q = sparse_of(d_dense, T, K, g)
    else:
        q = torch.softmax(d_dense / T, 1)
    c1 = torch.multinomial(q[0].expand(R, V), 3, replacement=True, generator=g)
    c2 = torch.multinomial(q[1:][c1.reshape(-1)], 2, replacement=True, generator=g).reshape(R, 6)
    tok = torch.cat([torch.full((R, 1), V - 1), c1, c2], 1)
    par = torch.tensor([-1, 0, 0, 0, 1, 1, 2, 2, 3, 3]).repeat(R, 1)
    target = torch.cat([L0.expand(R, 1, V), L2[c1], L2[c2]], 1).reshape(R * 10, V)
    row_of = torch.cat([torch.zeros(R, 1, dtype=torch.long), c1 + 1, torch.zeros(R, 6, dtype=torch.long)], 1)
    rows = row_of.reshape(-1)  # which q row each node uses (leaves: unused)
    kw = {}
    if q_kind == "logits":
        kw["draft_logits"] = d_dense[rows]
    elif q_kind == "probs":
        kw["draft_probs"] = q[rows]
    else:
        kw["draft_ids"] = ids[rows]
        kw["draft_logits" if q_kind == "sparse_logits" else "draft_probs"] = (
            listed[rows] if q_kind == "sparse_logits" else q[rows].gather(1, ids[rows].clamp_min(0)))
    filt = (4, 0.8, 0.05)
    tgt, tok_d, par_d, n_d, seed_d = on(device, target, tok, par, torch.full((R,), 10), torch.arange(R) + 100)
    out, nodes, acc, emit = dspark_ops.verify_tree(
        tgt, tok_d, par_d, n_d, T, seed_d, 3,
        top_k=filt[0], top_p=filt[1], min_p=filt[2], **{k: v.to(device) for k, v in kw.items()})
    p0 = brute_filter(torch.softmax(L0 / T, 0), *filt)
    p2 = torch.stack([brute_filter(torch.softmax(L2[a] / T, 0), *filt) for a in range(V)])
    check_first_two_tokens(out.cpu(), p0, p2)
    assert (nodes[:, 0].cpu() >= 1).sum() > 100  # children do get accepted


@pytest.mark.parametrize("q_kind", ["logits", "probs", "sparse_logits", "sparse_probs", "none"])
def test_new_arguments_match_reference(device, q_kind):
    V, K = 29, 6
    target, tokens, parents, n, temp, seeds, offs, draft = batch_inputs(24, 9, V, seed=13)
    g = torch.Generator().manual_seed(3)
    R = 24
    tk = torch.randint(-1, 8, (R,), generator=g)
    tp = torch.where(torch.rand(R, generator=g) < 0.4, torch.ones(R), torch.rand(R, generator=g) * 0.9 + 0.05)
    mp = torch.where(torch.rand(R, generator=g) < 0.5, torch.zeros(R), torch.rand(R, generator=g) * 0.5)
    kw = {}
    if q_kind == "logits":
        kw["draft_logits"] = draft
    elif q_kind == "probs":
        kw["draft_probs"] = torch.softmax(draft.float(), 1) * (torch.rand(draft.shape, generator=g) > 0.3)
    elif q_kind != "none":
        ids, listed, q = sparse_of(draft.float(), 1.0, K, g)
        kw["draft_ids"] = ids
        kw["draft_logits" if q_kind == "sparse_logits" else "draft_probs"] = (
            listed if q_kind == "sparse_logits" else q.gather(1, ids.clamp_min(0)))
    args = (target, tokens, parents, n, temp, seeds, offs)
    want = ref.verify_tree(*args, top_k=tk, top_p=tp, min_p=mp, **kw)
    got = dspark_ops.verify_tree(*on(device, *args), top_k=tk.to(device), top_p=tp.to(device), min_p=mp.to(device),
                                 **{k: v.to(device) for k, v in kw.items()})
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b)


def test_filters_off_are_bit_identical(device):
    target, tokens, parents, n, temp, seeds, offs, draft = on(device, *batch_inputs(12, 7, 23, seed=19))
    base = dspark_ops.verify_tree(target, tokens, parents, n, temp, seeds, offs, draft)
    off = dspark_ops.verify_tree(target, tokens, parents, n, temp, seeds, offs, draft, top_k=0, top_p=1.0, min_p=0.0)
    for a, b in zip(base, off):
        assert torch.equal(a, b)


def test_new_arguments_opcheck_and_compile(device):
    target, tokens, parents, n, temp, seeds, offs, draft = batch_inputs(5, 6, 13, seed=2)
    base = on(device, target, tokens, parents, n, temp, seeds, offs)
    tk, tp, mp = on(device, torch.tensor([0, 3, 5, 1, 20]), torch.tensor([1.0, 0.9, 0.5, 0.7, 1.0]),
                    torch.tensor([0.0, 0.1, 0.0, 0.3, 0.0]))
    probs = torch.softmax(draft.float(), 1).to(device)
    op = torch.ops.dspark.verify_tree.default
    torch.library.opcheck(op, (*base, None, None, tk, tp, mp))
    torch.library.opcheck(op, (*base, None, None, None, tp, None, probs))
    ids = torch.stack([torch.randperm(13)[:4] for _ in range(int(n.sum()))]).to(device)
    torch.library.opcheck(op, (*base, draft[:, :4].to(device), None, tk, None, None, None, ids))

    def step(target, tokens, parents, n, temp, seeds, offs, probs, tk, tp):
        return dspark_ops.verify_tree(target, tokens, parents, n, temp, seeds, offs, draft_probs=probs, top_k=tk,
                                      top_p=tp)

    compiled = torch.compile(step, fullgraph=True, backend="eager" if device == "cpu" else "inductor")
    for a, b in zip(compiled(*base, probs, tk, tp), step(*base, probs, tk, tp)):
        assert torch.equal(a, b)


def test_bad_new_arguments_raise():
    target, tokens, parents, n, temp, seeds, offs, draft = batch_inputs(2, 4, 9, seed=1)
    N = int(n.sum())
    base = (target, tokens, parents, n, temp, seeds, offs)
    with pytest.raises(RuntimeError, match="draft_probs"):
        dspark_ops.verify_tree(*base, draft, draft_probs=torch.ones(N, 9) / 9)
    with pytest.raises(RuntimeError, match="repeat"):
        dspark_ops.verify_tree(*base, draft[:, :2], draft_ids=torch.zeros(N, 2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="draft_ids"):
        dspark_ops.verify_tree(*base, draft[:, :2], draft_ids=torch.full((N, 2), 9))
    with pytest.raises(RuntimeError, match="top_p"):
        dspark_ops.verify_tree(*base, top_p=[0.5, 0.0])
    with pytest.raises(RuntimeError, match="min_p"):
        dspark_ops.verify_tree(*base, min_p=2.0)
