"""Tests of the block-draft ops (SPEC §7): block_attention and the fused helpers rms_norm,
qk_norm_rope and append_context_kv. Kernels vs the pure-PyTorch references (random shapes,
GQA, ragged context lengths including 0), masking, strided caches, bad inputs, and CPU/CUDA
agreement at real sizes when a GPU is present. opcheck, torch.compile, CUDA graphs, strides and
R = 0 for every op: test_every_op.py."""

import pytest
import torch

import dspark_ops
from dspark_ops import reference as ref

from helpers import requires_cuda

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Tolerances against a float32 reference rounded to the output dtype: one or two ulps.
TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (5e-3, 5e-3)}


def attention_inputs(R, gamma, hq, hkv, dh, lmax, dtype, device, lens=None, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)

    if lens is None:
        lens = torch.randint(0, lmax + 1, (R,), generator=g)
    return dict(
        q=rnd(R, gamma, hq, dh),
        k_cache=rnd(R, lmax, hkv, dh),
        v_cache=rnd(R, lmax, hkv, dh),
        cache_lens=torch.as_tensor(lens, dtype=torch.int64).to(device),
        k_block=rnd(R, gamma, hkv, dh),
        v_block=rnd(R, gamma, hkv, dh),
        scale=dh**-0.5,
    )


def close(a, b, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(a.float().cpu(), b.float().cpu(), atol=atol, rtol=rtol)


# ------------------------------------------------------------------------------------ block_attention


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "R,gamma,hq,hkv,dh,lmax,lens",
    [
        (3, 7, 8, 2, 64, 40, [0, 17, 40]),  # GQA 4, context 0 and full
        (2, 5, 4, 4, 64, 33, [33, 1]),  # MHA
        (1, 9, 8, 2, 64, 70, [65]),  # γ·G = 36 rows: two row slices per kv head
        (4, 3, 6, 1, 128, 50, [0, 0, 2, 49]),  # MQA, Dh 128
        (2, 1, 2, 1, 64, 5, [3, 0]),  # γ = 1
    ],
)
def test_block_attention_matches_reference(device, dtype, R, gamma, hq, hkv, dh, lmax, lens):
    args = attention_inputs(R, gamma, hq, hkv, dh, lmax, dtype, device, lens)
    out = dspark_ops.block_attention(**args)
    assert out.shape == (R, gamma, hq, dh) and out.dtype == dtype and out.is_contiguous()
    close(out, ref.block_attention(**args), dtype)


@pytest.mark.parametrize("dh", [16, 24])
def test_block_attention_any_head_dim_on_cpu(dh):
    args = attention_inputs(3, 4, 6, 3, dh, 11, torch.float32, "cpu", [0, 5, 11])
    close(dspark_ops.block_attention(**args), ref.block_attention(**args), torch.float32)


def test_block_attention_ignores_slots_past_cache_len(device):
    args = attention_inputs(3, 4, 4, 2, 64, 20, torch.float32, device, [0, 6, 19])
    out = dspark_ops.block_attention(**args)
    for name in ("k_cache", "v_cache"):
        poisoned = args[name].clone()
        for r, n in enumerate([0, 6, 19]):
            poisoned[r, n:] = float("nan")
        args[name] = poisoned
    out2 = dspark_ops.block_attention(**args)
    assert torch.equal(out, out2)


def test_block_attention_is_non_causal_inside_the_block(device):
    # With an empty context and identical values except at the last block key, every block
    # query (including the first) must see the last key.
    args = attention_inputs(1, 4, 2, 1, 64, 8, torch.float32, device, [0])
    args["v_block"] = torch.zeros_like(args["v_block"])
    args["v_block"][0, -1] = 1.0
    out = dspark_ops.block_attention(**args)
    assert (out[0, 0] > 0).all()
    close(out, ref.block_attention(**args), torch.float32)


def test_block_attention_single_key_is_identity(device):
    # γ = 1 and no context: the output is the value itself, whatever the scores.
    args = attention_inputs(2, 1, 4, 2, 64, 3, torch.float32, device, [0, 0])
    out = dspark_ops.block_attention(**args)
    expected = args["v_block"].repeat_interleave(2, dim=2)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_block_attention_non_contiguous_inputs(device):
    args = attention_inputs(2, 5, 4, 2, 64, 16, torch.float32, device, [9, 16])
    expected = ref.block_attention(**args)
    nc = dict(args)
    nc["q"] = args["q"].transpose(1, 2).contiguous().transpose(1, 2)  # permuted strides
    big = torch.zeros(2, 16, 4, 64, device=device)
    big[:, :, ::2] = args["k_cache"]
    nc["k_cache"] = big[:, :, ::2]  # strided heads, contiguous rows: read in place
    nc["v_cache"] = args["v_cache"].transpose(1, 3).contiguous().transpose(1, 3)  # last dim not contiguous
    nc["k_block"] = args["k_block"].transpose(0, 1).contiguous().transpose(0, 1)
    assert not nc["q"].is_contiguous() and not nc["k_cache"].is_contiguous() and nc["v_cache"].stride(3) != 1
    close(dspark_ops.block_attention(**nc), expected, torch.float32)


def test_block_attention_empty_block(device):
    args = attention_inputs(2, 0, 4, 2, 64, 8, torch.float32, device, [1, 2])
    assert dspark_ops.block_attention(**args).shape == (2, 0, 4, 64)


@pytest.mark.parametrize(
    "name,value,match",
    [
        ("k_cache", torch.randn(2, 8, 2, 64, dtype=torch.bfloat16), "k_cache"),
        ("q", torch.randn(2, 3, 3, 64), "q"),  # Hq = 3 not a multiple of Hkv = 2
        ("v_block", torch.randn(2, 4, 2, 64), "v_block"),  # γ mismatch
        ("v_cache", torch.randn(2, 9, 2, 64), "v_cache"),  # Lmax mismatch
        ("cache_lens", torch.tensor([1, 2], dtype=torch.int32), "cache_lens"),
        ("cache_lens", torch.tensor([1, 9]), "cache_lens"),  # > Lmax (value check on CPU)
        ("cache_lens", torch.tensor([-1, 0]), "cache_lens"),
        ("k_block", torch.randn(2, 3, 2, 32), "k_block"),  # Dh mismatch
        ("q", torch.randn(2, 3, 4), "q"),
    ],
)
def test_block_attention_bad_inputs(name, value, match):
    args = attention_inputs(2, 3, 4, 2, 64, 8, torch.float32, "cpu", [1, 2])
    args[name] = value
    with pytest.raises(RuntimeError, match=match):
        dspark_ops.block_attention(**args)


# ------------------------------------------------------------------------------------ rms_norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 257), (1, 2560), (7, 1)])
def test_rms_norm_matches_reference(device, dtype, shape):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(*shape, generator=g) * 3).to(dtype=dtype, device=device)
    w = torch.randn(shape[-1], generator=g).to(dtype=dtype, device=device)
    out = dspark_ops.rms_norm(x, w, 1e-6)
    assert out.shape == x.shape and out.dtype == dtype
    close(out, ref.rms_norm(x, w, 1e-6), dtype)


def test_rms_norm_transposed_input(device):
    x = torch.randn(8, 6, device=device).t()  # [6, 8] non-contiguous
    w = torch.randn(16, device=device)[::2]
    close(dspark_ops.rms_norm(x, w, 1e-5), ref.rms_norm(x, w, 1e-5), torch.float32)


def test_rms_norm_bad_inputs():
    with pytest.raises(RuntimeError, match="weight"):
        dspark_ops.rms_norm(torch.randn(2, 8), torch.randn(7), 1e-6)
    with pytest.raises(RuntimeError, match="weight"):
        dspark_ops.rms_norm(torch.randn(2, 8), torch.randn(8, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(RuntimeError, match="'x'"):
        dspark_ops.rms_norm(torch.randn(2, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64), 1e-6)
    with pytest.raises(RuntimeError, match="eps"):
        dspark_ops.rms_norm(torch.randn(2, 8), torch.randn(8), -1.0)


# ------------------------------------------------------------------------------------ qk_norm_rope


def qk_inputs(lead, hq, hkv, dh, dtype, device, max_pos=200_000, seed=2):
    g = torch.Generator().manual_seed(seed)
    return dict(
        q=(torch.randn(*lead, hq, dh, generator=g) * 2).to(dtype=dtype, device=device),
        k=(torch.randn(*lead, hkv, dh, generator=g) * 2).to(dtype=dtype, device=device),
        q_norm_weight=torch.randn(dh, generator=g).to(dtype=dtype, device=device),
        k_norm_weight=torch.randn(dh, generator=g).to(dtype=dtype, device=device),
        positions=torch.randint(0, max_pos, lead, generator=g).to(device),
        eps=1e-6,
        rope_theta=1_000_000.0,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,hq,hkv,dh", [((3, 7), 8, 2, 128), ((5,), 4, 4, 64), ((2, 2, 3), 2, 1, 10)])
def test_qk_norm_rope_matches_reference(device, dtype, lead, hq, hkv, dh):
    args = qk_inputs(lead, hq, hkv, dh, dtype, device)
    q, k = dspark_ops.qk_norm_rope(**args)
    rq, rk = ref.qk_norm_rope(**args)
    assert q.shape == args["q"].shape and k.shape == args["k"].shape
    # cos/sin of large angles may differ by an ulp between libm and the reference: loose bf16.
    close(q, rq, dtype)
    close(k, rk, dtype)


def test_qk_norm_rope_position_zero_is_plain_norm(device):
    args = qk_inputs((4,), 2, 1, 64, torch.float32, device)
    args["positions"] = torch.zeros(4, dtype=torch.int64, device=device)
    q, k = dspark_ops.qk_norm_rope(**args)
    close(q, ref.rms_norm(args["q"], args["q_norm_weight"], 1e-6), torch.float32)
    close(k, ref.rms_norm(args["k"], args["k_norm_weight"], 1e-6), torch.float32)


def test_qk_norm_rope_relative_positions(device):
    # RoPE's defining property: <q(p), k(p')> depends only on p - p' (float32, unit weights).
    args = qk_inputs((1,), 1, 1, 64, torch.float32, device)
    args["q_norm_weight"] = torch.ones(64, device=device)
    args["k_norm_weight"] = torch.ones(64, device=device)
    args["rope_theta"] = 10000.0
    dots = []
    for p in (10, 1000):
        args["positions"] = torch.tensor([p], device=device)
        q, _ = dspark_ops.qk_norm_rope(**args)
        args["positions"] = torch.tensor([p - 7], device=device)
        _, k = dspark_ops.qk_norm_rope(**args)
        dots.append((q.float() * k.float()).sum().item())
    assert abs(dots[0] - dots[1]) < 1e-3 * max(1.0, abs(dots[0]))


def test_qk_norm_rope_bad_inputs():
    args = qk_inputs((3,), 4, 2, 64, torch.float32, "cpu")
    for name, value in [
        ("k", torch.randn(4, 2, 64)),
        ("k", torch.randn(3, 2, 32)),
        ("positions", torch.zeros(3, dtype=torch.int32)),
        ("positions", torch.zeros(4, dtype=torch.int64)),
        ("q_norm_weight", torch.randn(32)),
        ("k_norm_weight", torch.randn(64, dtype=torch.float16)),
        ("rope_theta", 0.0),
    ]:
        bad = dict(args, **{name: value})
        with pytest.raises(RuntimeError, match=name):
            dspark_ops.qk_norm_rope(**bad)
    with pytest.raises(RuntimeError, match="even"):
        dspark_ops.qk_norm_rope(**qk_inputs((3,), 4, 2, 63, torch.float32, "cpu"))


# ------------------------------------------------------------------------------------ append_context_kv


def append_inputs(R, lmax, hkv, dh, C, start, num_new, dtype, device, seed=3):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)

    return dict(
        k_cache=rnd(R, lmax, hkv, dh),
        v_cache=rnd(R, lmax, hkv, dh),
        k_new=rnd(R, C, hkv, dh),
        v_new=rnd(R, C, hkv, dh),
        k_norm_weight=rnd(dh),
        start=torch.tensor(start, dtype=torch.int64, device=device),
        num_new=torch.tensor(num_new, dtype=torch.int64, device=device),
        eps=1e-6,
        rope_theta=1_000_000.0,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_append_context_kv_matches_reference(device, dtype):
    args = append_inputs(4, 30, 2, 64, 8, [0, 5, 22, 30], [8, 0, 3, 0], dtype, device)
    before = {k: args[k].clone() for k in ("k_cache", "v_cache")}
    expected = {k: args[k].clone() for k in ("k_cache", "v_cache")}
    ref.append_context_kv(expected["k_cache"], expected["v_cache"], *[args[k] for k in
                          ("k_new", "v_new", "k_norm_weight", "start", "num_new", "eps", "rope_theta")])
    assert dspark_ops.append_context_kv(**args) is None
    close(args["k_cache"], expected["k_cache"], dtype)
    assert torch.equal(args["v_cache"], expected["v_cache"])
    # Slots outside start .. start + num_new - 1 are untouched, bit for bit.
    touched = torch.zeros(4, 30, dtype=torch.bool)
    for r, (s, n) in enumerate([(0, 8), (5, 0), (22, 3), (30, 0)]):
        touched[r, s : s + n] = True
    assert torch.equal(args["k_cache"].cpu()[~touched], before["k_cache"].cpu()[~touched])
    assert not torch.equal(args["k_cache"].cpu()[touched], before["k_cache"].cpu()[touched])


def test_append_then_attend_equals_rope_of_full_context(device):
    # Appending a context in ragged chunks gives the cache a one-shot qk_norm_rope would give.
    R, lmax, hkv, dh = 2, 12, 2, 64
    g = torch.Generator().manual_seed(4)
    k_all = torch.randn(R, lmax, hkv, dh, generator=g).to(device)
    v_all = torch.randn(R, lmax, hkv, dh, generator=g).to(device)
    w = torch.randn(dh, generator=g).to(device)
    kc = torch.zeros(R, lmax, hkv, dh, device=device)
    vc = torch.zeros_like(kc)
    lens = torch.zeros(R, dtype=torch.int64, device=device)
    for counts in ([5, 0], [4, 7], [3, 5]):
        n = torch.tensor(counts, device=device)
        C = max(counts)
        k_new = torch.zeros(R, C, hkv, dh, device=device)
        v_new = torch.zeros_like(k_new)
        for r in range(R):
            s, c = int(lens[r]), counts[r]
            k_new[r, :c], v_new[r, :c] = k_all[r, s : s + c], v_all[r, s : s + c]
        dspark_ops.append_context_kv(kc, vc, k_new, v_new, w, lens, n, 1e-6, 1e6)
        lens += n
    assert lens.tolist() == [12, 12]
    pos = torch.arange(lmax, device=device).expand(R, lmax)
    _, k_expected = dspark_ops.qk_norm_rope(torch.zeros(R, lmax, 1, dh, device=device), k_all,
                                            torch.ones(dh, device=device), w, pos, 1e-6, 1e6)
    torch.testing.assert_close(kc, k_expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(vc, v_all)


def test_append_context_kv_bad_inputs():
    base = append_inputs(2, 10, 2, 64, 4, [0, 3], [4, 1], torch.float32, "cpu")
    cases = [
        ("num_new", torch.tensor([5, 0]), "num_new"),  # > C
        ("num_new", torch.tensor([-1, 0]), "num_new"),
        ("start", torch.tensor([8, 0]), "start"),  # 8 + 4 > Lmax
        ("start", torch.tensor([0, 1], dtype=torch.int32), "start"),
        ("v_new", torch.randn(2, 3, 2, 64), "v_new"),
        ("k_new", torch.randn(2, 4, 2, 64, dtype=torch.bfloat16), "k_new"),
        ("k_norm_weight", torch.randn(32), "k_norm_weight"),
        ("v_cache", torch.randn(2, 9, 2, 64), "v_cache"),
        ("k_cache", torch.randn(2, 10, 2, 64).transpose(1, 3).contiguous().transpose(1, 3), "k_cache"),
    ]
    for name, value, match in cases:
        args = dict(base, **{name: value})
        with pytest.raises(RuntimeError, match=match):
            dspark_ops.append_context_kv(**args)


# ------------------------------------------------------------------------------------ CUDA


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dh", [64, 128, 256])
@pytest.mark.parametrize("R,lmax", [(1, 4100), (16, 700), (64, 96)])
def test_cuda_block_attention_agrees_with_cpu(dtype, dh, R, lmax):
    # Long contexts use many key splits (the combine kernel); R = 64 a single split. 16-bit
    # inputs run the default tensor-core kernel, which rounds the probabilities to the input
    # dtype before P V, as FlashAttention does. The other kernels (DSPARK_BLOCK_ATTENTION_KERNEL,
    # read once per process): test_block_draft_cuda.py.
    g = torch.Generator().manual_seed(R + dh)
    lens = torch.randint(0, lmax + 1, (R,), generator=g)
    lens[0] = lmax
    if R > 1:
        lens[1] = 0
    args = attention_inputs(R, 7, 32 if dh < 256 else 8, 8 if dh < 256 else 2, dh, lmax, dtype, "cpu", lens)
    cpu = dspark_ops.block_attention(**args)
    gpu = dspark_ops.block_attention(**{k: v.cuda() if torch.is_tensor(v) else v for k, v in args.items()})
    if dtype == torch.float16:
        torch.testing.assert_close(gpu.float().cpu(), cpu.float(), atol=5e-3, rtol=5e-3)
    else:
        close(gpu, cpu, dtype)


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_helpers_agree_with_cpu(dtype):
    to = lambda d: {k: v.cuda() if torch.is_tensor(v) else v for k, v in d.items()}  # noqa: E731
    qk = qk_inputs((5, 7), 32, 8, 128, dtype, "cpu")
    for a, b in zip(dspark_ops.qk_norm_rope(**qk), dspark_ops.qk_norm_rope(**to(qk))):
        close(b, a, dtype)
    x = torch.randn(9, 2560).to(dtype)
    w = torch.randn(2560).to(dtype)
    close(dspark_ops.rms_norm(x.cuda(), w.cuda(), 1e-6), dspark_ops.rms_norm(x, w, 1e-6), dtype)
    ap = append_inputs(5, 40, 8, 128, 8, [0, 3, 39, 40, 10], [8, 2, 1, 0, 5], dtype, "cpu")
    ap_gpu = to(ap)
    dspark_ops.append_context_kv(**ap)
    dspark_ops.append_context_kv(**ap_gpu)
    close(ap_gpu["k_cache"], ap["k_cache"], dtype)
    assert torch.equal(ap_gpu["v_cache"].cpu(), ap["v_cache"])


@requires_cuda
def test_cuda_block_attention_clamps_bad_lengths_without_sync():
    args = attention_inputs(3, 4, 8, 2, 64, 10, torch.float32, "cuda", [0, 5, 10])
    args["cache_lens"] = torch.tensor([-4, 5, 1000], device="cuda")  # clamped to [0, 10]
    out = dspark_ops.block_attention(**args)
    args["cache_lens"] = torch.tensor([0, 5, 10], device="cuda")
    torch.testing.assert_close(out, dspark_ops.block_attention(**args))


@requires_cuda
def test_cuda_append_skips_slots_outside_the_cache_without_sync():
    # Without DSPARK_CHECK=1 the CUDA op does not validate values; entries that would land
    # outside the cache are skipped (the CPU op raises instead).
    args = append_inputs(2, 40, 2, 64, 5, [38, 0], [5, 2], torch.float32, "cuda")
    expected = {k: args[k].clone() for k in ("k_cache", "v_cache")}
    ref.append_context_kv(expected["k_cache"], expected["v_cache"], *[args[k] for k in
                          ("k_new", "v_new", "k_norm_weight", "start", "num_new", "eps", "rope_theta")])
    dspark_ops.append_context_kv(**args)
    close(args["k_cache"], expected["k_cache"], torch.float32)
    assert torch.equal(args["v_cache"], expected["v_cache"])
