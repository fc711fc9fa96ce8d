"""One registry of sample calls: for every op of ``torch.ops.dspark``, small valid calls that
cover its main modes. ``tests/test_every_op.py`` runs each of them through the checks every
op must pass (opcheck, torch.compile, CUDA graphs, CPU vs CUDA, strides, R = 0, devices),
and fails when an op of the library has no entry here: a new op adds its samples below.

A sample's ``build(device, requests, variant)`` returns the op's positional arguments. The
values are drawn on the CPU from ``variant`` and then moved, so CPU and CUDA see the same
numbers. Shapes depend on ``requests`` only (never on ``variant``): a CUDA graph captured
with variant 0 is replayed after copying variant 1 into the same tensors.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import torch


@dataclasses.dataclass(frozen=True)
class Sample:
    """One valid call of one op."""

    op: str  # name in torch.ops.dspark
    mode: str  # what this call covers (the test id)
    build: Callable[[str, int, int], tuple]  # (device, requests, variant) -> positional arguments
    requests: int = 4  # R of the default call
    mutates: tuple[int, ...] = ()  # positions of the arguments written in place (Tensor(a!))
    atol: float = 0.0  # CPU vs CUDA tolerance of floating outputs (integer outputs: equal)
    rtol: float = 0.0

    @property
    def overload(self) -> torch._ops.OpOverload:
        return getattr(torch.ops.dspark, self.op).default

    @property
    def id(self) -> str:
        return f"{self.op}[{self.mode}]"


def _gen(variant: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 * variant + salt)


def _to(device: str, *args) -> tuple:
    return tuple(a.to(device) if torch.is_tensor(a) else a for a in args)


def _keys(R: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """seed [R], offset [R] int64: full 64-bit keys."""
    return torch.randint(-(2**62), 2**62, (R,), generator=g), torch.randint(0, 2**40, (R,), generator=g)


def _temperature(R: int, g: torch.Generator) -> torch.Tensor:
    """[R] float32: greedy every third request, sampling otherwise."""
    t = torch.rand(R, generator=g) + 0.3
    t[::3] = 0.0
    return t


# ----------------------------------------------------------------------------- random_bits


def _random_bits(device, R, variant):
    g = _gen(variant, 1)
    seed, offset = _keys(R, g)
    return _to(device, seed, offset, 3, 5, 37)


# ----------------------------------------------------------------------------- markov_draft

_G, _V, _RANK, _D = 3, 37, 8, 5


def _markov_filters(device, R, variant, top):
    """SPEC §9 filters of R requests: top_k in [0, top] (0 and top off for top = V), top_p in
    [0.5, 1), min_p in [0, 0.2)."""
    g = _gen(variant, 3)
    return _to(device, torch.randint(0, top + 1, (R,), generator=g), torch.rand(R, generator=g) * 0.5 + 0.5,
               torch.rand(R, generator=g) * 0.2)


def _markov_draft(head: str, conf: str, dtype: torch.dtype, filters: bool = False):
    def build(device, R, variant):
        g = _gen(variant, 2)

        def rnd(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g) * scale).to(dtype)

        base, anchor = rnd(R, _G, _V, scale=2.0), torch.randint(0, _V, (R,), generator=g)
        w1, w2 = rnd(_V, _RANK), rnd(_V, _RANK, scale=0.3)
        seed, offset = _keys(R, g)
        hidden = rnd(R, _G, _D) if head != "vanilla" or conf != "none" else None
        gate = (rnd(_RANK, _D + _RANK, scale=0.2), rnd(_RANK)) if head == "gated" else (None, None)
        rnn = (rnd(3 * _RANK, 2 * _RANK + _D, scale=0.2), rnd(3 * _RANK)) if head == "rnn" else (None, None)
        confidence = (None, None, None)
        if conf != "none":
            width = _D if conf == "h" else _D + _RANK
            confidence = (rnd(width, scale=0.3), rnd(1), torch.rand(_G, generator=g) + 0.5)
        args = _to(device, base, anchor, w1, w2, _temperature(R, g), seed, offset, hidden, *gate, *rnn, *confidence)
        return (*args, *_markov_filters(device, R, variant, _V)) if filters else args

    return build


def _markov_draft_topk(head: str, conf: str, dtype: torch.dtype, K: int, filters: bool = False):
    def build(device, R, variant):
        args = _markov_draft(head, conf, dtype)(device, R, variant)
        extra = _markov_filters(device, R, variant, K) if filters else ()
        return (*args[:7], K, *args[7:], *extra)

    return build


# ----------------------------------------------------------------------------- verify_chain

_GAMMA, _VV = 4, 29


def _chain_lengths(R: int, variant: int) -> torch.Tensor:
    # A rotation keeps Σ lengths (and so the row count N) fixed across variants.
    return (torch.arange(R) % (_GAMMA + 1)).roll(variant)


def _verify_chain(with_draft: bool, target_dtype: torch.dtype):
    def build(device, R, variant):
        g = _gen(variant, 3)
        lengths = _chain_lengths(R, variant)
        N = int((lengths + 1).sum())
        target = (torch.randn(N, _VV, generator=g) * 2).to(target_dtype)
        drafts = torch.randint(-1, _VV, (R, _GAMMA), generator=g)  # -1: never accepted
        draft_logits = torch.randn(R, _GAMMA, _VV, generator=g) * 2 if with_draft else None
        eos = torch.tensor([1, 2]) if with_draft else None
        seed, offset = _keys(R, g)
        return _to(device, target, drafts, lengths, _temperature(R, g), seed, offset, draft_logits, eos)

    return build


def _filters(R: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPEC §9 top_k [R] int64, top_p / min_p [R] float32, some requests with each filter off."""
    top_k = torch.randint(-1, 8, (R,), generator=g)
    top_p = torch.where(torch.rand(R, generator=g) < 0.3, torch.ones(R), torch.rand(R, generator=g) * 0.9 + 0.05)
    min_p = torch.where(torch.rand(R, generator=g) < 0.5, torch.zeros(R), torch.rand(R, generator=g) * 0.4)
    return top_k, top_p, min_p


def _verify_chain_q(q: str):
    """verify_chain with the §9 filters and q as draft_probs (q = "probs") or as a sparse q of
    K = 7 listed ids with one -1 padding entry (q = "sparse", SPEC §10)."""

    def build(device, R, variant):
        g = _gen(variant, 7)
        lengths = _chain_lengths(R, variant)
        N = int((lengths + 1).sum())
        target = torch.randn(N, _VV, generator=g) * 2
        drafts = torch.randint(-1, _VV, (R, _GAMMA), generator=g)
        seed, offset = _keys(R, g)
        top_k, top_p, min_p = _filters(R, g)
        logits, probs, ids = None, None, None
        if q == "probs":
            probs = torch.softmax(torch.randn(R, _GAMMA, _VV, generator=g) * 2, -1)
        else:
            ids = torch.rand(R, _GAMMA, _VV, generator=g).argsort(-1)[..., :7]  # 7 distinct ids per row
            ids[..., 3] = -1
            logits = torch.randn(R, _GAMMA, 7, generator=g) * 2
        return _to(device, target, drafts, lengths, _temperature(R, g), seed, offset, logits, None, top_k, top_p,
                   min_p, probs, ids)

    return build


# ----------------------------------------------------------------------------- trees

_M = 6


def _tree(R: int, variant: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """parents [R, M] (bushy and chain-like, always topological), num_nodes [R] with a fixed
    sum across variants (a rotation), one empty tree when R > 1."""
    parents = torch.full((R, _M), -1)
    for i in range(1, _M):
        parents[:, i] = torch.randint(0, i, (R,), generator=g)
    num_nodes = (torch.arange(R) % (_M + 1)).roll(variant)
    return parents, num_nodes


def _tree_metadata(device, R, variant):
    g = _gen(variant, 4)
    parents, num_nodes = _tree(R, variant, g)
    return _to(device, parents, num_nodes, torch.randint(0, 2**40, (R,), generator=g))


def _verify_tree(with_draft: bool, filtered_probs: bool = False):
    """filtered_probs: the §9 filters and q as draft_probs instead of draft_logits."""

    def build(device, R, variant):
        g = _gen(variant, 5)
        parents, num_nodes = _tree(R, variant, g)
        N = int(num_nodes.sum())
        target = torch.randn(N, _VV, generator=g) * 2
        tokens = torch.randint(-1, _VV, (R, _M), generator=g)
        draft_logits = (torch.randn(N, _VV, generator=g) * 2).to(torch.bfloat16) if with_draft else None
        eos = torch.tensor([3]) if with_draft else None
        seed, offset = _keys(R, g)
        args = (target, tokens, parents, num_nodes, _temperature(R, g), seed, offset, draft_logits, eos)
        if filtered_probs:
            probs = torch.softmax(torch.randn(N, _VV, generator=g) * 2, -1)
            args = args[:7] + (None, None, *_filters(R, g), probs)
        return _to(device, *args)

    return build


# ----------------------------------------------------------------------------- vocab-parallel phases


def _shard_phase(family: str, phase: str, with_draft: bool):
    """Rank 1 of a W = 2 vocabulary split of the verify samples, at phase `phase`; the earlier
    phases of both ranks run here on the CPU (the all-gathers are stacks)."""
    full_build = _verify_chain(with_draft, _F32) if family == "chain" else _verify_tree(with_draft)
    di = 6 if family == "chain" else 7  # position of draft_logits (eos_ids follows)

    def build(device, R, variant):
        full = full_build("cpu", R, variant)
        V = full[0].shape[1]
        cut = V // 2
        ops = torch.ops.dspark

        def shard(lo, hi):
            a = list(full)
            a[0] = full[0][:, lo:hi].contiguous()
            if a[di] is not None:
                a[di] = full[di][..., lo:hi].contiguous()
            return a

        ranks = [(shard(0, cut), 0), (shard(cut, V), cut)]
        a, lo = ranks[1]
        if family == "chain":
            stats_of = lambda a, lo: (*a[:6], a[6], lo, V)  # noqa: E731
            stats = torch.stack([ops.verify_chain_shard_stats(*stats_of(b, s)) for b, s in ranks])
            decide_of = lambda a, lo: (*a[:6], stats, a[6], a[7], lo, V)  # noqa: E731
            if phase == "stats":
                return _to(device, *stats_of(a, lo))
            if phase == "decide":
                return _to(device, *decide_of(a, lo))
            res = [ops.verify_chain_shard_decide(*decide_of(b, s)) for b, s in ranks]
            return _to(device, res[1][0], res[1][1], res[1][2], torch.stack([r[3] for r in res]))
        stats_of = lambda a, lo: (*a[:7], a[7], lo, V)  # noqa: E731
        stats = torch.stack([ops.verify_tree_shard_stats(*stats_of(b, s)) for b, s in ranks])
        fresh_of = lambda a, lo: (*a[:7], stats, None, None, None, None, a[7], a[8], lo, V)  # noqa: E731
        if phase == "stats":
            return _to(device, *stats_of(a, lo))
        if phase == "walk-fresh":
            return _to(device, *fresh_of(a, lo))
        res = [ops.verify_tree_shard_walk(*fresh_of(b, s)) for b, s in ranks]
        masses = torch.stack([r[3] for r in res])
        step = (*a[:7], stats, res[1][0], res[1][1], res[1][2], masses, a[7], a[8], lo, V)
        if phase == "walk-step":
            return _to(device, *step)
        walk = ops.verify_tree_shard_walk(*step)[0]
        return _to(device, *a[:7], stats, walk, a[7], lo, V)

    return build


# ----------------------------------------------------------------------------- schedule_lengths


def _schedule_lengths(mode: int, budget: int, with_caps: bool):
    def build(device, R, variant):
        g = _gen(variant, 6)
        gamma = 5
        confidence = torch.rand(R, gamma, generator=g)
        confidence[torch.rand(R, gamma, generator=g) < 0.2] = 1.0  # ties at saturation
        sps = 100.0 / (1.0 + torch.arange(R * (gamma + 1) + 2, dtype=torch.float32) * float(torch.rand(1, generator=g)))
        caps = torch.randint(0, gamma + 1, (R,), generator=g) if with_caps else None
        return _to(device, confidence, sps, mode, budget, caps)

    return build


# ----------------------------------------------------------------------------- block draft

_HQ, _HKV, _DH, _LMAX, _BLOCK = 4, 2, 64, 7, 3


def _block_attention(dtype: torch.dtype):
    def build(device, R, variant):
        g = _gen(variant, 7)

        def rnd(*shape):
            return torch.randn(*shape, generator=g).to(dtype)

        lens = torch.randint(0, _LMAX + 1, (R,), generator=g)
        return _to(device, rnd(R, _BLOCK, _HQ, _DH), rnd(R, _LMAX, _HKV, _DH), rnd(R, _LMAX, _HKV, _DH), lens,
                   rnd(R, _BLOCK, _HKV, _DH), rnd(R, _BLOCK, _HKV, _DH), _DH**-0.5)

    return build


def _rms_norm(device, R, variant):
    g = _gen(variant, 8)
    return _to(device, torch.randn(R, 3, 40, generator=g) * 3, torch.randn(40, generator=g), 1e-6)


_QK_DH = 16


def _rope_table(g) -> tuple:
    """A RoPE-scaling table (inv_freq [Dh/2] float32, some pairs unrotated) and its scaling."""
    inv_freq = torch.rand(_QK_DH // 2, generator=g) * 0.5
    inv_freq[-2:] = 0.0
    return inv_freq, 1.25


def _qk_norm_rope(device, R, variant, table=False):
    g = _gen(variant, 9)
    q = torch.randn(R, _BLOCK, _HQ, _QK_DH, generator=g)
    k = torch.randn(R, _BLOCK, _HKV, _QK_DH, generator=g)
    positions = torch.randint(0, 100_000, (R, _BLOCK), generator=g)
    rope = _rope_table(g) if table else ()
    return _to(device, q, k, torch.randn(_QK_DH, generator=g), torch.randn(_QK_DH, generator=g), positions, 1e-6, 1e6,
               *rope)


def _append_context_kv(device, R, variant, table=False):
    g = _gen(variant, 10)
    C = 3
    k_cache = torch.randn(R, _LMAX, _HKV, _QK_DH, generator=g)
    v_cache = torch.randn(R, _LMAX, _HKV, _QK_DH, generator=g)
    k_new = torch.randn(R, C, _HKV, _QK_DH, generator=g)
    v_new = torch.randn(R, C, _HKV, _QK_DH, generator=g)
    num_new = torch.randint(0, C + 1, (R,), generator=g)
    start = (torch.rand(R, generator=g) * (_LMAX - num_new + 1)).long()  # start + num_new <= Lmax
    rope = _rope_table(g) if table else ()
    return _to(device, k_cache, v_cache, k_new, v_new, torch.randn(_QK_DH, generator=g), start, num_new, 1e-6, 1e6,
               *rope)


# ----------------------------------------------------------------------------- the registry

_F32, _BF16 = torch.float32, torch.bfloat16

SAMPLES: list[Sample] = [
    Sample("random_bits", "default", _random_bits),
    Sample("markov_draft", "vanilla", _markov_draft("vanilla", "none", _F32), atol=1e-5, rtol=1e-5),
    Sample("markov_draft", "gated-conf_he-bf16", _markov_draft("gated", "he", _BF16), atol=1e-2, rtol=1e-2),
    Sample("markov_draft", "rnn-conf_h", _markov_draft("rnn", "h", _F32), atol=1e-5, rtol=1e-5),
    Sample("markov_draft", "gated-conf_h-bf16-filters", _markov_draft("gated", "h", _BF16, True), atol=1e-2,
           rtol=1e-2),
    Sample("markov_draft_topk", "vanilla", _markov_draft_topk("vanilla", "none", _F32, 9), atol=1e-5, rtol=1e-5),
    Sample("markov_draft_topk", "rnn-conf_he-bf16-filters", _markov_draft_topk("rnn", "he", _BF16, 6, True),
           atol=1e-2, rtol=1e-2),
    Sample("verify_chain", "one_hot_q", _verify_chain(False, _F32)),
    Sample("verify_chain", "draft_logits-eos-bf16", _verify_chain(True, _BF16)),
    Sample("verify_chain", "filters-draft_probs", _verify_chain_q("probs")),
    Sample("verify_chain", "filters-sparse_q", _verify_chain_q("sparse")),
    Sample("tree_metadata", "default", _tree_metadata),
    Sample("verify_tree", "top_k_children", _verify_tree(False)),
    Sample("verify_tree", "draft_logits-eos", _verify_tree(True)),
    Sample("verify_chain_shard_stats", "draft_logits", _shard_phase("chain", "stats", True)),
    Sample("verify_chain_shard_decide", "draft_logits-eos", _shard_phase("chain", "decide", True)),
    Sample("verify_chain_shard_decide", "one_hot_q", _shard_phase("chain", "decide", False)),
    Sample("verify_shard_finish", "chain", _shard_phase("chain", "finish", True)),
    Sample("verify_tree_shard_stats", "draft_logits", _shard_phase("tree", "stats", True)),
    Sample("verify_tree_shard_walk", "fresh", _shard_phase("tree", "walk-fresh", True)),
    Sample("verify_tree_shard_walk", "step", _shard_phase("tree", "walk-step", True)),
    Sample("verify_tree_shard_race", "draft_logits", _shard_phase("tree", "race", True)),
    Sample("verify_tree", "filters-draft_probs", _verify_tree(False, filtered_probs=True)),
    Sample("schedule_lengths", "causal", _schedule_lengths(0, -1, False)),
    Sample("schedule_lengths", "global-caps", _schedule_lengths(1, -1, True)),
    Sample("schedule_lengths", "top_k-caps", _schedule_lengths(2, 7, True)),
    Sample("block_attention", "f32", _block_attention(_F32), atol=2e-5, rtol=2e-5),
    Sample("block_attention", "bf16", _block_attention(_BF16), atol=2e-2, rtol=2e-2),
    Sample("rms_norm", "default", _rms_norm, atol=2e-5, rtol=2e-5),
    Sample("qk_norm_rope", "default", _qk_norm_rope, atol=2e-5, rtol=2e-5),
    Sample("append_context_kv", "default", _append_context_kv, mutates=(0, 1), atol=2e-5, rtol=2e-5),
    Sample("qk_norm_rope", "rope_table", functools.partial(_qk_norm_rope, table=True), atol=2e-5, rtol=2e-5),
    Sample("append_context_kv", "rope_table", functools.partial(_append_context_kv, table=True), mutates=(0, 1),
           atol=2e-5, rtol=2e-5),
]


def registered_ops() -> set[str]:
    return {s.op for s in SAMPLES}


def library_ops() -> set[str]:
    """Every op the loaded library defines in the ``dspark`` namespace."""
    return {name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("dspark::")}
