"""Tests of dspark_ops.distributed (SPEC §11): vocab-parallel verify_chain / verify_tree.

Two harnesses run the real composition in dspark_ops/distributed.py:
- gloo ranks spawned once per module for W = 2 and W = 4 (torch.multiprocessing, FileStore):
  every rank's outputs are identical and equal the single-device op on the full logits, the
  collectives are counted (number and shapes) and do not depend on V, and the losslessness
  chi-square runs through the distributed path;
- W ranks as threads of this process exchanging through a barrier (a stand-in for the
  all-gather), for many random awkward cases cheaply.
Inputs are random normal logits, where float near-ties (which a normaliser summed in another
order could flip, SPEC §11) have negligible probability; the chi-square tests use fixed seeds
and fail with probability 1e-4 for a correct implementation under fresh seeds.
"""

from __future__ import annotations

import tempfile
import threading

import pytest
import torch
import torch.multiprocessing as mp
from distributed_worker import rank_worker, run_shard

import dspark_ops
import dspark_ops.distributed as D

from test_verify_tree import batch_inputs, check_first_two_tokens, rrs_batch

# ---------------------------------------------------------------------------------------
# Inputs


def splits_of(V, W, how):
    """[(vocab_start, V_i)] per rank: even (remainder first), reversed (rank 0 holds the top
    ids, so rank order and id order disagree) or ragged (shards of very different widths)."""
    if how == "even":
        return [D.shard_range(V, r, W) for r in range(W)]
    if how == "reversed":
        return [D.shard_range(V, W - 1 - r, W) for r in range(W)]
    cuts = [0] + sorted({1, V // 3, V // 3 + 2, V - 1}) + [V]
    cuts = sorted(set(cuts))[: W] + [V] if len(set(cuts)) > W else cuts
    bounds = sorted(set(cuts))
    while len(bounds) < W + 1:  # split the widest shard until there are W
        i = max(range(len(bounds) - 1), key=lambda j: bounds[j + 1] - bounds[j])
        bounds.insert(i + 1, (bounds[i] + bounds[i + 1]) // 2)
    bounds = bounds[: W] + [V]
    return [(bounds[r], bounds[r + 1] - bounds[r]) for r in range(W)]


def chain_case(R, gamma, V, seed, draft=True, greedy_every=4, invalid=False, eos=True):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, gamma + 1, (R,), generator=g)
    N = int((lengths + 1).sum())
    target = torch.randn(N, V, generator=g) * 2
    first = torch.cumsum(lengths + 1, 0) - (lengths + 1)
    # Drafts close to the target so that chains go deep: q = target row + noise.
    dl = torch.zeros(R, gamma, V)
    drafts = torch.randint(0, V, (R, gamma), generator=g)
    for r in range(R):
        for k in range(int(lengths[r])):
            row = target[first[r] + k]
            dl[r, k] = row + torch.randn(V, generator=g) * 0.5
            if torch.rand(1, generator=g).item() < 0.7:
                drafts[r, k] = int(row.argmax())
    if invalid:
        drafts[torch.rand(R, gamma, generator=g) < 0.1] = -1
    temperature = torch.rand(R, generator=g) + 0.5
    if greedy_every:
        temperature[::greedy_every] = 0.0
    seeds = torch.randint(0, 2**62, (R,), generator=g)
    offsets = torch.randint(0, 2**40, (R,), generator=g)
    eos_ids = drafts[:2, 0].clamp_min(0).clone() if eos else None
    return dict(kind="chain", target=target, drafts=drafts, lengths=lengths, temperature=temperature, seed=seeds,
                offset=offsets, draft=dl.to(torch.bfloat16) if draft else None, eos=eos_ids)


def tree_case(R, M, V, seed, draft=True, greedy_every=4, eos=True):
    target, tokens, parents, n, temperature, seeds, offsets, dl = batch_inputs(R, M, V, seed=seed,
                                                                              greedy_every=greedy_every)
    eos_ids = tokens[:2, 1].clamp_min(0).clone() if eos else None
    return dict(kind="tree", target=target, tokens=tokens, parents=parents, n=n, temperature=temperature,
                seed=seeds, offset=offsets, draft=dl if draft else None, eos=eos_ids)


def with_bad_rows(case, splits):
    """A shard with all -inf logits in every row (the second rank's), an all-NaN row and an
    all -inf row."""
    case = dict(case)
    target = case["target"].clone()
    start, count = splits[1]
    target[:, start:start + count] = float("-inf")
    target[0] = float("nan")
    if target.shape[0] > 3:
        target[3] = float("-inf")
    case["target"] = target
    return case


def single_device(case):
    if case["kind"] == "chain":
        return dspark_ops.verify_chain(case["target"], case["drafts"], case["lengths"], case["temperature"],
                                       case["seed"], case["offset"], case["draft"], case["eos"])
    return dspark_ops.verify_tree(case["target"], case["tokens"], case["parents"], case["n"], case["temperature"],
                                  case["seed"], case["offset"], case["draft"], case["eos"])


def chi_chain_case(R, V, T, seed):
    """γ = 1 chains whose draft x1 ~ q0; the target after x1 is p2[x1]: the first token must
    follow p0 and the bonus after an accepted x1 must follow p2[x1]."""
    g = torch.Generator().manual_seed(seed)
    L0, Lq0, L2 = torch.randn(V, generator=g), torch.randn(V, generator=g) * 1.5, torch.randn(V, V, generator=g)
    x1 = torch.multinomial(torch.softmax(Lq0 / T, 0).expand(R, V), 1, generator=g)
    target = torch.stack([L0.expand(R, V), L2[x1[:, 0]]], 1).reshape(2 * R, V)
    case = dict(kind="chain", target=target, drafts=x1, lengths=torch.ones(R, dtype=torch.long),
                temperature=torch.full((R,), T), seed=torch.arange(R) * 7919 + 3, offset=torch.full((R,), 11),
                draft=Lq0.expand(R, 1, V).clone(), eos=None)
    return case, torch.softmax(L0 / T, 0), torch.softmax(L2 / T, 1)


def chi_tree_case(R, V, T, seed):
    target, tok, par, draft, p0, p2 = rrs_batch(R, V, T, seed=seed)
    case = dict(kind="tree", target=target, tokens=tok, parents=par, n=torch.full((R,), 10),
                temperature=torch.full((R,), T), seed=torch.arange(R) + 100, offset=torch.full((R,), 3),
                draft=draft, eos=None)
    return case, p0, p2


def spawn_cases(W):
    """name -> (case, splits). Same-shaped pairs at two vocabulary sizes probe the collectives."""
    cases = {}
    for V in (1003, 2011):
        cases[f"chain_draft_V{V}"] = (chain_case(9, 5, V, seed=1), splits_of(V, W, "even"))
        cases[f"tree_draft_V{V}"] = (tree_case(8, 6, V, seed=2), splits_of(V, W, "even"))
        cases[f"tree_nodraft_V{V}"] = (tree_case(8, 6, V, seed=3, draft=False), splits_of(V, W, "even"))
    V = 1003
    cases["chain_nodraft_invalid_reversed"] = (chain_case(9, 5, V, seed=4, draft=False, invalid=True),
                                               splits_of(V, W, "reversed"))
    cases["chain_draft_ragged"] = (chain_case(9, 4, V, seed=5), splits_of(V, W, "ragged"))
    cases["tree_draft_reversed"] = (tree_case(8, 6, V, seed=6), splits_of(V, W, "reversed"))
    splits = splits_of(V, W, "even")
    cases["chain_bad_rows"] = (with_bad_rows(chain_case(6, 4, V, seed=7), splits), splits)
    cases["tree_bad_rows"] = (with_bad_rows(tree_case(6, 5, V, seed=8), splits), splits)
    cases["chi_chain"] = (chi_chain_case(4000, 6, 0.9, seed=9)[0], splits_of(6, W, "even"))
    cases["chi_tree"] = (chi_tree_case(4000, 6, 0.9, seed=10)[0], splits_of(6, W, "ragged"))
    return cases


# ---------------------------------------------------------------------------------------
# gloo ranks, spawned once per world size


def spawn_run(W, cases, backend="gloo", device="cpu"):
    with tempfile.TemporaryDirectory() as workdir:
        torch.save(cases, f"{workdir}/cases.pt")
        mp.spawn(rank_worker, args=(W, workdir, backend, device), nprocs=W, join=True)
        return [torch.load(f"{workdir}/rank{r}.pt") for r in range(W)]


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"W{w}")
def spawned(request):
    W = request.param
    cases = spawn_cases(W)
    return W, cases, spawn_run(W, cases)


def expected_of(cases):
    return {name: single_device(case) for name, (case, _) in cases.items()}


def test_spawned_ranks_match_single_device(spawned):
    W, cases, ranks = spawned
    expected = expected_of(cases)
    for name in cases:
        first = ranks[0][name][0]
        for r in range(1, W):
            for a, b in zip(first, ranks[r][name][0]):
                assert torch.equal(a, b), f"{name}: rank {r} differs from rank 0"
        for a, b in zip(first, expected[name]):
            assert torch.equal(a, b), f"{name}: distributed {a} != single-device {b}"


def test_spawned_collectives_bounded_and_independent_of_V(spawned):
    W, cases, ranks = spawned
    for name, (case, _) in cases.items():
        log = ranks[0][name][1]
        for r in range(1, W):
            assert ranks[r][name][1] == log
        if case["kind"] == "chain" or case["draft"] is None:
            assert len(log) <= 3, (name, log)
        else:
            assert len(log) <= case["tokens"].shape[1] + 1, (name, log)
        V = case["target"].shape[1]
        rows, requests = case["target"].shape[0], case["drafts" if case["kind"] == "chain" else "tokens"].shape[0]
        for shape, _ in log:  # O(N) or O(R) words, never O(V)
            assert shape[0] in (rows, requests) and all(s <= 5 for s in shape[1:]), (name, shape, V)
    for kind in ("chain_draft", "tree_draft", "tree_nodraft"):
        assert ranks[0][f"{kind}_V1003"][1] == ranks[0][f"{kind}_V2011"][1]
    assert [s for s, _ in ranks[0]["chain_draft_V1003"][1]] == [(cases["chain_draft_V1003"][0]["target"].shape[0], 5),
                                                               (9, 2)]
    assert len(ranks[0]["tree_nodraft_V1003"][1]) == 1
    assert len(ranks[0]["tree_draft_V1003"][1]) == 6  # stats, M - 2 = 4 mass rounds, race keys


def test_spawned_losslessness(spawned):
    W, cases, ranks = spawned
    _, p0, p2 = chi_chain_case(4000, 6, 0.9, seed=9)
    check_first_two_tokens(ranks[0]["chi_chain"][0][0], p0, p2)
    _, p0, p2 = chi_tree_case(4000, 6, 0.9, seed=10)
    out, nodes = ranks[0]["chi_tree"][0][:2]
    check_first_two_tokens(out, p0, p2)
    assert (nodes[:, 0] == -1).sum() > 100 and (nodes[:, 0] >= 2).sum() > 100  # rejections and later children


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices for NCCL ranks")
def test_nccl_ranks_match_single_device():
    W = 2
    cases = {k: v for k, v in spawn_cases(W).items() if not k.startswith("chi")}
    ranks = spawn_run(W, cases, backend="nccl", device="cuda")
    expected = expected_of(cases)
    for name in cases:
        for r in range(W):
            for a, b in zip(ranks[r][name][0], expected[name]):
                assert torch.equal(a, b), f"{name}: rank {r}"


# ---------------------------------------------------------------------------------------
# W ranks as threads of this process


class ThreadGroup:
    """The all-gather of W threads: each deposits its tensor, waits, and takes all W in rank order."""

    def __init__(self, world):
        self.world, self.slots, self.barrier = world, [None] * world, threading.Barrier(world)

    def member(self, rank):
        group = self

        class Member:
            def gather(self, t):
                group.slots[rank] = t.clone()
                group.barrier.wait()
                out = torch.stack(group.slots)
                group.barrier.wait()
                return out

        return Member()


def run_threads(case, splits, monkeypatch):
    monkeypatch.setattr(D, "_all_gather", lambda t, group: group.gather(t))
    group = ThreadGroup(len(splits))
    results, errors = [None] * len(splits), []

    def body(rank):
        try:
            results[rank] = run_shard(case, *splits[rank], group=group.member(rank))
        except BaseException as e:  # surfaced below
            errors.append(e)
            group.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(len(splits))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("seed", range(6))
def test_threaded_ranks_match_single_device(seed, monkeypatch):
    g = torch.Generator().manual_seed(100 + seed)
    V = int(torch.randint(5, 700, (1,), generator=g))
    W = int(torch.randint(1, 6, (1,), generator=g))
    how = ["even", "reversed", "ragged"][seed % 3]
    splits = splits_of(V, min(W, V), how)
    cases = [chain_case(7, 4, V, seed, draft=seed % 2 == 0, invalid=seed % 2 == 1),
             chain_case(5, 3, V, seed + 50, greedy_every=1),
             tree_case(6, 7, V, seed, draft=seed % 2 == 0),
             tree_case(5, 9, V, seed + 50, draft=True, greedy_every=0)]
    if len(splits) > 1:
        cases.append(with_bad_rows(cases[0], splits))
        cases.append(with_bad_rows(cases[2], splits))
    for case in cases:
        expected = single_device(case)
        for got in run_threads(case, splits, monkeypatch):
            for a, b in zip(got, expected):
                assert torch.equal(a, b), (case["kind"], V, splits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("seed", range(3))
def test_threaded_ranks_on_cuda_match_single_device(seed, monkeypatch):
    """The CUDA phase kernels (ranks as threads on one GPU) against the single-device op."""
    V = [151, 1000, 4099][seed]
    splits = splits_of(V, 3, ["even", "reversed", "ragged"][seed])
    cases = [chain_case(9, 5, V, seed), chain_case(9, 5, V, seed + 1, draft=False, invalid=True),
             tree_case(8, 7, V, seed), tree_case(8, 7, V, seed + 1, draft=False)]
    cases.append(with_bad_rows(cases[0], splits))
    cases.append(with_bad_rows(cases[2], splits))
    for case in cases:
        expected = single_device(case)
        on_cuda = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in case.items()}
        for got in run_threads(on_cuda, splits, monkeypatch):
            for a, b in zip(got, expected):
                assert torch.equal(a.cpu(), b), (case["kind"], V, splits)


def test_greedy_ties_between_shards_go_to_the_lowest_id(monkeypatch):
    V = 40
    target = torch.zeros(4, V)
    target[:, 30] = 5.0  # the same maximum on the last rank's and the first rank's shard
    target[:, 7] = 5.0
    target[1] = -1.0  # a -0 / +0 tie is a tie too: the lower id wins
    target[1, 2] = -0.0
    target[1, 30] = 0.0
    case = dict(kind="chain", target=target, drafts=torch.tensor([[7, 5, 1]]), lengths=torch.tensor([3]),
                temperature=torch.zeros(1), seed=torch.zeros(1, dtype=torch.long),
                offset=torch.zeros(1, dtype=torch.long), draft=None, eos=None)
    expected = single_device(case)
    assert expected[0].tolist() == [[7, 2, -1, -1]]
    for how in ("even", "reversed"):
        for got in run_threads(case, splits_of(V, 4, how), monkeypatch):
            assert torch.equal(got[0], expected[0])


def test_empty_batch(monkeypatch):
    case = chain_case(0, 3, 50, seed=0)
    for got in run_threads(case, splits_of(50, 2, "even"), monkeypatch):
        assert got[0].shape == (0, 4) and got[1].shape == (0,)
    case = tree_case(1, 4, 50, seed=0)
    case.update(tokens=case["tokens"][:0], parents=case["parents"][:0], n=case["n"][:0], target=case["target"][:0],
                temperature=case["temperature"][:0], seed=case["seed"][:0], offset=case["offset"][:0],
                draft=case["draft"][:0])
    for got in run_threads(case, splits_of(50, 2, "even"), monkeypatch):
        assert got[0].shape == (0, 4)


# ---------------------------------------------------------------------------------------
# Errors; the phase ops composed in one compiled graph (opcheck, compile, CUDA graphs, strides
# and R = 0 of every phase op: tests/op_registry.py samples run by tests/test_every_op.py)


def test_filters_are_rejected_with_a_clear_error():
    case = chain_case(2, 2, 10, seed=0)
    with pytest.raises(NotImplementedError, match="top_p"):
        D.verify_chain(case["target"], case["drafts"], case["lengths"], case["temperature"], case["seed"],
                       case["offset"], top_p=torch.full((2,), 0.9), vocab_start=0, vocab_size=10)


def test_bad_shard_arguments_raise():
    case = chain_case(2, 2, 10, seed=0)
    args = (case["target"], case["drafts"], case["lengths"], case["temperature"], case["seed"], case["offset"], None)
    with pytest.raises(RuntimeError, match="'vocab_start'"):
        torch.ops.dspark.verify_chain_shard_stats(*args, 5, 10)
    with pytest.raises(RuntimeError, match="'vocab_size'"):
        torch.ops.dspark.verify_chain_shard_stats(*args, 0, 2**32)
    stats = torch.ops.dspark.verify_chain_shard_stats(*args, 0, 10)
    with pytest.raises(RuntimeError, match="'stats'"):
        torch.ops.dspark.verify_chain_shard_decide(*args[:6], stats, None, None, 0, 10)  # not [W, N, 5]
    with pytest.raises(RuntimeError, match="'race_keys'"):
        torch.ops.dspark.verify_shard_finish(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                                             torch.zeros(2, dtype=torch.long), torch.zeros(1, 3, 2, dtype=torch.long))


def one_rank_chain(target, drafts, lengths, temperature, seed, offset, draft):
    """verify_chain through the phase ops with W = 1 (the gathers are unsqueezes): one graph."""
    ops, V = torch.ops.dspark, target.shape[1]
    stats = ops.verify_chain_shard_stats(target, drafts, lengths, temperature, seed, offset, draft, 0, V)
    out, acc, emit, keys = ops.verify_chain_shard_decide(target, drafts, lengths, temperature, seed, offset,
                                                         stats.unsqueeze(0), draft, None, 0, V)
    return ops.verify_shard_finish(out, acc, emit, keys.unsqueeze(0)), acc, emit


def one_rank_tree(target, tokens, parents, n, temperature, seed, offset, draft):
    ops, V = torch.ops.dspark, target.shape[1]
    args = (target, tokens, parents, n, temperature, seed, offset)
    stats = ops.verify_tree_shard_stats(*args, draft, 0, V).unsqueeze(0)
    walk, out, nodes, partial = ops.verify_tree_shard_walk(*args, stats, None, None, None, None, draft, None, 0, V)
    for _ in range(tokens.shape[1] - 2):
        walk, out, nodes, partial = ops.verify_tree_shard_walk(*args, stats, walk, out, nodes, partial.unsqueeze(0),
                                                               draft, None, 0, V)
    keys, acc, emit = ops.verify_tree_shard_race(*args, stats, walk, draft, 0, V)
    return ops.verify_shard_finish(out, acc, emit, keys.unsqueeze(0)), nodes, acc, emit


def test_torch_compile_phase_ops():
    c = chain_case(4, 3, 50, seed=11)
    cargs = (c["target"], c["drafts"], c["lengths"], c["temperature"], c["seed"], c["offset"], c["draft"])
    got = torch.compile(one_rank_chain, fullgraph=True)(*cargs)
    want = dspark_ops.verify_chain(*cargs)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    t = tree_case(4, 5, 50, seed=11)
    targs = (t["target"], t["tokens"], t["parents"], t["n"], t["temperature"], t["seed"], t["offset"], t["draft"])
    got = torch.compile(one_rank_tree, fullgraph=True)(*targs)
    want = dspark_ops.verify_tree(*targs)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
