"""Tests of dspark::markov_draft (SPEC §3): kernels vs the pure-PyTorch reference, sampling
statistics, batch invariance, argument checks (the generic checks: test_every_op.py)."""

from __future__ import annotations

import pytest
import torch

import dspark_ops
from dspark_ops import reference
from dspark_ops.ops.greedy import is_greedy

from helpers import requires_cuda
from stats import assert_distribution

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def make_inputs(R=5, G=4, V=1001, r=16, d=12, dtype=torch.float32, device="cpu", head="vanilla", conf="none",
                seed=0, temperature=None):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(device)

    args = dict(
        base_logits=rnd(R, G, V, scale=2.0),
        anchor=torch.randint(0, V, (R,), generator=g).to(device),
        w1=rnd(V, r),
        w2=rnd(V, r, scale=0.3),
        temperature=(temperature if temperature is not None else
                     torch.tensor([0.0, 1.0, 0.7, 2.0, 0.0, 1.3, 0.5, 0.0][:R] * (R // 8 + 1))[:R]).to(device),
        seed=(torch.arange(R) * 7919 + 11).to(device),
        offset=(torch.arange(R) * 3 + 5).to(device),
    )
    if head != "vanilla" or conf != "none":
        args["hidden"] = rnd(R, G, d)
    if head == "gated":
        args["gate_weight"], args["gate_bias"] = rnd(r, d + r, scale=0.2), rnd(r)
    elif head == "rnn":
        args["rnn_weight"], args["rnn_bias"] = rnd(3 * r, 2 * r + d, scale=0.2), rnd(3 * r)
    if conf != "none":
        args["conf_weight"] = rnd(d if conf == "h" else d + r, scale=0.3)
        args["conf_bias"] = rnd(1)
        args["conf_scale"] = (torch.rand(G, generator=g) + 0.5).to(device)
    return args


def to_device(args, device):
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in args.items()}


def logprob_from_logits(logits, tokens, temperature):
    """log softmax(draft_logits / T)[token], 0 for greedy rows: what token_logprob must be."""
    sampled = ~is_greedy(temperature)
    T = torch.where(sampled, temperature, torch.ones_like(temperature))
    lp = torch.log_softmax(logits.float() / T[:, None, None], -1).gather(-1, tokens[..., None])[..., 0]
    return torch.where(sampled[:, None], lp, torch.zeros_like(lp))


def check_against_reference(out, ref, dtype, temperature):
    tokens, logits, logprob, conf = out
    rt, rl, rlp, rc = ref
    assert torch.equal(tokens.cpu(), rt.cpu())
    assert logits.dtype == dtype and logits.shape == rl.shape
    # One unit of the storage dtype: the float32 sums differ in order, rounding may flip.
    torch.testing.assert_close(logits.float().cpu(), rl.float().cpu(), atol=TOL[dtype] * 4, rtol=TOL[dtype])
    # token_logprob is exactly consistent with the op's own rounded logits ...
    own = logprob_from_logits(logits.cpu(), tokens.cpu(), temperature.cpu())
    torch.testing.assert_close(logprob.cpu(), own, atol=2e-5, rtol=1e-5)
    # ... and close to the reference's (a logit rounded one unit apart moves it a little).
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(logprob.cpu(), rlp.cpu(), atol=tol, rtol=tol)
    torch.testing.assert_close(conf.cpu(), rc.cpu(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head,conf", [("vanilla", "none"), ("vanilla", "h"), ("gated", "he"), ("rnn", "h"),
                                       ("rnn", "he"), ("gated", "none")])
def test_matches_reference(device, dtype, head, conf):
    # Mixed greedy (T = 0) and sampled requests; odd V, awkward r and d.
    args = make_inputs(dtype=dtype, device=device, head=head, conf=conf, seed=hash((head, conf)) % 1000)
    out = dspark_ops.markov_draft(**args)
    ref = reference.markov_draft(**to_device(args, "cpu"))
    check_against_reference(out, ref, dtype, args["temperature"])
    if conf == "none":
        assert torch.equal(out[3].cpu(), torch.ones(5, 4))


def test_greedy_is_argmax_of_returned_logits(device):
    args = make_inputs(R=6, V=777, device=device, head="rnn", conf="he", temperature=torch.zeros(6))
    tokens, logits, logprob, _ = dspark_ops.markov_draft(**args)
    assert torch.equal(tokens, logits.float().argmax(-1))
    assert torch.equal(logprob, torch.zeros_like(logprob))


def test_greedy_ties_take_lowest_index():
    V, r = 64, 8
    args = make_inputs(R=2, G=2, V=V, r=r, temperature=torch.zeros(2))
    args["base_logits"] = torch.zeros(2, 2, V)
    args["w2"] = torch.zeros(V, r)
    args["base_logits"][:, :, [7, 9, 40]] = 3.0
    tokens, *_ = dspark_ops.markov_draft(**args)
    assert tokens.tolist() == [[7, 7], [7, 7]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprob_consistent_with_draft_logits(device, dtype):
    args = make_inputs(R=8, G=5, V=513, dtype=dtype, device=device, head="gated", conf="h")
    tokens, logits, logprob, _ = dspark_ops.markov_draft(**args)
    expect = logprob_from_logits(logits, tokens, args["temperature"])
    torch.testing.assert_close(logprob, expect, atol=2e-5, rtol=1e-5)
    assert (logprob[~is_greedy(args["temperature"])] < 0).all()


def sample_many(n, device, dtype=torch.float32, T=0.8, V=12):
    """n requests with identical inputs except their seed: n independent draws of the block."""
    base = make_inputs(R=1, G=2, V=V, r=8, dtype=dtype, device=device, seed=3)
    args = dict(base)
    args["base_logits"] = base["base_logits"].expand(n, -1, -1)  # a non-contiguous view
    args["anchor"] = base["anchor"].expand(n)
    args["temperature"] = torch.full((n,), T, device=device)
    args["seed"] = torch.arange(n, device=device) * 2654435761 + 17
    args["offset"] = torch.full((n,), 123, device=device)
    return args, dspark_ops.markov_draft(**args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampling_distribution(device, dtype):
    n, T, V = 30000, 0.8, 12
    args, (tokens, logits, logprob, _) = sample_many(n, device, dtype, T, V)
    tokens, logits = tokens.cpu(), logits.float().cpu()
    # x_1 ~ softmax(round(L_1) / T): every row's L_1 is the same.
    assert torch.equal(logits[:, 0], logits[:1, 0].expand(n, -1))
    p1 = torch.softmax(logits[0, 0] / T, -1)
    assert_distribution(torch.bincount(tokens[:, 0], minlength=V), p1, "x_1")
    # x_2 | x_1 ~ softmax(round(L_2(x_1)) / T) for every x_1 seen often enough: the groups'
    # counts side by side in one test (each group's total is fixed by x_1: ddof = groups - 1).
    counts, probs = [], []
    for x1 in range(V):
        rows = tokens[:, 0] == x1
        m = int(rows.sum())
        if m < 2000:
            continue
        l2 = logits[rows, 1]
        assert torch.equal(l2, l2[:1].expand(m, -1))  # L_2 depends on x_1 only
        counts.append(torch.bincount(tokens[rows, 1], minlength=V))
        probs.append(torch.softmax(l2[0] / T, -1) * m)
    groups = len(counts)
    assert_distribution(torch.cat(counts), torch.cat(probs), "x_2 given x_1", ddof=groups - 1)
    assert groups >= 2
    # The Markov bias really changes x_2's distribution with x_1.
    assert not torch.allclose(logits[tokens[:, 0] == tokens[0, 0], 1][0], logits[tokens[:, 0] != tokens[0, 0], 1][0])


@pytest.mark.parametrize("r,d", [(32, 24), (20, 7)])
def test_batch_invariance(device, r, d):
    # R = 7: rows 0-3 go through the CPU's four-row product, rows 4-6 through the one-row
    # product, and alone every row takes the one-row path; r = 20 exercises the tail lanes.
    args = make_inputs(R=7, G=3, V=2003, r=r, d=d, device=device, head="rnn", conf="he", seed=5)
    full = dspark_ops.markov_draft(**args)
    per_request = ["base_logits", "anchor", "temperature", "seed", "offset", "hidden"]
    for i in [0, 3, 6]:
        one = dict(args)
        for k in per_request:
            one[k] = args[k][i:i + 1]
        single = dspark_ops.markov_draft(**one)
        for a, b in zip(single, full):
            assert torch.equal(a, b[i:i + 1])
    perm = torch.tensor([4, 2, 6, 0, 1, 5, 3], device=device)
    permuted = dict(args)
    for k in per_request:
        permuted[k] = args[k][perm]
    for a, b in zip(dspark_ops.markov_draft(**permuted), full):
        assert torch.equal(a, b[perm])
    # Deterministic: same inputs, same outputs.
    for a, b in zip(dspark_ops.markov_draft(**args), full):
        assert torch.equal(a, b)


def test_rank_one_zero_head_passes_base_logits_through(device):
    # A drafter without a Markov head (DFlash) passes rank-1 zero weights: L_k = U_k.
    args = make_inputs(R=4, G=3, V=333, r=1, dtype=torch.bfloat16, device=device, conf="h")
    args["w1"] = torch.zeros_like(args["w1"])
    args["w2"] = torch.zeros_like(args["w2"])
    tokens, logits, logprob, _ = dspark_ops.markov_draft(**args)
    assert torch.equal(logits, args["base_logits"])
    check_against_reference((tokens, logits, logprob, _), reference.markov_draft(**to_device(args, "cpu")),
                            torch.bfloat16, args["temperature"])


def test_conf_scale_without_confidence_head_is_ignored():
    args = make_inputs(R=3, G=3, V=101, r=8, d=6, head="gated", seed=3)
    expect = dspark_ops.markov_draft(**args)
    got = dspark_ops.markov_draft(**args, conf_scale=torch.full((3,), 0.5))
    for a, b in zip(got, expect):
        assert torch.equal(a, b)
    assert torch.equal(got[3], torch.ones(3, 3))


def test_offset_changes_the_draw():
    args = make_inputs(R=4, temperature=torch.ones(4), V=4001)
    a = dspark_ops.markov_draft(**args)[0]
    args["offset"] = args["offset"] + 1
    b = dspark_ops.markov_draft(**args)[0]
    assert not torch.equal(a, b)


def test_confidence_uses_previous_token():
    # c_1 depends on x_0 = anchor (and h_1) only: recomputed by hand here.
    args = make_inputs(R=3, G=3, V=101, r=8, d=6, head="vanilla", conf="he", seed=9)
    tokens, _, _, conf = dspark_ops.markov_draft(**args)
    h, w1 = args["hidden"], args["w1"]
    prev = torch.cat([args["anchor"][:, None], tokens[:, :-1]], 1)
    f = torch.cat([h, w1[prev]], -1)
    expect = torch.sigmoid(args["conf_scale"] * (f @ args["conf_weight"] + args["conf_bias"]))
    torch.testing.assert_close(conf, expect, atol=1e-6, rtol=1e-5)


def test_empty_block(device):
    args = make_inputs(R=3, G=0, V=50, device=device)
    tokens, logits, logprob, conf = dspark_ops.markov_draft(**args)
    assert tokens.shape == (3, 0) and logits.shape == (3, 0, 50)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head,conf,R,d", [("vanilla", "he", 16, 48), ("gated", "h", 40, 48), ("rnn", "he", 16, 48),
                                           ("vanilla", "none", 70, 48), ("gated", "he", 1, 512),
                                           ("rnn", "h", 3, 512)])
def test_cpu_cuda_agree(dtype, head, conf, R, d):
    # R = 40 and 70: several 32-request chunks per w2 tile in the CUDA logits phase. d = 512:
    # the head's row loop issues its loads in batches (d = 48 takes only the remainder loop).
    args = make_inputs(R=R, G=7, V=32003, r=64, d=d, dtype=dtype, head=head, conf=conf, seed=4)
    cpu = dspark_ops.markov_draft(**args)
    gpu = dspark_ops.markov_draft(**to_device(args, "cuda"))
    # Same random numbers; only a float near-tie could flip a token (none with these inputs).
    check_against_reference(gpu, cpu, dtype, args["temperature"])


@requires_cuda
@pytest.mark.parametrize("head,V,dtype", [("vanilla", 151936, torch.bfloat16), ("gated", 50257, torch.float16),
                                          ("rnn", 32003, torch.float32)])
def test_cuda_batch_invariance_every_output_bitwise(head, V, dtype):
    # R = 9 and R = 1 take different sub-tile counts, grids and (V = 32003) resident-w2 plans;
    # with many tiles per block the reduction of the softmax statistics must still have one
    # shape (per 32-row tile, then in tile order), so token_logprob matches to the bit too.
    args = to_device(make_inputs(R=9, G=3, V=V, r=64, d=40, dtype=dtype, head=head, conf="he", seed=12), "cuda")
    args["temperature"] = torch.tensor([1.0, 0.0, 0.7, 1.3, 0.0, 1.0, 2.0, 0.9, 0.5], device="cuda")
    full = dspark_ops.markov_draft(**args)
    per_request = ["base_logits", "anchor", "temperature", "seed", "offset", "hidden"]
    for i in [0, 1, 5, 8]:
        one = {k: (v[i:i + 1] if k in per_request else v) for k, v in args.items()}
        for a, b in zip(dspark_ops.markov_draft(**one), full):
            assert torch.equal(a, b[i:i + 1])


@requires_cuda
def test_cuda_large_matches_reference():
    args = to_device(make_inputs(R=64, G=7, V=151936, r=256, d=64, dtype=torch.bfloat16, conf="he", seed=1), "cuda")
    expect = dspark_ops.markov_draft(**args)
    check_against_reference(expect, reference.markov_draft(**args), torch.bfloat16, args["temperature"])


_STREAMING_SCRIPT = """
import sys, torch, dspark_ops
sys.path.insert(0, {tests!r})
from test_markov_draft import make_inputs, to_device
args = to_device(make_inputs(R=20, G=5, V=32003, r=256, d=32, dtype=torch.bfloat16, head="gated", conf="he",
                             seed=8), "cuda")
torch.save([t.cpu() for t in dspark_ops.markov_draft(**args)], {out!r})
"""


@requires_cuda
@pytest.mark.parametrize("resident", ["1", "0"])
def test_cuda_resident_and_streaming_w2_agree(tmp_path, resident):
    # V = 32003, r = 256 in bf16 fits the resident-w2 kernel on an A100/H100;
    # DSPARK_MARKOV_RESIDENT=0 forces the streaming kernel (the choice is made once per process).
    import os
    import subprocess
    import sys

    out = tmp_path / "out.pt"
    env = dict(os.environ, DSPARK_MARKOV_RESIDENT=resident)
    script = _STREAMING_SCRIPT.format(tests=os.path.dirname(__file__), out=str(out))
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    got = torch.load(out)
    args = make_inputs(R=20, G=5, V=32003, r=256, d=32, dtype=torch.bfloat16, head="gated", conf="he", seed=8)
    check_against_reference(got, dspark_ops.markov_draft(**args), torch.bfloat16, args["temperature"])


_KERNEL_SCRIPT = """
import sys, torch, dspark_ops
sys.path.insert(0, {tests!r})
from test_markov_draft import make_inputs, to_device
outs = []
for case in {cases!r}:
    head, conf, R, V, r, d, dtype = case
    args = to_device(make_inputs(R=R, G=4, V=V, r=r, d=d, dtype=getattr(torch, dtype), head=head, conf=conf,
                                 seed=5), "cuda")
    outs.append([t.cpu() for t in dspark_ops.markov_draft(**args)])
    f = dict(top_k=torch.full((R,), 20, device="cuda"), top_p=torch.full((R,), 0.9, device="cuda"))
    outs.append([t.cpu() for t in dspark_ops.markov_draft(**args, **f)])
torch.save(outs, {out!r})
"""

# (head, conf, R, V, r, d, dtype): R <= 4 (sub-tiles), 9 (a padded n8 block of the tensor-core
# product), 40 and 70 (several 32-request chunks, the last one partial); r = 16 (one k-step)
# to 256; both 16-bit dtypes. Gated / RNN heads at R = 1 and 3 with d = 512: the default and fma
# kernels spread the head over the grid (one warp per row and request), the legacy kernel runs it
# in one block per request; r = 40 (rows and [s ; e] not a multiple of 32 lanes; not a multiple
# of 16 either, so the default kernel runs the fma product), with and without a confidence head.
_KERNEL_CASES = [("vanilla", "none", 3, 151936, 256, 32, "bfloat16"), ("gated", "he", 40, 32003, 64, 32, "bfloat16"),
                 ("rnn", "h", 70, 20011, 64, 32, "bfloat16"), ("gated", "h", 9, 5003, 16, 32, "float16"),
                 ("vanilla", "he", 1, 32003, 256, 32, "float16"), ("rnn", "he", 17, 4099, 32, 32, "bfloat16"),
                 ("gated", "he", 40, 20011, 256, 64, "bfloat16")]  # 4 gated rows per warp (R r / 4 >= warps)
for _head in ["gated", "rnn"]:
    _KERNEL_CASES += [(_head, "none", 1, 20011, 40, 512, "bfloat16"), (_head, "he", 1, 20011, 64, 512, "bfloat16"),
                      (_head, "h", 3, 20011, 64, 512, "bfloat16"), (_head, "none", 3, 20011, 40, 512, "bfloat16")]


def run_markov_kernel(tmp_path, kernel):
    """Every _KERNEL_CASES call, without and with filters, in a process with
    DSPARK_MARKOV_DRAFT_KERNEL=kernel (read once per process)."""
    import os
    import subprocess
    import sys

    out = tmp_path / f"{kernel}.pt"
    env = dict(os.environ, DSPARK_MARKOV_DRAFT_KERNEL=kernel)
    script = _KERNEL_SCRIPT.format(tests=os.path.dirname(__file__), cases=_KERNEL_CASES, out=str(out))
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    return torch.load(out)


@pytest.fixture(scope="module")
def markov_kernel_runs(tmp_path_factory):
    """run(kernel): run_markov_kernel's outputs, computed once per kernel for the module (each
    run is a child process that compiles and launches every case)."""
    cache = {}

    def run(kernel):
        if kernel not in cache:
            cache[kernel] = run_markov_kernel(tmp_path_factory.mktemp(kernel), kernel)
        return cache[kernel]

    return run


@requires_cuda
def test_cuda_fma_kernel_and_legacy_kernel_agree_bitwise(markov_kernel_runs):
    # "fma" (cp.async sub-tiles, one Philox call per four ids, the gated / RNN head spread over
    # the grid) and "legacy" (one Philox call per element, the head in one block per request):
    # same numbers, same bits, with and without filters.
    for new, old in zip(markov_kernel_runs("fma"), markov_kernel_runs("legacy")):
        for a, b in zip(new, old):
            assert torch.equal(a, b)


@requires_cuda
def test_cuda_tensor_core_kernel_matches_fma_kernel(markov_kernel_runs):
    # The default kernel's tensor-core product sums 16 products at a time and splits P into two
    # 16-bit halves: a logit may round one unit apart. Without filters that is all
    # (check_against_reference; the same tokens: no near-ties in these inputs). With filters a
    # logit one unit apart can also move a kept set's boundary (about 0.2% of filtered rows, by
    # simulation), so there: finite logits within one unit, each kernel's log q that of its own
    # logits, boundaries moved in at most 2% of rows and tokens equal in at least 97% of
    # positions (a moved boundary changes a token only if its entry wins; the bounds hold with a
    # wide margin over those rates).
    got, ref = markov_kernel_runs("default"), markov_kernel_runs("fma")
    cases = [(c, filtered) for c in _KERNEL_CASES for filtered in (False, True)]
    assert len(got) == len(ref) == len(cases)
    moved = rows = same_tokens = tokens = 0
    for ((head, conf, R, V, r, d, dtype), filtered), new, old in zip(cases, got, ref):
        dt = getattr(torch, dtype)
        temperature = make_inputs(R=R, G=4, V=V, r=r, d=d, dtype=dt, head=head, conf=conf, seed=5)["temperature"]
        if not filtered:
            check_against_reference(new, old, dt, temperature)
            continue
        a, b = new[1].float(), old[1].float()
        both = ~torch.isinf(a) & ~torch.isinf(b)
        torch.testing.assert_close(a[both], b[both], atol=TOL[dt] * 4, rtol=TOL[dt])
        for out in (new, old):
            own = logprob_from_logits(out[1], out[0], temperature)
            torch.testing.assert_close(out[2], own, atol=2e-5, rtol=1e-5)
        assert torch.equal(new[3], old[3])  # confidence: the same head arithmetic
        row_moved = (torch.isinf(a) != torch.isinf(b)).any(-1)
        moved, rows = moved + int(row_moved.sum()), rows + row_moved.numel()
        same_tokens, tokens = same_tokens + int((new[0] == old[0]).sum()), tokens + new[0].numel()
    assert moved <= 0.02 * rows
    assert same_tokens >= 0.97 * tokens


@requires_cuda
def test_cuda_unknown_kernel_name_is_an_error():
    # A typo in DSPARK_MARKOV_DRAFT_KERNEL must not silently run the default kernel (the CUDA
    # binding reads it; the CPU has one kernel).
    import os
    import subprocess
    import sys

    script = ("import sys, torch, dspark_ops; sys.path.insert(0, %r)\n"
              "from test_markov_draft import make_inputs, to_device\n"
              "dspark_ops.markov_draft(**to_device(make_inputs(dtype=torch.bfloat16), 'cuda'))") % os.path.dirname(__file__)
    env = dict(os.environ, DSPARK_MARKOV_DRAFT_KERNEL="tensorcore")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert res.returncode != 0 and "DSPARK_MARKOV_DRAFT_KERNEL" in res.stderr


@requires_cuda
@pytest.mark.parametrize("head,conf,R", [("gated", "he", 1), ("rnn", "h", 3), ("rnn", "none", 1)])
def test_cuda_graph_replay_matches_eager(head, conf, R):
    # The gated / RNN head adds a grid barrier to the cooperative launch and, for the RNN head, a
    # double-buffered state zeroed by a memset that the graph captures: every replay (the
    # second starts from the state the first left) gives the eager call's bits.
    args = to_device(make_inputs(R=R, G=5, V=20011, r=64, d=512, dtype=torch.bfloat16, head=head, conf=conf,
                                 seed=6), "cuda")
    eager = dspark_ops.markov_draft(**args)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = dspark_ops.markov_draft(**args)
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        for a, b in zip(captured, eager):
            assert torch.equal(a, b)


def test_anchor_out_of_range(device):
    args = make_inputs(R=3, V=100, device=device)
    args["anchor"] = torch.tensor([1, 100, 2], device=device)
    if device == "cpu":
        with pytest.raises(RuntimeError, match="anchor"):
            dspark_ops.markov_draft(**args)
    else:  # no host sync on CUDA: clamped, never read out of bounds
        tokens = dspark_ops.markov_draft(**args)[0]
        torch.cuda.synchronize()
        assert ((tokens >= 0) & (tokens < 100)).all()


def bad_cases():
    base = make_inputs(R=3, G=2, V=40, r=8, d=6, head="gated", conf="he")
    rnn = make_inputs(R=3, G=2, V=40, r=8, d=6, head="rnn")
    cases = []

    def case(name, match, **changes):
        a = dict(base)
        a.update(changes)
        cases.append(pytest.param(a, match, id=name))

    case("both-heads", "rnn_weight", rnn_weight=rnn["rnn_weight"], rnn_bias=rnn["rnn_bias"])
    case("logits-rank", "base_logits", base_logits=base["base_logits"][0])
    case("logits-int", "base_logits", base_logits=base["base_logits"].long())
    case("w1-dtype", "w1", w1=base["w1"].bfloat16())
    case("w2-shape", "w2", w2=base["w2"][:, :4])
    case("w2-vocab", "w2", w2=base["w2"][:30])
    case("hidden-dtype", "hidden", hidden=base["hidden"].half())
    case("hidden-missing", "hidden", hidden=None)
    case("gate-shape", "gate_weight", gate_weight=base["gate_weight"][:, :10])
    case("gate-bias-missing", "gate_bias", gate_bias=None)
    case("conf-size", "conf_weight", conf_weight=base["conf_weight"][:5])
    case("conf-bias-shape", "conf_bias", conf_bias=torch.zeros(2))
    case("conf-scale-shape", "conf_scale", conf_scale=torch.ones(3))
    case("conf-scale-dtype", "conf_scale", conf_scale=torch.ones(2, dtype=torch.float64))
    case("conf-scale-alone-shape", "conf_scale", conf_weight=None, conf_bias=None, conf_scale=torch.ones(5))
    case("temperature-dtype", "temperature", temperature=base["temperature"].double())
    case("temperature-size", "temperature", temperature=torch.ones(4))
    case("anchor-dtype", "anchor", anchor=base["anchor"].int())
    case("seed-size", "seed", seed=torch.zeros(2, dtype=torch.long))
    case("offset-dtype", "offset", offset=torch.zeros(3))
    case("anchor-range", "anchor", anchor=torch.tensor([0, -1, 3]))
    a = dict(rnn)
    a["rnn_weight"] = rnn["rnn_weight"][:, :-1]
    cases.append(pytest.param(a, "rnn_weight", id="rnn-shape"))
    return cases


@pytest.mark.parametrize("args,match", bad_cases())
def test_bad_inputs(args, match):
    with pytest.raises(RuntimeError, match=match):
        dspark_ops.markov_draft(**args)

