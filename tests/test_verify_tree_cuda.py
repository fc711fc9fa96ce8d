"""CUDA-only tests of verify_tree (SPEC §5, §9, §10): the split kernel (default) against the CPU
kernel with sparse q (draft_ids) on awkward shapes, its handling of padding / out-of-range /
repeated ids, batch invariance across group sizes, CUDA-graph replay, and the split kernel
against the legacy one-block-per-request kernel (DSPARK_VERIFY_TREE_KERNEL=legacy, read once
per process, so the legacy side runs in a subprocess), and a green context with fewer SMs than
a group of blocks (this file run as a script in a child process). Skipped without a GPU."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest
import torch

import dspark_ops

from helpers import requires_cuda
from test_verify_tree import batch_inputs, on

pytestmark = requires_cuda
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def sparse_inputs(R, M, V, K, seed, dtype=torch.bfloat16, probs=False, filters=False, greedy_every=5):
    """A tree batch with a sparse q of K listed ids per row (distinct, some -1 padding) whose
    children are drawn from that q where possible, so acceptances and rejections both occur."""
    target, tokens, parents, n, temp, seeds, offs, _ = batch_inputs(R, M, V, seed=seed, dtype=dtype,
                                                                    greedy_every=greedy_every)
    g = torch.Generator().manual_seed(seed + 1)
    N = target.shape[0]
    ids = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(N)])
    ids[torch.rand(N, K, generator=g) < 0.15] = -1
    # Listed logits near the target's (drafts resemble the target): both outcomes are common.
    near = target.float().gather(1, ids.clamp_min(0)) + torch.randn(N, K, generator=g)
    kw = {"draft_ids": ids}
    if probs:
        q = torch.softmax(torch.where(ids >= 0, near, torch.full_like(near, float("-inf"))), 1)
        kw["draft_probs"] = torch.nan_to_num(q, nan=0.0)
    else:
        kw["draft_logits"] = near.to(torch.bfloat16)
    # Children of a node: often a listed id of the node's q row, sometimes anything.
    first = torch.cumsum(n, 0) - n
    for r in range(R):
        for i in range(1, int(n[r])):
            row = int(first[r] + parents[r, i])
            if torch.rand(1, generator=g).item() < 0.7:
                tokens[r, i] = int(ids[row, torch.randint(0, K, (1,), generator=g)].clamp_min(0))
    if filters:
        kw["top_k"] = torch.randint(-1, 40, (R,), generator=g)
        kw["top_p"] = torch.where(torch.rand(R, generator=g) < 0.5, torch.ones(R), torch.rand(R, generator=g) * 0.9 + 0.1)
        kw["min_p"] = torch.where(torch.rand(R, generator=g) < 0.5, torch.zeros(R), torch.rand(R, generator=g) * 0.3)
    return (target, tokens, parents, n, temp, seeds, offs), kw


def run(device, args, kw, eos=None):
    out = dspark_ops.verify_tree(*on(device, *args), eos_ids=None if eos is None else eos.to(device),
                                 **{k: v.to(device) for k, v in kw.items()})
    return [t.cpu() for t in out]


def same_requests(a, b):
    """Per request: every output equal."""
    return (a[0] == b[0]).all(1) & (a[1] == b[1]).all(1) & (a[2] == b[2]) & (a[3] == b[3])


# ---------------------------------------------------------------------------------------
# sparse q: CUDA against the CPU kernel


@pytest.mark.parametrize("V,K,M,probs,filters", [
    (29, 6, 9, False, False),    # one chunk, exact agreement expected
    (29, 29, 7, True, True),     # K = V: every id listed
    (1000, 1, 12, False, True),  # K = 1
    (4099, 300, 10, True, False),  # V not a multiple of 4, K over one list chunk
    (32_001, 700, 16, False, True),  # several chunks per warp, filters on
])
def test_sparse_cuda_matches_cpu(V, K, M, probs, filters):
    args, kw = sparse_inputs(24, M, V, K, seed=V + K, probs=probs, filters=filters)
    eos = torch.tensor([5, 7])
    cpu, gpu = run("cpu", args, kw, eos), run("cuda", args, kw, eos)
    same = same_requests(cpu, gpu)
    # Float sums in another order may flip a near-tie: allow one request of 24 at large V.
    assert int(same.sum()) >= (24 if V < 100 else 23), f"{int((~same).sum())} of 24 requests differ"
    assert (cpu[2] > 0).any() and (cpu[2] < cpu[3]).any()  # both acceptances and rejections


def test_sparse_large_vocab_matches_cpu():
    args, kw = sparse_inputs(8, 12, 151_936, 256, seed=3)
    cpu, gpu = run("cpu", args, kw), run("cuda", args, kw)
    assert int(same_requests(cpu, gpu).sum()) >= 7


def test_sparse_out_of_range_ids_read_as_padding():
    """Without DSPARK_CHECK, ids outside [0, V) other than -1 are left out like padding: the
    outputs equal the CPU's with those ids replaced by -1 (the CPU raises on them)."""
    if os.environ.get("DSPARK_CHECK") == "1":
        pytest.skip("value checks on: the CUDA binding raises like the CPU")
    args, kw = sparse_inputs(16, 8, 61, 9, seed=21)
    bad = kw["draft_ids"].clone()
    where = torch.rand(bad.shape, generator=torch.Generator().manual_seed(4)) < 0.2
    bad[where] = torch.tensor([61, 1 << 40, -5])[torch.arange(int(where.sum())) % 3]
    gpu = run("cuda", args, {**kw, "draft_ids": bad})
    cpu = run("cpu", args, {**kw, "draft_ids": torch.where(where, -1, bad)})
    assert bool(same_requests(cpu, gpu).all())
    with pytest.raises(RuntimeError, match="draft_ids"):
        run("cpu", args, {**kw, "draft_ids": bad})


def test_sparse_repeated_ids_stay_in_bounds():
    """Repeated ids are the caller's error (CPU raises); unchecked CUDA must still return valid
    outputs: tokens in [0, V) or -1, counts within the tree."""
    if os.environ.get("DSPARK_CHECK") == "1":
        pytest.skip("value checks on: the CUDA binding raises like the CPU")
    args, kw = sparse_inputs(16, 8, 40, 10, seed=22)
    ids = kw["draft_ids"].clone()
    ids[:, 1] = ids[:, 0].clamp_min(3)
    ids[:, 2] = ids[:, 0].clamp_min(3)
    out, nodes, acc, emit = run("cuda", args, {**kw, "draft_ids": ids})
    assert ((out >= -1) & (out < 40)).all()
    assert ((acc >= 0) & (emit <= acc + 1) & (emit >= acc)).all()
    assert ((nodes >= -1) & (nodes < args[1].shape[1])).all()


def test_sparse_equals_dense_with_the_same_q():
    """A sparse q and the dense logits row it defines (-inf off the listed ids) verify alike:
    q, residual and bonus read the same distribution."""
    args, kw = sparse_inputs(32, 9, 300, 17, seed=23, greedy_every=0)
    ids, listed = kw["draft_ids"], kw["draft_logits"].float()
    dense = torch.full((ids.shape[0], 300), float("-inf"))
    for i in range(ids.shape[0]):
        keep = ids[i] >= 0
        dense[i, ids[i, keep]] = listed[i, keep]
    sparse = run("cuda", args, kw)
    full = run("cuda", args, {"draft_logits": dense.to(torch.bfloat16)})
    assert int(same_requests(sparse, full).sum()) >= 31


# ---------------------------------------------------------------------------------------
# the split kernel: batch invariance, graphs, against the legacy kernel


@pytest.mark.parametrize("sparse", [False, True])
def test_split_batch_invariance(sparse):
    """The group of blocks per request shrinks as R grows; the outputs must not change."""
    if sparse:
        args, kw = sparse_inputs(64, 8, 151_936, 64, seed=24, filters=True)
    else:
        *args, draft = batch_inputs(64, 8, 151_936, seed=24, dtype=torch.bfloat16)
        args, kw = tuple(args), {"draft_logits": draft}
    full = run("cuda", args, kw)
    first = torch.cumsum(args[3], 0) - args[3]
    for r in (0, 5, 63):
        rows = slice(int(first[r]), int(first[r] + args[3][r]))
        one_args = (args[0][rows], *(a[r:r + 1] for a in args[1:]))
        one_kw = {k: (v[rows] if v.shape[0] == args[0].shape[0] else v[r:r + 1]) for k, v in kw.items()}
        one = run("cuda", one_args, one_kw)
        for a, b in zip(one, full):
            assert torch.equal(a[0], b[r])


def test_split_sparse_graph_replay():
    """Captured once, replayed with new logits, ids and seeds: equals the eager call."""
    args, kw = sparse_inputs(6, 7, 5000, 40, seed=25, filters=True)
    dev, dkw = list(on("cuda", *args)), {k: v.cuda() for k, v in kw.items()}
    before = [t.clone() for t in dspark_ops.verify_tree(*dev, **dkw)]  # also the warm-up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = dspark_ops.verify_tree(*dev, **dkw)
    g = torch.Generator().manual_seed(9)
    dev[0].copy_(args[0].float() + torch.randn(args[0].shape, generator=g))
    dev[5].copy_(torch.randint(0, 2**40, (6,), generator=g))
    dkw["draft_logits"].copy_(kw["draft_logits"].float() + torch.randn(kw["draft_logits"].shape, generator=g))
    dkw["draft_ids"].copy_(kw["draft_ids"].roll(1, 0))
    graph.replay()
    want = dspark_ops.verify_tree(*dev, **dkw)
    for a, b in zip(captured, want):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(before, want))


# Inputs of the split-vs-legacy comparison: (V, q, filters); the legacy outputs of all of them
# come from one subprocess (the kernel choice is read once per process).
LEGACY_CASES = [(29, "logits", False), (151_936, "logits", False), (151_937, "probs", True), (50_257, "none", False)]


def legacy_case(i):
    V, q, filters = LEGACY_CASES[i]
    *args, draft = batch_inputs(32, 10, V, seed=27 + i, dtype=torch.bfloat16, scale=3.0)
    kw = {"draft_logits": draft} if q == "logits" else {}
    if q == "probs":
        kw["draft_probs"] = torch.softmax(draft.float() / 0.7, 1)
    if filters:
        kw["top_p"] = torch.where(torch.rand(32, generator=torch.Generator().manual_seed(i)) < 0.5, 1.0, 0.9)
    return tuple(args), kw


_LEGACY = r"""
import sys, torch, dspark_ops
cases = torch.load(sys.argv[1])
outs = []
for args, kw in cases:
    try:
        out = dspark_ops.verify_tree(*[a.cuda() for a in args], **{k: v.cuda() for k, v in kw.items()})
        outs.append([t.cpu() for t in out])
    except RuntimeError as e:
        outs.append(str(e))
torch.save(outs, sys.argv[2])
"""


@pytest.fixture(scope="module")
def legacy_outputs(tmp_path_factory):
    """Legacy-kernel outputs of LEGACY_CASES, then of a sparse-q call (which it must refuse)."""
    tmp = tmp_path_factory.mktemp("legacy")
    cases = [legacy_case(i) for i in range(len(LEGACY_CASES))] + [sparse_inputs(2, 4, 30, 4, seed=28)]
    torch.save(cases, tmp / "in.pt")
    env = {**os.environ, "DSPARK_VERIFY_TREE_KERNEL": "legacy"}
    subprocess.run([sys.executable, "-c", _LEGACY, str(tmp / "in.pt"), str(tmp / "out.pt")], env=env, check=True)
    return torch.load(tmp / "out.pt")


@pytest.mark.parametrize("i", range(len(LEGACY_CASES)))
def test_split_matches_legacy(i, legacy_outputs):
    args, kw = legacy_case(i)
    new, old = run("cuda", args, kw), legacy_outputs[i]
    assert int(same_requests(new, old).sum()) >= (32 if LEGACY_CASES[i][0] < 100 else 31)


def test_legacy_rejects_draft_ids(legacy_outputs):
    assert "draft_ids" in legacy_outputs[-1]


# ---------------------------------------------------------------------------------------
# a green context (an SM partition) with fewer SMs than a group of blocks


def green_stream(min_sms):
    """(stream handle, SMs) of a new green context of at least min_sms SMs (8 is the smallest
    partition on sm_90), through the driver API: torch's GreenContext needs the cuda.bindings
    package, which the GPU machine may lack."""
    cu = ctypes.CDLL("libcuda.so.1")

    def check(result, what):
        assert result == 0, f"{what}: CUresult {result}"

    torch.zeros(1, device="cuda")  # the primary context, which the green context shares memory with
    dev, groups = ctypes.c_int(), ctypes.c_uint(1)
    desc, green, stream = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    # CUdevResource: its type, 92 bytes of padding, then the SM resource (smCount first): 144
    # bytes in CUDA 12.4-13.0; the buffers leave room for more.
    whole, part = ctypes.create_string_buffer(1024), ctypes.create_string_buffer(1024)
    check(cu.cuDeviceGet(ctypes.byref(dev), torch.cuda.current_device()), "cuDeviceGet")
    check(cu.cuDeviceGetDevResource(dev, whole, 1), "cuDeviceGetDevResource")  # CU_DEV_RESOURCE_TYPE_SM
    check(cu.cuDevSmResourceSplitByCount(part, ctypes.byref(groups), whole, None, 0, min_sms),
          "cuDevSmResourceSplitByCount")
    check(cu.cuDevResourceGenerateDesc(ctypes.byref(desc), part, 1), "cuDevResourceGenerateDesc")
    check(cu.cuGreenCtxCreate(ctypes.byref(green), desc, dev, 1), "cuGreenCtxCreate")  # CU_GREEN_CTX_DEFAULT_STREAM
    check(cu.cuGreenCtxStreamCreate(ctypes.byref(stream), green, 1, 0), "cuGreenCtxStreamCreate")  # non-blocking
    return stream.value, int.from_bytes(part.raw[96:100], "little")


def test_green_context_smaller_than_a_group(tmp_path):
    """V = 151936 at R = 2 plans groups of 16 blocks on a whole GPU; a green context of 8 SMs
    holds 8 blocks of this kernel at once (one per SM), so a group of 16 would wait at its first
    barrier forever. The plan must cap the group by the SMs of the launch's stream. A hang is the
    failure, hence the child process and its time limit. The outputs equal the whole GPU's: the
    group size never changes them."""
    *args, draft = batch_inputs(2, 6, 151_936, seed=31, dtype=torch.bfloat16)
    args, kw = tuple(args), {"draft_logits": draft}
    torch.save((args, kw), tmp_path / "in.pt")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, HERE, os.environ.get("PYTHONPATH")])))
    try:
        subprocess.run([sys.executable, os.path.abspath(__file__), str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                       env=env, check=True, timeout=45)
    except subprocess.TimeoutExpired:
        pytest.fail("verify_tree did not finish on a green context of 8 SMs: its groups do not fit")
    sms, got = torch.load(tmp_path / "out.pt")
    assert sms < 16, f"a green context of {sms} SMs holds a whole group: nothing tested"
    for a, b in zip(got, run("cuda", args, kw)):
        assert torch.equal(a, b)


if __name__ == "__main__":
    # Child process of test_green_context_smaller_than_a_group: the call on a green context's stream.
    args, kw = torch.load(sys.argv[1])
    handle, sms = green_stream(8)
    with torch.cuda.stream(torch.cuda.ExternalStream(handle)):
        out = run("cuda", args, kw)
    torch.save((sms, out), sys.argv[2])
