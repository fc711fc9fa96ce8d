"""SPEC §9 filters (top_k, top_p, min_p) in markov_draft and markov_draft_topk: off values are
bit-identical to no filter, the kept set is exactly the filter of the op's own rounded logits,
the tokens follow the filtered distribution, and the wrappers take Python scalars and lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dspark_ops
from dspark_ops import reference

from helpers import requires_cuda
from stats import assert_distribution
from test_markov_draft import logprob_from_logits, make_inputs, to_device

OPS = ["dense", "topk"]


def run(op, args, K=None, **filters):
    if op == "dense":
        return dspark_ops.markov_draft(**args, **filters)
    tokens, ids, logits, logprob, conf = dspark_ops.markov_draft_topk(**args, num_candidates=K, **filters)
    return tokens, logits, logprob, conf, ids


def exact_kept(scaled, top_k, top_p, min_p):
    """SPEC §9 steps 1-4 on one row by plain enumeration (float64 masses, sorted): the kept set."""
    s = scaled.double()
    finite = s > float("-inf")
    m = s.max()
    pi = torch.exp(s - m)
    keep = finite.clone()
    if min_p > 0:
        keep &= pi >= min_p
    if 0 < top_k < s.numel() and int(keep.sum()) > top_k:
        kth = s[keep].sort(descending=True).values[top_k - 1]
        keep &= s >= kth
    if top_p < 1:
        vals = s[keep].sort(descending=True).values
        w = torch.exp(vals - m)
        cum = torch.cumsum(w, 0)
        target = top_p * cum[-1]
        for j in range(vals.numel()):
            if (j + 1 == vals.numel() or vals[j + 1] < vals[j]) and cum[j] >= target:
                keep &= s >= vals[j]
                break
    return keep


@pytest.mark.parametrize("op", OPS)
def test_off_values_are_bit_identical(op):
    args = make_inputs(R=6, G=3, V=301, head="gated", conf="he", seed=1)
    K = 64 if op == "topk" else None
    expect = run(op, args, K)
    R, V = 6, 301
    off = dict(top_k=torch.tensor([0, -3, V, V + 5, 0, 0]), top_p=torch.ones(R), min_p=torch.zeros(R))
    for a, b in zip(run(op, args, K, **off), expect):
        assert torch.equal(a, b)


FILTERS = [dict(top_k=5), dict(top_p=0.8), dict(min_p=0.2), dict(top_k=7, top_p=0.6),
           dict(top_k=3, top_p=0.9, min_p=0.05)]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("filters", FILTERS)
def test_kept_set_is_the_exact_filter_and_matches_reference(op, dtype, filters):
    R, V, K = 8, 211, 50
    args = make_inputs(R=R, G=3, V=V, dtype=dtype, head="rnn", conf="h", seed=len(str(filters)))
    T = args["temperature"]
    # Per-request values: the first request of the batch has every filter off.
    f = {name: torch.tensor([0 if name == "top_k" else (1.0 if name == "top_p" else 0.0)] + [v] * (R - 1),
                            dtype=torch.int64 if name == "top_k" else torch.float32)
         for name, v in filters.items()}
    tokens, logits, logprob, _, *ids = run(op, args, K, **f)
    ref = (reference.markov_draft(**args, **f) if op == "dense"
           else reference.markov_draft_topk(**args, num_candidates=K, **f))
    assert torch.equal(tokens, ref[0])
    ref_logits = ref[1] if op == "dense" else ref[2]
    assert torch.equal(torch.isinf(logits) & (logits < 0), torch.isinf(ref_logits) & (ref_logits < 0))
    # Position 1 does not depend on the drafted tokens: there the filter only turns the
    # unfiltered logits outside the exact kept set into -inf.
    plain = run(op, args, K)[1][:, 0]
    entry = tokens if op == "dense" else (ids[0] == tokens[..., None]).int().argmax(-1)
    for r in range(R):
        if T[r] <= 1e-5 or r == 0:  # greedy, or every filter off: untouched
            assert torch.equal(logits[r, 0], plain[r])
            continue
        kept = exact_kept(plain[r].float() / T[r], filters.get("top_k", 0), filters.get("top_p", 1.0),
                          filters.get("min_p", 0.0))
        assert torch.equal(~(torch.isinf(logits[r, 0]) & (logits[r, 0] < 0)), kept)
        assert torch.equal(logits[r, 0][kept], plain[r][kept])
    finite = ~(torch.isinf(logits) & (logits < 0))
    assert finite.gather(-1, entry[..., None]).all()  # every token was drawn from its kept set
    torch.testing.assert_close(logprob, logprob_from_logits(logits, entry, T), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("op", OPS)
def test_tokens_follow_the_filtered_distribution(op):
    # One row drawn 3000 times (seeds vary): frequencies = softmax over the kept entries.
    n, V, T = 3000, 24, 1.1
    base = make_inputs(R=1, G=1, V=V, r=8, seed=5)
    args = {k: v for k, v in base.items()}
    args["base_logits"] = base["base_logits"].expand(n, -1, -1)
    args["anchor"] = base["anchor"].expand(n)
    args["temperature"] = T  # Python scalars and lists are accepted by the wrappers
    args["seed"] = list(range(n))
    args["offset"] = 9
    tokens, logits, *_ = run(op, args, 16, top_p=0.85, min_p=0.02)
    row = logits[0, 0].float()
    probs = torch.softmax(row / T, -1).numpy()
    counts = np.bincount(tokens[:, 0].numpy(), minlength=V)
    if op == "topk":
        ids = _[2][0, 0]
        full = np.zeros(V)
        full[ids.numpy()] = probs
        probs = full
    assert (probs > 0).sum() < (16 if op == "topk" else V)  # the filter removed entries
    assert_distribution(counts, probs, f"{op} filtered x_1")


@pytest.mark.parametrize("name,value", [("top_p", 0.0), ("top_p", 1.5), ("min_p", -0.1), ("min_p", 2.0),
                                        ("top_p", float("nan"))])
@pytest.mark.parametrize("op", OPS)
def test_bad_filter_values(op, name, value):
    args = make_inputs(R=3, G=2, V=40, r=8)
    with pytest.raises(RuntimeError, match=name):
        run(op, args, 5, **{name: torch.full((3,), value)})


@pytest.mark.parametrize("op", OPS)
def test_bad_filter_shapes(op):
    args = make_inputs(R=3, G=2, V=40, r=8)
    with pytest.raises(RuntimeError, match="top_k"):
        run(op, args, 5, top_k=torch.ones(3))
    with pytest.raises(RuntimeError, match="min_p"):
        run(op, args, 5, min_p=torch.zeros(4))


def test_python_scalars_equal_tensors():
    args = make_inputs(R=4, G=3, V=101, seed=4)
    expect = dspark_ops.markov_draft(**{**args, "temperature": torch.full((4,), 0.7), "seed": torch.full((4,), 3),
                                        "offset": torch.tensor([0, 1, 2, 3])}, top_p=torch.full((4,), 0.9))
    got = dspark_ops.markov_draft(**{**args, "temperature": 0.7, "seed": 3, "offset": [0, 1, 2, 3]}, top_p=0.9)
    for a, b in zip(got, expect):
        assert torch.equal(a, b)


@pytest.mark.parametrize("op", OPS)
def test_opcheck_with_filters(op):
    args = make_inputs(R=3, G=3, V=37, r=8, d=5, head="gated", conf="h")
    names = ["base_logits", "anchor", "w1", "w2", "temperature", "seed", "offset"]
    heads = ["hidden", "gate_weight", "gate_bias", "rnn_weight", "rnn_bias", "conf_weight", "conf_bias", "conf_scale"]
    filters = (torch.tensor([3, 0, 2]), torch.tensor([0.9, 1.0, 0.5]), torch.tensor([0.0, 0.1, 0.0]))
    positional = tuple(args.get(n) for n in names) + ((9,) if op == "topk" else ()) + tuple(
        args.get(n) for n in heads) + filters
    fn = torch.ops.dspark.markov_draft_topk if op == "topk" else torch.ops.dspark.markov_draft
    torch.library.opcheck(fn.default, positional)


def filter_tensors(filters, R):
    return {name: torch.full((R,), v, dtype=torch.int64 if name == "top_k" else torch.float32)
            for name, v in filters.items()}


def assert_dense_cuda_matches_cpu(args, f):
    assert_cuda_matches_cpu(run("dense", to_device({**args, **f}, "cuda")), run("dense", args, **f))


def assert_cuda_matches_cpu(gpu, cpu):
    """Same tokens, same kept sets, kept logits and log q close (dot products in another order)."""
    assert torch.equal(gpu[0].cpu(), cpu[0])  # tokens
    g, c = gpu[1].cpu().float(), cpu[1].float()
    assert torch.equal(torch.isinf(g), torch.isinf(c))  # the same kept sets
    kept = ~torch.isinf(c)
    torch.testing.assert_close(g[kept], c[kept], atol=4e-2, rtol=1e-2)
    torch.testing.assert_close(gpu[2].cpu(), cpu[2], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu[3].cpu(), cpu[3], atol=1e-5, rtol=1e-5)  # confidence


@requires_cuda
@pytest.mark.parametrize("filters", FILTERS)
def test_cuda_topk_filters_agree_with_cpu(filters):
    R, K = 9, 300
    args = make_inputs(R=R, G=4, V=20011, r=32, dtype=torch.bfloat16, head="gated", conf="he", seed=7)
    f = filter_tensors(filters, R)
    cpu = run("topk", args, K, **f)
    gpu = run("topk", to_device({**args, **f}, "cuda"), K)
    assert torch.equal(gpu[4].cpu(), cpu[4])  # draft_ids
    assert_cuda_matches_cpu(gpu, cpu)


HEADS = [("vanilla", "none"), ("gated", "he"), ("rnn", "h")]


@requires_cuda
@pytest.mark.parametrize("filters", FILTERS)
@pytest.mark.parametrize("head,conf", HEADS)
def test_cuda_dense_filters_agree_with_cpu(filters, head, conf):
    # Mixed rows: greedy (filters ignored), filtered, and request 5 (sampled) with every filter off.
    # r = 40: the CUDA kernel's FMA product (r % 16 != 0), whose float32 sums differ from the
    # CPU's only in order; the tensor-core product may round a logit one unit apart and so move a
    # kept set's boundary (test_markov_draft.py compares it with the FMA product).
    R = 9
    args = make_inputs(R=R, G=4, V=20011, r=40, dtype=torch.bfloat16, head=head, conf=conf, seed=7)
    f = filter_tensors(filters, R)
    for name, t in f.items():
        t[5] = 0 if name == "top_k" else (1.0 if name == "top_p" else 0.0)
    assert_dense_cuda_matches_cpu(args, f)


@requires_cuda
def test_cuda_dense_filters_at_full_vocabulary():
    # V = 151936: the vectorised threshold passes (rows are 16-byte multiples); r = 248: the FMA
    # product (as above).
    R = 4
    args = make_inputs(R=R, G=2, V=151936, r=248, d=16, dtype=torch.bfloat16, seed=3,
                       temperature=torch.tensor([1.0, 0.7, 0.0, 1.3]))
    assert_dense_cuda_matches_cpu(args, dict(top_k=torch.tensor([50, 0, 5, 0]),
                                             top_p=torch.tensor([1.0, 0.9, 0.9, 0.8])))


@requires_cuda
def test_cuda_dense_filters_in_a_cuda_graph():
    R = 5
    args = to_device(make_inputs(R=R, G=3, V=5003, r=64, d=16, dtype=torch.bfloat16, head="gated", conf="he", seed=2),
                     "cuda")
    f = dict(top_k=torch.tensor([7, 0, 3, 9, 0], device="cuda"), top_p=torch.full((R,), 0.85, device="cuda"))
    eager = run("dense", args, **f)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run("dense", args, **f)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, eager):
        assert torch.equal(a, b)
