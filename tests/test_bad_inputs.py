"""Bad and extreme inputs for every op, table-driven.

Each op has one small valid call (``CASES``). From it the test derives, for every argument:
a wrong dtype, a wrong rank, a size of 0 or one more in every dimension, the argument alone on
another device (``meta``, or CPU beside CUDA), extreme values (±2^63, -1, NaN, ±inf, huge
floats; -1 and ±2^63 for int scalars, NaN, ±inf, -1 and 0 for float scalars), and for the
in-place op caches that alias each other or an input. Every call must either raise a
``RuntimeError`` whose message names an argument of the op (the mutated one, where the check
is per argument) or return what the pure-PyTorch reference returns; any other exception, a
crash or a wrong result fails. Structural mutations also run with every tensor on ``meta``,
so the fake kernels must reject what the real kernels reject, naming the same argument.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import pytest
import torch

import dspark_ops
from dspark_ops import reference as ref

from helpers import requires_cuda

INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
# Wrong dtypes tried per argument: no op takes float64 or int32 anywhere.
WRONG_DTYPES = {True: (torch.float64, torch.int64), False: (torch.int32, torch.float32)}  # by is_floating_point


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ref_random_bits(seed, offset, purpose, position, count):
    return ref.random_bits(seed[:, None], offset[:, None], purpose, position, torch.arange(count)[None, :])


@dataclass
class Case:
    """One op and a small valid call to it (arguments in schema order)."""

    op: str
    make: Callable[[], dict]
    reference: Callable
    mutated: tuple[str, ...] = ()  # arguments written in place (compared instead of the result)

    def call(self, args: dict):
        return getattr(torch.ops.dspark, self.op)(*args.values())


def _verify_chain_args():
    g = _gen(1)
    R, gamma, V = 3, 4, 11
    lengths = torch.tensor([4, 0, 2])
    return dict(
        target_logits=torch.randn(int(lengths.sum()) + R, V, generator=g),
        draft_tokens=torch.randint(0, V, (R, gamma), generator=g),
        lengths=lengths,
        temperature=torch.tensor([0.0, 0.7, 1.3]),
        seed=torch.tensor([1, 2, 3]),
        offset=torch.tensor([0, 5, 9]),
        draft_logits=torch.randn(R, gamma, V, generator=g),
        eos_ids=torch.tensor([3]),
    )


def _tree():
    parents = torch.tensor([[-1, 0, 0, 1], [-1, 0, 1, 9], [-1, 0, 0, 0]])
    return parents, torch.tensor([4, 3, 1])


def _verify_tree_args():
    g = _gen(2)
    parents, num_nodes = _tree()
    V, N = 9, int(num_nodes.sum())
    return dict(
        target_logits=torch.randn(N, V, generator=g),
        tree_tokens=torch.randint(0, V, parents.shape, generator=g),
        parents=parents,
        num_nodes=num_nodes,
        temperature=torch.tensor([0.0, 0.9, 1.0]),
        seed=torch.tensor([4, 5, 6]),
        offset=torch.tensor([1, 1, 2]),
        draft_logits=torch.randn(N, V, generator=g),
        eos_ids=torch.tensor([2, 7]),
    )


def _tree_metadata_args():
    parents, num_nodes = _tree()
    return dict(parents=parents, num_nodes=num_nodes, prefix_lens=torch.tensor([5, 0, 17]))


def _markov_draft_args():
    g = _gen(3)
    R, gamma, V, r, d = 2, 3, 13, 4, 5
    return dict(
        base_logits=torch.randn(R, gamma, V, generator=g),
        anchor=torch.tensor([0, 12]),
        w1=torch.randn(V, r, generator=g),
        w2=torch.randn(V, r, generator=g),
        temperature=torch.tensor([0.0, 1.0]),
        seed=torch.tensor([7, 8]),
        offset=torch.tensor([0, 3]),
        hidden=torch.randn(R, gamma, d, generator=g),
        gate_weight=torch.randn(r, d + r, generator=g),
        gate_bias=torch.randn(r, generator=g),
        rnn_weight=None,
        rnn_bias=None,
        conf_weight=torch.randn(d + r, generator=g),
        conf_bias=torch.randn(1, generator=g),
        conf_scale=torch.tensor([1.0, 0.9, 1.1]),
    )


def _markov_draft_topk_args():
    # Schema order: num_candidates follows offset.
    items = list(_markov_draft_args().items())
    at = [k for k, _ in items].index("offset") + 1
    return dict(items[:at] + [("num_candidates", 5)] + items[at:] + [("top_k", None), ("top_p", torch.tensor([1.0, 0.8]))])


def _schedule_lengths_args():
    g = _gen(4)
    R, gamma = 3, 4
    return dict(
        confidence=torch.rand(R, gamma, generator=g),
        sps=torch.linspace(100.0, 10.0, R * (gamma + 1) + 2),
        mode=2,
        budget=5,
        max_lengths=torch.tensor([4, 1, 3]),
    )


def _block_attention_args():
    g = _gen(5)
    R, gamma, hq, hkv, dh, lmax = 2, 3, 4, 2, 8, 5
    return dict(
        q=torch.randn(R, gamma, hq, dh, generator=g),
        k_cache=torch.randn(R, lmax, hkv, dh, generator=g),
        v_cache=torch.randn(R, lmax, hkv, dh, generator=g),
        cache_lens=torch.tensor([5, 2]),
        k_block=torch.randn(R, gamma, hkv, dh, generator=g),
        v_block=torch.randn(R, gamma, hkv, dh, generator=g),
        scale=dh**-0.5,
    )


def _rms_norm_args():
    g = _gen(6)
    return dict(x=torch.randn(3, 2, 8, generator=g), weight=torch.randn(8, generator=g), eps=1e-6)


def _qk_norm_rope_args():
    g = _gen(7)
    return dict(
        q=torch.randn(3, 4, 8, generator=g),
        k=torch.randn(3, 2, 8, generator=g),
        q_norm_weight=torch.randn(8, generator=g),
        k_norm_weight=torch.randn(8, generator=g),
        positions=torch.tensor([0, 7, 1000]),
        eps=1e-6,
        rope_theta=1e6,
    )


def _append_context_kv_args():
    g = _gen(8)
    R, lmax, hkv, dh, C = 2, 6, 2, 8, 3
    return dict(
        k_cache=torch.randn(R, lmax, hkv, dh, generator=g),
        v_cache=torch.randn(R, lmax, hkv, dh, generator=g),
        k_new=torch.randn(R, C, hkv, dh, generator=g),
        v_new=torch.randn(R, C, hkv, dh, generator=g),
        k_norm_weight=torch.randn(dh, generator=g),
        start=torch.tensor([1, 6]),
        num_new=torch.tensor([3, 0]),
        eps=1e-6,
        rope_theta=1e4,
    )


CASES = {
    "random_bits": Case(
        "random_bits", lambda: dict(seed=torch.tensor([1, -2]), offset=torch.tensor([0, 9]), purpose=3, position=5,
                                    count=6), _ref_random_bits),
    "markov_draft": Case("markov_draft", _markov_draft_args, ref.markov_draft),
    "markov_draft_topk": Case("markov_draft_topk", _markov_draft_topk_args, ref.markov_draft_topk),
    "verify_chain": Case("verify_chain", _verify_chain_args, ref.verify_chain),
    "tree_metadata": Case("tree_metadata", _tree_metadata_args, ref.tree_metadata),
    "verify_tree": Case("verify_tree", _verify_tree_args, ref.verify_tree),
    "schedule_lengths": Case("schedule_lengths", _schedule_lengths_args, ref.schedule_lengths),
    "block_attention": Case("block_attention", _block_attention_args, ref.block_attention),
    "rms_norm": Case("rms_norm", _rms_norm_args, ref.rms_norm),
    "qk_norm_rope": Case("qk_norm_rope", _qk_norm_rope_args, ref.qk_norm_rope),
    "append_context_kv": Case(
        "append_context_kv", _append_context_kv_args, ref.append_context_kv, mutated=("k_cache", "v_cache")
    ),
}


# The per-rank phase ops of dspark_ops.distributed are checked by their own tests
# (tests/test_distributed.py: named errors; tests/test_every_op.py: meta and device mixes).
SHARD_OPS = {
    "verify_chain_shard_stats", "verify_chain_shard_decide", "verify_tree_shard_stats", "verify_tree_shard_walk",
    "verify_tree_shard_race", "verify_shard_finish",
}


def test_every_op_has_a_case():
    ops = {n.removeprefix("dspark::") for n in torch._C._dispatch_get_all_op_names() if n.startswith("dspark::")}
    assert ops - SHARD_OPS == set(CASES)


# ------------------------------------------------------------------------------------ mutations


@dataclass
class Mutation:
    kind: str  # dtype, rank, size, value, alias
    arg: str
    what: str
    args: dict


def _resized(t: torch.Tensor, d: int, n: int) -> torch.Tensor:
    """t with size n in dimension d: cut, or padded by repeating its first slice (valid values)."""
    if n <= t.size(d):
        return t.narrow(d, 0, n).clone()
    if t.size(d) == 0:
        shape = list(t.shape)
        shape[d] = n
        return torch.zeros(shape, dtype=t.dtype)
    return torch.cat([t, t.narrow(d, 0, 1).expand_as(t.narrow(d, 0, n - t.size(d)))], d)


def _extremes(t: torch.Tensor) -> list:
    if t.dtype.is_floating_point:
        return [math.nan, math.inf, -math.inf, 3e38]
    return [-1, INT64_MAX, INT64_MIN]


def mutations(case: Case) -> Iterator[Mutation]:
    base = case.make()

    def with_(arg, value):
        args = case.make()
        args[arg] = value
        return args

    for arg, v in base.items():
        if isinstance(v, torch.Tensor):
            for dtype in WRONG_DTYPES[v.dtype.is_floating_point]:
                yield Mutation("dtype", arg, str(dtype), with_(arg, v.to(dtype)))
            yield Mutation("rank", arg, "unsqueeze(0)", with_(arg, v.unsqueeze(0)))
            if v.dim() >= 1:
                yield Mutation("rank", arg, "[0]", with_(arg, v[0].clone()))
            for d in range(v.dim()):
                for n in (0, v.size(d) + 1):
                    yield Mutation("size", arg, f"size({d}) = {n}", with_(arg, _resized(v, d, n)))
            for x in _extremes(v):
                yield Mutation("value", arg, f"all {x}", with_(arg, torch.full_like(v, x)))
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            for x in (-1, INT64_MAX, INT64_MIN):
                yield Mutation("value", arg, str(x), with_(arg, x))
        elif isinstance(v, float):
            for x in (math.nan, math.inf, -math.inf, -1.0, 0.0):
                yield Mutation("value", arg, str(x), with_(arg, x))
    if case.mutated:
        yield from _aliasing(case)


def _aliasing(case: Case) -> Iterator[Mutation]:
    """Caches of the in-place op that alias themselves, each other or an input (dense views,
    whose overlap torch's own in-place ops detect too)."""
    args = case.make()
    k, v, new = args["k_cache"], args["v_cache"], args["k_new"]
    yield Mutation("alias", "k_cache", "expand()ed requests", {**args, "k_cache": k[:1].expand_as(k)})
    yield Mutation("alias", "v_cache", "expand()ed slots", {**args, "v_cache": v[:, :1].expand_as(v)})
    yield Mutation("alias", "v_cache", "v_cache is k_cache", {**args, "v_cache": k})
    buf = torch.randn(k.numel() + k.size(-1))
    yield Mutation(
        "alias", "v_cache", "overlaps k_cache by one row",
        {**args, "k_cache": buf[: k.numel()].view(k.shape), "v_cache": buf[k.size(-1):].view(k.shape)},
    )
    for name, cache in (("k_new", "k_cache"), ("v_new", "v_cache")):
        buf = args[cache].clone()
        view = buf.view(-1)[: new.numel()].view(new.shape)
        yield Mutation("alias", name, f"{name} is a view of {cache}", {**args, cache: buf, name: view})
    yield Mutation("alias", "k_norm_weight", "a row of k_cache", {**args, "k_norm_weight": k[0, 0, 0]})


ALL = [(name, m) for name, case in CASES.items() for m in mutations(case)]


def _blamed(err: RuntimeError, op: str) -> str:
    m = re.match(rf"dspark::{op}: argument '(\w+)'", str(err))
    assert m, f"error does not name an argument of dspark::{op}: {err}"
    return m.group(1)


def _meta(args: dict, only: Optional[str] = None) -> dict:
    """Every tensor (or only ``only``) moved to the meta device."""
    return {
        a: v.to("meta") if isinstance(v, torch.Tensor) and only in (None, a) else v for a, v in args.items()
    }


def _first_tensor(args: dict) -> str:
    return next(a for a, v in args.items() if isinstance(v, torch.Tensor))


def _flat(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _assert_matches_reference(case: Case, args: dict, out) -> None:
    ref_args = {a: v.clone() if isinstance(v, torch.Tensor) else v for a, v in args.items()}
    expected = case.reference(*ref_args.values())
    if case.mutated:
        out, expected = [args[a] for a in case.mutated], [ref_args[a] for a in case.mutated]
    for got, want in zip(_flat(out), _flat(expected)):
        want = torch.as_tensor(want, device=got.device)
        assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)


def _reference_applies(case: Case, m: Mutation) -> bool:
    # NaN / infinite temperatures: the agreement of references and kernels there is another
    # change's (the greedy threshold); here they must only not crash or misreport.
    if m.arg == "temperature" and m.kind == "value" and not math.isfinite(float(m.what.split()[-1])):
        return False
    # Markov weights of 3e38 overflow the head's dot products: whether a sum of ±inf terms ends
    # +inf, -inf or NaN depends on the summation order, which the pruned op's reference (one
    # matmul over the gathered rows) does not replicate; the kernel must only not misbehave.
    return not (case.op == "markov_draft_topk" and m.arg in ("w1", "w2") and m.kind == "value")


@pytest.mark.parametrize("name,m", ALL, ids=[f"{n}-{m.arg}-{m.kind}-{m.what}" for n, m in ALL])
def test_bad_input(name, m):
    case = CASES[name]
    try:
        out = case.call(m.args)
        assert m.kind != "alias", "aliased caches were accepted"
    except RuntimeError as err:
        blamed = _blamed(err, case.op)
        if m.kind in ("dtype", "alias"):
            assert blamed == m.arg or m.arg == _first_tensor(m.args), f"blamed {blamed!r} for {m.what} of {m.arg!r}"
        cpu_blamed, out = blamed, None
    else:
        cpu_blamed = None
        if _reference_applies(case, m):
            _assert_matches_reference(case, m.args, out)
    if m.kind in ("dtype", "rank", "size"):
        _assert_meta_agrees(case, m, cpu_blamed, out)


def _assert_meta_agrees(case: Case, m: Mutation, cpu_blamed: Optional[str], cpu_out) -> None:
    """The fake kernel rejects a structural mutation exactly when the real one does (size
    mutations may also fail a value check on CPU that meta cannot see), and otherwise gives
    outputs of the real kernel's shapes and dtypes."""
    try:
        out = case.call(_meta(m.args))
    except RuntimeError as err:
        assert cpu_blamed is not None, f"meta rejected what the CPU kernel accepts: {err}"
        assert _blamed(err, case.op) == cpu_blamed, f"meta: {err}"
        return
    assert cpu_blamed is None or m.kind == "size", f"meta accepted what the CPU kernel rejects ({cpu_blamed!r})"
    if cpu_out is not None:
        for got, want in zip(_flat(out), _flat(cpu_out)):
            assert (got.shape, got.dtype) == (want.shape, want.dtype)


@pytest.mark.parametrize("name", CASES)
def test_one_argument_on_meta(name):
    """A mixed cpu/meta call runs the fake kernel: it must raise, naming the argument that is
    off the others' device (or, when the odd one out is the first tensor, any argument)."""
    case = CASES[name]
    args = case.make()
    for arg, v in args.items():
        if not isinstance(v, torch.Tensor):
            continue
        with pytest.raises(RuntimeError, match=r"argument '\w+' must be on") as info:
            case.call(_meta(args, only=arg))
        blamed = _blamed(info.value, case.op)
        assert blamed == arg or arg == _first_tensor(args), f"{arg} on meta blamed {blamed}"


@requires_cuda
@pytest.mark.parametrize("name", CASES)
def test_one_argument_on_cpu_beside_cuda(name):
    case = CASES[name]
    args = {a: v.cuda() if isinstance(v, torch.Tensor) else v for a, v in case.make().items()}
    for arg, v in args.items():
        if not isinstance(v, torch.Tensor):
            continue
        with pytest.raises(RuntimeError, match=r"argument '\w+' must be on") as info:
            case.call({**args, arg: v.cpu()})
        blamed = _blamed(info.value, case.op)
        assert blamed == arg or arg == _first_tensor(args), f"{arg} on CPU blamed {blamed}"


@requires_cuda
@pytest.mark.parametrize("name,m", [(n, m) for n, m in ALL if m.kind != "value"],
                         ids=[f"{n}-{m.arg}-{m.kind}-{m.what}" for n, m in ALL if m.kind != "value"])
def test_bad_input_cuda_names_the_same_argument(name, m):
    """The CUDA bindings share the CPU's checks: same verdict, same argument named."""
    case = CASES[name]
    cuda_args = {a: v.cuda() if isinstance(v, torch.Tensor) else v for a, v in m.args.items()}
    try:
        case.call(m.args)
        cpu_blamed = None
    except RuntimeError as err:
        cpu_blamed = _blamed(err, case.op)
    try:
        case.call(cuda_args)
    except RuntimeError as err:
        assert _blamed(err, case.op) == cpu_blamed
    else:
        assert cpu_blamed is None or m.kind == "size", f"CUDA accepted what the CPU rejects ({cpu_blamed!r})"


# ------------------------------------------------------------------------------------ named regressions


def test_random_bits_0d_seed_names_seed():
    for seed in (torch.tensor(1), torch.tensor(1, device="meta")):
        with pytest.raises(RuntimeError, match="argument 'seed'"):
            dspark_ops.random_bits(seed, seed, 1, 0, 4)


def test_random_bits_negative_count_names_count():
    for device in ("cpu", "meta"):
        s = torch.zeros(2, dtype=torch.int64, device=device)
        with pytest.raises(RuntimeError, match="argument 'count'"):
            dspark_ops.random_bits(s, s, 1, 0, -1)


def test_block_attention_no_kv_heads_names_q():
    args = _block_attention_args()
    args["k_cache"], args["v_cache"] = args["k_cache"][:, :, :0], args["v_cache"][:, :, :0]
    args["k_block"], args["v_block"] = args["k_block"][:, :, :0], args["v_block"][:, :, :0]
    for a in (args, _meta(args)):
        with pytest.raises(RuntimeError, match="argument 'q'.*Hkv"):
            torch.ops.dspark.block_attention(*a.values())


def test_verify_tree_parents_with_an_extra_row_names_parents():
    args = _verify_tree_args()
    args["parents"] = torch.cat([args["parents"], args["parents"][:1]])
    for a in (args, _meta(args)):
        with pytest.raises(RuntimeError, match="argument 'parents'"):
            torch.ops.dspark.verify_tree(*a.values())


def test_tree_metadata_prefix_near_int64_max_names_prefix_lens():
    args = _tree_metadata_args()
    args["prefix_lens"] = torch.tensor([0, INT64_MAX - 2, 0])
    with pytest.raises(RuntimeError, match="argument 'prefix_lens'"):
        dspark_ops.tree_metadata(*args.values())
    # The largest accepted prefix still gives exact positions.
    args["prefix_lens"] = torch.tensor([0, INT64_MAX - args["parents"].size(1), 0])
    _, positions, depth = dspark_ops.tree_metadata(*args.values())
    assert positions[1, 2] == INT64_MAX - args["parents"].size(1) + depth[1, 2]


def test_append_context_kv_start_near_int64_max_raises():
    """start + num_new used to overflow in the range check itself, pass, and write nothing."""
    args = _append_context_kv_args()
    args["start"] = torch.tensor([INT64_MAX - 1, 0])
    before = args["k_cache"].clone()
    with pytest.raises(RuntimeError, match="argument 'start'"):
        dspark_ops.append_context_kv(*args.values())
    assert torch.equal(args["k_cache"], before)


def test_block_attention_ignores_nan_past_cache_lens_like_the_reference():
    args = _block_attention_args()
    lens = args["cache_lens"]
    for cache in (args["k_cache"], args["v_cache"]):
        for r in range(cache.size(0)):
            cache[r, lens[r]:] = math.nan
    out = dspark_ops.block_attention(*args.values())
    assert out.isfinite().all()
    torch.testing.assert_close(out, ref.block_attention(*args.values()), rtol=1e-5, atol=1e-5)
