"""verify_chain (SPEC §4): exact greedy cases, losslessness in distribution, invariances,
bad inputs, NaN rows, huge vocabularies, kernel vs reference (the generic checks: test_every_op.py)."""

import numpy as np
import pytest
import torch

import dspark_ops
from dspark_ops import reference

from helpers import brute_filter, requires_cuda
from stats import assert_binomial, assert_distribution

GREEDY, HOT = 0.0, 1.0


def call(device, target_logits, drafts, lengths, temperature, seed=None, offset=None, draft_logits=None, eos=None):
    R = len(drafts)
    t = lambda x, dt=torch.int64: torch.as_tensor(x, dtype=dt).to(device)
    seed = t(seed if seed is not None else list(range(R)))
    offset = t(offset if offset is not None else [0] * R)
    return dspark_ops.verify_chain(
        t(target_logits, torch.float32) if not torch.is_tensor(target_logits) else target_logits.to(device),
        t(drafts), t(lengths), t(temperature, torch.float32), seed, offset,
        None if draft_logits is None else draft_logits.to(device),
        None if eos is None else t(eos),
    )


def spike_rows(tokens, vocab):
    """Logit rows whose argmax is the given token."""
    rows = torch.zeros(len(tokens), vocab)
    rows[torch.arange(len(tokens)), torch.tensor(tokens)] = 5.0
    return rows


# ---------------------------------------------------------------- greedy, exact outputs


def test_greedy_full_accept_and_bonus(device):
    out, acc, emit = call(device, spike_rows([3, 1, 4, 2], 6), [[3, 1, 4]], [3], [GREEDY])
    assert out.tolist() == [[3, 1, 4, 2]] and acc.tolist() == [3] and emit.tolist() == [4]


def test_greedy_early_and_first_mismatch(device):
    rows = torch.cat([spike_rows([3, 5, 0, 0], 6), spike_rows([2, 0], 6)])
    out, acc, emit = call(device, rows, [[3, 1, 4], [4, 0, 0]], [3, 1], [GREEDY, GREEDY])
    assert out.tolist() == [[3, 5, -1, -1], [2, -1, -1, -1]]
    assert acc.tolist() == [1, 0] and emit.tolist() == [2, 1]


def test_zero_length_emits_one_token(device):
    out, acc, emit = call(device, spike_rows([4], 6), [[1, 2]], [0], [GREEDY])
    assert out.tolist() == [[4, -1, -1]] and acc.tolist() == [0] and emit.tolist() == [1]


def test_eos_stops_after_accepted_token(device):
    out, acc, emit = call(device, spike_rows([3, 5, 0, 1], 6), [[3, 5, 0]], [3], [GREEDY], eos=[5, 9])
    assert out.tolist() == [[3, 5, -1, -1]] and acc.tolist() == [2] and emit.tolist() == [2]


def test_eos_emitted_by_target_is_kept(device):
    out, acc, emit = call(device, spike_rows([3, 5], 6), [[2, 0]], [1], [GREEDY], eos=[3])
    assert out.tolist() == [[3, -1, -1]] and acc.tolist() == [0] and emit.tolist() == [1]


def test_invalid_drafts_are_never_accepted(device):
    rows = spike_rows([0, 0, 0, 0, 0, 0], 6)
    out, acc, emit = call(device, rows, [[-1, 0], [6, 0], [-7, 0]], [1, 1, 1], [GREEDY, HOT, HOT])
    assert acc.tolist() == [0, 0, 0] and emit.tolist() == [1, 1, 1]
    assert ((out[:, 0] >= 0) & (out[:, 0] < 6)).all()


def test_mixed_lengths_and_temperatures(device):
    # Request 0 greedy, length 2; request 1 sampling with p one-hot (deterministic), length 3;
    # request 2 greedy, length 0.
    big = 30.0
    r0 = spike_rows([1, 2, 3], 5)
    r1 = torch.full((4, 5), -big)
    r1[torch.arange(4), torch.tensor([4, 0, 2, 3])] = big
    r2 = spike_rows([0], 5)
    out, acc, emit = call(device, torch.cat([r0, r1, r2]), [[1, 0, 0], [4, 0, 1], [2, 2, 2]], [2, 3, 0],
                          [GREEDY, 0.7, GREEDY])
    assert out.tolist() == [[1, 2, -1, -1], [4, 0, 2, -1], [0, -1, -1, -1]]
    assert acc.tolist() == [1, 2, 0] and emit.tolist() == [2, 3, 1]


# ---------------------------------------------------------------- losslessness in distribution

V_SMALL = 5
P1 = torch.tensor([0.35, 0.05, 0.3, 0.2, 0.1])  # target at position 1
P2 = torch.tensor([  # target at position 2 given x_1 (rows), a Markov target
    [0.1, 0.2, 0.3, 0.2, 0.2],
    [0.5, 0.0, 0.2, 0.2, 0.1],
    [0.05, 0.05, 0.1, 0.4, 0.4],
    [0.3, 0.3, 0.2, 0.1, 0.1],
    [0.25, 0.25, 0.0, 0.25, 0.25],
])
Q1 = torch.tensor([0.1, 0.4, 0.2, 0.1, 0.2])  # drafter at position 1
Q2 = torch.tensor([  # drafter at position 2 given x_1
    [0.2, 0.2, 0.2, 0.2, 0.2],
    [0.1, 0.6, 0.1, 0.1, 0.1],
    [0.4, 0.1, 0.1, 0.1, 0.3],
    [0.0, 0.5, 0.5, 0.0, 0.0],
    [0.2, 0.3, 0.1, 0.2, 0.2],
])


def log(p):
    return torch.log(p.clamp_min(0)).where(p > 0, torch.full_like(p, -1e30))


def two_token_outputs(device, requests, temperature, sampled_drafts, lengths):
    """Run one verify round over a Markov target; where it emitted a single token, draw the
    second from the target with a second round of length 0 (the next decoding step). Returns
    the first two generated tokens of every request."""
    g = torch.Generator().manual_seed(1234)
    T = temperature
    if sampled_drafts:
        x1 = torch.multinomial(Q1, requests, replacement=True, generator=g)
        x2 = torch.multinomial(Q2[x1], 1, generator=g).squeeze(1)
        draft_logits = torch.stack([log(Q1).expand(requests, -1), log(Q2[x1])], 1) * T
    else:  # deterministic drafter: a fixed function of the prefix, q one-hot
        x1 = torch.full((requests,), 1)
        x2 = (x1 + 2) % V_SMALL
        draft_logits = None
    drafts = torch.stack([x1, x2], 1)
    rows = []
    for r in range(requests):
        ell = int(lengths[r])
        rr = [log(P1)]
        if ell >= 1:
            rr.append(log(P2[x1[r]]))
        if ell >= 2:
            rr.append(torch.zeros(V_SMALL))  # position 3: irrelevant for two tokens
        rows.append(torch.stack(rr) * T)
    target = torch.cat(rows)
    seeds = torch.arange(requests) * 7 + 3
    out, acc, emit = call(device, target, drafts, lengths, [T] * requests, seed=seeds, offset=[11] * requests,
                          draft_logits=draft_logits)
    out = out.cpu()
    y1 = out[:, 0]
    need = emit.cpu() < 2
    second = torch.stack([log(P2[y]) for y in y1[need]]) * T
    out2, _, _ = call(device, second, torch.full((int(need.sum()), 1), -1), [0] * int(need.sum()),
                      [T] * int(need.sum()), seed=seeds[need], offset=[12] * int(need.sum()))
    y2 = out[:, 1].clone()
    y2[need] = out2.cpu()[:, 0]
    return y1, y2


@pytest.mark.parametrize("sampled_drafts", [True, False], ids=["drafts~q", "deterministic"])
def test_output_distribution_is_the_target(device, sampled_drafts):
    requests = 12000
    lengths = torch.arange(requests) % 3  # 0, 1 and 2 drafts verified
    y1, y2 = two_token_outputs(device, requests, 0.8, sampled_drafts, lengths)
    assert_distribution(np.bincount(y1.numpy(), minlength=V_SMALL), P1.numpy(), "first token")
    joint = np.zeros((V_SMALL, V_SMALL))
    np.add.at(joint, (y1.numpy(), y2.numpy()), 1)
    assert_distribution(joint, (P1[:, None] * P2).numpy(), "first two tokens")


def test_acceptance_rate_matches_theory(device):
    # With drafts from q, P(accept x_1) = Σ min(p, q); a wrong coin rule would shift it.
    requests = 20000
    g = torch.Generator().manual_seed(1234)
    x1 = torch.multinomial(Q1, requests, replacement=True, generator=g)
    expected = float(torch.minimum(P1, Q1).sum())
    draft_logits = torch.stack([log(Q1).expand(requests, -1), log(Q1).expand(requests, -1)], 1)
    target = torch.stack([log(P1), torch.zeros(V_SMALL)]).repeat(requests, 1)
    _, acc, _ = call(device, target, torch.stack([x1, x1], 1), [1] * requests, [1.0] * requests,
                     seed=torch.arange(requests), draft_logits=draft_logits)
    assert_binomial(int(acc.sum()), requests, expected, "acceptance of x_1")


# ---------------------------------------------------------------- invariances


def random_case(R, gamma, V, seed=0, dtype=torch.float32, draft_dtype=None, greedy_every=3):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, gamma + 1, (R,), generator=g)
    N = int((lengths + 1).sum())
    target = (torch.randn(N, V, generator=g) * 2).to(dtype)
    draft_logits = (torch.randn(R, gamma, V, generator=g) * 2).to(draft_dtype or dtype)
    # Drafts: half from the target's argmax (often accepted), half random, a few -1.
    drafts = torch.randint(-1, V, (R, gamma), generator=g)
    temperature = torch.rand(R, generator=g) + 0.3
    temperature[::greedy_every] = 0.0
    seed_t = torch.randint(0, 2**62, (R,), generator=g)
    offset = torch.randint(0, 2**40, (R,), generator=g)
    return target, drafts, lengths, temperature, seed_t, offset, draft_logits


def to(device, args):
    return [a.to(device) if torch.is_tensor(a) else a for a in args]


@pytest.mark.parametrize("with_draft", [True, False])
def test_batch_invariance_and_repeatability(device, with_draft):
    target, drafts, lengths, temp, seed, offset, dl = to(device, random_case(9, 4, 37, seed=3))
    dl = dl if with_draft else None
    full = dspark_ops.verify_chain(target, drafts, lengths, temp, seed, offset, dl)
    again = dspark_ops.verify_chain(target, drafts, lengths, temp, seed, offset, dl)
    assert all(torch.equal(a, b) for a, b in zip(full, again))
    first = (torch.cumsum(lengths + 1, 0) - (lengths + 1)).tolist()
    for r in [0, 4, 8]:
        rows = target[first[r]:first[r] + int(lengths[r]) + 1]
        one = dspark_ops.verify_chain(rows, drafts[r:r + 1], lengths[r:r + 1], temp[r:r + 1], seed[r:r + 1],
                                      offset[r:r + 1], None if dl is None else dl[r:r + 1])
        assert one[0][0].tolist() == full[0][r].tolist()
        assert one[1].item() == full[1][r].item() and one[2].item() == full[2][r].item()


def test_offset_moves_the_stream(device):
    R, V = 400, 50
    target = torch.zeros(R, V, device=device)  # uniform p: the emitted token is pure randomness
    drafts = torch.full((R, 1), -1, device=device)
    args = (drafts, torch.zeros(R, dtype=torch.int64, device=device), torch.ones(R, device=device),
            torch.arange(R, device=device))
    a = dspark_ops.verify_chain(target, *args, torch.zeros(R, dtype=torch.int64, device=device))[0][:, 0]
    b = dspark_ops.verify_chain(target, *args, torch.ones(R, dtype=torch.int64, device=device))[0][:, 0]
    assert (a != b).float().mean() > 0.8
    assert len(torch.unique(a)) > 40  # different seeds draw different tokens
    # Same seed and offset everywhere: every request draws the same token.
    same = dspark_ops.verify_chain(target, drafts, args[1], args[2], torch.full((R,), 5, device=device),
                                   torch.zeros(R, dtype=torch.int64, device=device))[0][:, 0]
    assert len(torch.unique(same)) == 1


# ---------------------------------------------------------------- kernel vs reference


@pytest.mark.parametrize(
    "R,gamma,V,dtype,draft_dtype",
    [(1, 1, 7, torch.float32, None), (13, 5, 103, torch.float32, None), (6, 7, 1001, torch.bfloat16, torch.float32),
     (5, 3, 257, torch.float16, torch.bfloat16), (3, 0, 11, torch.float32, None)],
)
@pytest.mark.parametrize("with_draft", [True, False])
@pytest.mark.parametrize("with_eos", [True, False])
def test_kernel_matches_reference(device, R, gamma, V, dtype, draft_dtype, with_draft, with_eos):
    case = random_case(R, gamma, V, seed=R * 100 + V, dtype=dtype, draft_dtype=draft_dtype)
    target, drafts, lengths, temp, seed, offset, dl = to(device, case)
    dl = dl if with_draft else None
    eos = torch.tensor([1, 2, 3], device=device) if with_eos else None
    got = dspark_ops.verify_chain(target, drafts, lengths, temp, seed, offset, dl, eos)
    want = reference.verify_chain(target, drafts, lengths, temp, seed, offset, dl, eos)
    for g, w, name in zip(got, want, ["out_tokens", "num_accepted", "num_emitted"]):
        assert torch.equal(g.cpu(), w.cpu()), name


# ---------------------------------------------------------------- robustness


@pytest.mark.parametrize("temperature", [GREEDY, HOT])
@pytest.mark.parametrize("with_draft", [True, False])
def test_nan_rows_give_in_range_tokens(device, temperature, with_draft):
    R, gamma, V = 6, 3, 33
    target = torch.randn(R * (gamma + 1), V, device=device)
    target[::2] = float("nan")  # whole rows
    target[1::4, ::3] = float("nan")  # scattered entries
    dl = torch.randn(R, gamma, V, device=device)
    dl[::2, 1] = float("nan")
    drafts = torch.randint(0, V, (R, gamma), device=device)
    out, acc, emit = dspark_ops.verify_chain(
        target, drafts, torch.full((R,), gamma, device=device), torch.full((R,), temperature, device=device),
        torch.arange(R, device=device), torch.zeros(R, dtype=torch.int64, device=device), dl if with_draft else None)
    written = out[out >= 0]
    assert (written < V).all() and ((out == -1) | (out >= 0)).all()
    assert (emit == acc + 1).all()


def test_odd_and_large_vocabulary(device):
    V = 151937
    R, gamma = 3, 2
    g = torch.Generator().manual_seed(0)
    target = torch.randn(R * (gamma + 1), V, generator=g).to(torch.bfloat16).to(device)
    dl = torch.randn(R, gamma, V, generator=g).to(torch.bfloat16).to(device)
    best = target.float().argmax(-1).view(R, gamma + 1)
    drafts = best[:, :gamma].clone()
    temp = torch.tensor([0.0, 1.0, 0.6], device=device)
    args = (target, drafts, torch.full((R,), gamma, device=device), temp,
            torch.arange(R, device=device), torch.zeros(R, dtype=torch.int64, device=device), dl)
    got = dspark_ops.verify_chain(*args)
    assert got[0][0].tolist() == best[0].tolist()  # greedy: accepts the argmax chain + bonus
    want = reference.verify_chain(*args)
    assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(got, want))


@pytest.mark.slow
def test_rows_beyond_2_pow_31_elements(device):
    # 14,200 rows of 151,937 bf16 logits = 2.16e9 elements (4.3 GB): the last rows start past
    # 2^31 elements, so a 32-bit row offset would read the wrong memory.
    V, R = 151937, 14200
    if device == "cuda" and torch.cuda.get_device_properties(0).total_memory < 16 * 2**30:
        pytest.skip("needs 16 GiB of GPU memory")
    target = torch.zeros(R, V, dtype=torch.bfloat16, device=device)
    spikes = (torch.arange(R, device=device) * 7919 + 13) % V
    target[torch.arange(R, device=device), spikes] = 1.0
    assert R * V > 2**31
    out, acc, emit = dspark_ops.verify_chain(
        target, torch.full((R, 1), -1, device=device), torch.zeros(R, dtype=torch.int64, device=device),
        torch.zeros(R, device=device), torch.zeros(R, dtype=torch.int64, device=device),
        torch.zeros(R, dtype=torch.int64, device=device))
    assert torch.equal(out[:, 0], spikes)
    del target


def bad_call(device, **override):
    R, gamma, V = 2, 3, 10
    args = dict(
        target_logits=torch.zeros(R * (gamma + 1), V, device=device),
        draft_tokens=torch.zeros(R, gamma, dtype=torch.int64, device=device),
        lengths=torch.full((R,), gamma, dtype=torch.int64, device=device),
        temperature=torch.ones(R, device=device),
        seed=torch.zeros(R, dtype=torch.int64, device=device),
        offset=torch.zeros(R, dtype=torch.int64, device=device),
        draft_logits=torch.zeros(R, gamma, V, device=device),
        eos_ids=None,
    )
    args.update(override)
    return dspark_ops.verify_chain(**args)


@pytest.mark.parametrize(
    "name,value",
    [
        ("target_logits", lambda d: torch.zeros(8, 10, dtype=torch.int64, device=d)),
        ("target_logits", lambda d: torch.zeros(8, device=d)),
        ("target_logits", lambda d: torch.zeros(8, 0, device=d)),
        ("draft_tokens", lambda d: torch.zeros(2, 3, device=d)),
        ("draft_tokens", lambda d: torch.zeros(6, dtype=torch.int64, device=d)),
        ("lengths", lambda d: torch.zeros(2, device=d)),
        ("lengths", lambda d: torch.zeros(3, dtype=torch.int64, device=d)),
        ("temperature", lambda d: torch.ones(2, dtype=torch.float64, device=d)),
        ("temperature", lambda d: torch.ones(1, device=d)),
        ("seed", lambda d: torch.zeros(2, dtype=torch.int32, device=d)),
        ("offset", lambda d: torch.zeros(2, 1, dtype=torch.int64, device=d)),
        ("draft_logits", lambda d: torch.zeros(2, 3, 11, device=d)),
        ("draft_logits", lambda d: torch.zeros(2, 4, 10, device=d)),
        ("draft_logits", lambda d: torch.zeros(2, 3, 10, dtype=torch.int64, device=d)),
        ("eos_ids", lambda d: torch.zeros(2, 2, dtype=torch.int64, device=d)),
        ("eos_ids", lambda d: torch.zeros(2, device=d)),
    ],
)
def test_bad_shapes_and_dtypes(device, name, value):
    with pytest.raises(RuntimeError, match=f"'{name}'"):
        bad_call(device, **{name: value(device)})


@requires_cuda
def test_wrong_device_is_named():
    with pytest.raises(RuntimeError, match="'seed'"):
        bad_call("cuda", seed=torch.zeros(2, dtype=torch.int64))


def test_bad_values_on_cpu():
    with pytest.raises(RuntimeError, match="'lengths'"):
        bad_call("cpu", lengths=torch.tensor([4, 2]))
    with pytest.raises(RuntimeError, match="'lengths'"):
        bad_call("cpu", lengths=torch.tensor([-1, 2]))
    with pytest.raises(RuntimeError, match="'target_logits'.*rows"):
        bad_call("cpu", lengths=torch.tensor([1, 2]))


# ---------------------------------------------------------------- CUDA specifics


@requires_cuda
@pytest.mark.parametrize("V,dtype", [(1001, torch.float32), (151937, torch.bfloat16), (32000, torch.float16)])
def test_cuda_agrees_with_cpu(V, dtype):
    case = random_case(24, 7, V, seed=V, dtype=dtype)
    cpu = dspark_ops.verify_chain(*case)
    gpu = dspark_ops.verify_chain(*to("cuda", case))
    for c, g in zip(cpu, gpu):
        assert torch.equal(c, g.cpu())


@requires_cuda
def test_cuda_rows_past_the_end_are_absent():
    # Without DSPARK_CHECK the kernel trusts lengths; rows it does not have are not read.
    target = torch.zeros(3, 8, device="cuda")
    out, acc, emit = dspark_ops.verify_chain(
        target, torch.zeros(1, 5, dtype=torch.int64, device="cuda"), torch.tensor([5], device="cuda"),
        torch.zeros(1, device="cuda"), torch.zeros(1, dtype=torch.int64, device="cuda"),
        torch.zeros(1, dtype=torch.int64, device="cuda"))
    torch.cuda.synchronize()
    assert int(emit[0]) <= 3 and ((out >= -1) & (out < 8)).all()


# ---------------------------------------------------------------- SPEC §4: invalid drafts, §9 filters, draft_probs, §10 draft_ids

P4 = torch.tensor([0.4, 0.3, 0.2, 0.1])
Q4 = torch.tensor([0.1, 0.1, 0.4, 0.4])


def first_tokens(device, target_rows, drafts, q=None, *, requests, seed0=0, **kw):
    """Emitted first token of `requests` one-draft rounds: target rows [2, V] (p_1, p_2) and
    drafts [requests] verified with q rows [V] (logits via log, or kw draft_probs/draft_ids)."""
    V = target_rows.shape[1]
    target = target_rows.repeat(requests, 1)
    if q is not None:
        kw["draft_logits"] = log(q).expand(requests, 1, V)
    extra = {k: v.to(device) if torch.is_tensor(v) else v for k, v in kw.items()}
    out, acc, emit = dspark_ops.verify_chain(
        target.to(device), drafts[:, None].to(device), torch.ones(requests, dtype=torch.int64, device=device),
        1.0, torch.arange(requests, device=device) + seed0, 0, **extra)
    return out[:, 0].cpu(), acc.cpu()


def test_invalid_draft_inside_lengths_draws_from_p(device):
    # SPEC §4 revised: an id outside [0, V) was not drawn from q, so the draw is from p_1
    # itself (a residual draw would never emit tokens where q >= p: frequencies [.6, .4, 0, 0]).
    requests = 20000
    for bad in (-1, 4, 1 << 40):
        y, acc = first_tokens(device, torch.stack([log(P4), log(P4)]), torch.full((requests,), bad), Q4,
                              requests=requests)
        assert acc.sum() == 0
        assert_distribution(np.bincount(y.numpy(), minlength=4), P4.numpy(), f"draw after draft id {bad}")


# Rows with ties at every boundary: p = [.3, .2, .2, .1, .1, .1] (V = 6), and the filters.
P_TIES = torch.tensor([0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
FILTER_CASES = [  # (top_k, top_p, min_p); 0 / 1 / 0 are off
    (0, 1.0, 0.0), (2, 1.0, 0.0), (3, 1.0, 0.0), (0, 0.5, 0.0), (0, 0.6, 0.0), (0, 1.0, 0.5),
    (0, 1.0, 0.34), (2, 0.4, 0.0), (4, 0.75, 0.3), (5, 0.9, 0.25), (-3, 1.0, 0.0), (6, 1.0, 1.0),
]


def test_filtered_distribution_by_enumeration():
    # The filter of dspark/filters.h (through its twin) keeps exactly the SPEC's set on a row
    # with ties at every boundary, for every case, and the SPEC's filtered p is what the rule
    # u * q < p with the residual reproduces: enumerating every draft x (weight q(x)) gives
    # P(y) = Σ_x q(x) [min(1, p(x)/q(x)) δ_xy + (1 - min(1, p(x)/q(x))) r(y)] = p'(y) exactly.
    from dspark_ops.reference.filters import apply_filter, filter_threshold

    s = torch.log(P_TIES)
    q = torch.tensor([0.05, 0.05, 0.3, 0.3, 0.2, 0.1], dtype=torch.float64)
    for k, tp, mp in FILTER_CASES:
        theta = filter_threshold(s[None], torch.tensor([k]), torch.tensor([tp]), torch.tensor([mp]))
        kept = torch.softmax(apply_filter(s[None], theta)[0].double(), 0)
        want = brute_filter(P_TIES, k, tp, mp)
        assert torch.allclose(kept, want, atol=1e-6), (k, tp, mp, kept, want)
        accept = torch.minimum(torch.ones_like(q), want / q)
        residual = (want - q).clamp_min(0)
        residual = residual / residual.sum()
        emitted = q * accept + (q * (1 - accept)).sum() * residual
        assert torch.allclose(emitted, want, atol=1e-12)


def test_filtered_outputs_follow_the_filtered_target(device):
    # Every filter case in one batch (per-request filters), drafts drawn from an unfiltered q
    # (half the requests) or from q filtered like the target (drafts and q from an engine that
    # filters its drafter too): the first token follows the filtered target in every case.
    per_case, V = 6000, 6
    g = torch.Generator().manual_seed(7)
    q_raw = torch.tensor([0.05, 0.05, 0.3, 0.3, 0.2, 0.1])
    cases = FILTER_CASES * 2
    R = per_case * len(cases)
    tk = torch.tensor([c[0] for c in cases]).repeat_interleave(per_case)
    tp = torch.tensor([c[1] for c in cases]).repeat_interleave(per_case)
    mp = torch.tensor([c[2] for c in cases]).repeat_interleave(per_case)
    q_rows = []
    for i, (k, p_, m) in enumerate(cases):
        q_rows.append(q_raw if i < len(FILTER_CASES) else brute_filter(q_raw, k, p_, m).float())
    q = torch.stack(q_rows).repeat_interleave(per_case, 0)  # [R, V]
    drafts = torch.multinomial(q, 1, generator=g).squeeze(1)
    target = torch.stack([log(P_TIES), log(P_TIES)]).repeat(R, 1)
    out, acc, _ = dspark_ops.verify_chain(
        target.to(device), drafts[:, None].to(device), torch.ones(R, dtype=torch.int64, device=device), 1.0,
        torch.arange(R, device=device), 5, draft_logits=log(q)[:, None].to(device),
        top_k=tk.to(device), top_p=tp.to(device), min_p=mp.to(device))
    y = out[:, 0].cpu().view(len(cases), per_case)
    for i, (k, p_, m) in enumerate(cases):
        want, counts = brute_filter(P_TIES, k, p_, m).numpy(), np.bincount(y[i].numpy(), minlength=V)
        if (want > 0).sum() == 1:  # one token left: every draw must be it
            assert counts[want == 0].sum() == 0, (k, p_, m, counts)
        else:
            assert_distribution(counts, want, f"filters {(k, p_, m)}, {'filtered' if i >= len(FILTER_CASES) else 'raw'} q")


def test_filters_off_are_bit_identical_and_greedy_ignores_them(device):
    target, drafts, lengths, temp, seed, offset, dl = to(device, random_case(12, 4, 37, seed=21))
    R, V = 12, 37
    base = dspark_ops.verify_chain(target, drafts, lengths, temp, seed, offset, dl)
    off = dspark_ops.verify_chain(target, drafts, lengths, temp, seed, offset, dl,
                                  top_k=torch.tensor([0, V, -5] * 4, device=device),
                                  top_p=torch.ones(R, device=device), min_p=torch.zeros(R, device=device))
    assert all(torch.equal(a, b) for a, b in zip(base, off))
    tight = dspark_ops.verify_chain(target, drafts, lengths, temp, seed, offset, dl, top_k=1, top_p=0.1, min_p=0.9)
    greedy = temp <= 1e-5
    assert all(torch.equal(a[greedy], b[greedy]) for a, b in zip(base, tight))


def filter_case(R, seed):
    g = torch.Generator().manual_seed(seed)
    tk = torch.randint(-1, 8, (R,), generator=g)
    tp = torch.where(torch.rand(R, generator=g) < 0.4, torch.ones(R), torch.rand(R, generator=g) * 0.9 + 0.05)
    mp = torch.where(torch.rand(R, generator=g) < 0.5, torch.zeros(R), torch.rand(R, generator=g) * 0.5)
    return tk, tp, mp


@pytest.mark.parametrize("q_kind", ["logits", "probs", "sparse_logits", "sparse_probs", "none"])
def test_new_arguments_match_reference(device, q_kind):
    R, gamma, V, K = 40, 4, 29, 7
    target, drafts, lengths, temp, seed, offset, dl = random_case(R, gamma, V, seed=31)
    target[3, :5] = float("nan")
    target[target > 2.5] = 2.5  # ties at the top
    tk, tp, mp = filter_case(R, 5)
    g = torch.Generator().manual_seed(2)
    kw = {}
    if q_kind == "logits":
        kw["draft_logits"] = dl
    elif q_kind == "probs":
        kw["draft_probs"] = torch.softmax(dl, -1) * (torch.rand(R, gamma, V, generator=g) > 0.3)
    elif q_kind.startswith("sparse"):
        ids = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(R * gamma)]).view(R, gamma, K)
        ids[torch.rand(R, gamma, K, generator=g) < 0.2] = -1
        kw["draft_ids"] = ids
        vals = torch.randn(R, gamma, K, generator=g)
        kw["draft_logits" if q_kind == "sparse_logits" else "draft_probs"] = (
            vals if q_kind == "sparse_logits" else torch.softmax(vals, -1))
        drafts = torch.where(torch.rand(R, gamma, generator=g) < 0.7, ids[..., 0], drafts)
    args = (target, drafts, lengths, temp, seed, offset)
    got = dspark_ops.verify_chain(*to(device, args), top_k=tk.to(device), top_p=tp.to(device), min_p=mp.to(device),
                                  **{k: v.to(device) for k, v in kw.items()})
    want = reference.verify_chain(*args, top_k=tk, top_p=tp, min_p=mp, **kw)
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b)


def test_draft_probs_keep_zeros_exact(device):
    # q with exact zeros: drafts from q, verified with draft_probs, follow p; q = 0 stays 0
    # (a log / softmax round trip would give the -inf entries a tiny mass on some paths).
    requests = 20000
    q = torch.tensor([0.0, 0.5, 0.5, 0.0])
    drafts = torch.multinomial(q, requests, replacement=True, generator=torch.Generator().manual_seed(3))
    y, acc = first_tokens(device, torch.stack([log(P4), log(P4)]), drafts, requests=requests,
                          draft_probs=q.expand(requests, 1, 4).contiguous())
    assert_distribution(np.bincount(y.numpy(), minlength=4), P4.numpy(), "draft_probs with zeros")
    expected_accept = float(torch.minimum(P4, q).sum())
    assert_distribution([int(acc.sum()), requests - int(acc.sum())], [expected_accept, 1 - expected_accept],
                        "acceptance with draft_probs")


@pytest.mark.parametrize("q_values", ["logits", "probs"])
def test_sparse_q_is_lossless(device, q_values):
    # K = 3 listed ids (plus one -1 padding entry) of V = 6; drafts drawn from that sparse q.
    requests, V = 20000, 6
    ids = torch.tensor([4, -1, 1, 2])
    q_listed = torch.tensor([0.5, 0.0, 0.3, 0.2])
    q_dense = torch.zeros(V)
    q_dense[ids[ids >= 0]] = q_listed[ids >= 0]
    drafts = torch.multinomial(q_dense, requests, replacement=True, generator=torch.Generator().manual_seed(4))
    kw = {"draft_ids": ids.expand(requests, 1, 4).contiguous()}
    if q_values == "logits":
        kw["draft_logits"] = log(q_listed).expand(requests, 1, 4).contiguous()
    else:
        kw["draft_probs"] = q_listed.expand(requests, 1, 4).contiguous()
    y, acc = first_tokens(device, torch.stack([log(P_TIES), log(P_TIES)]), drafts, requests=requests, **kw)
    assert_distribution(np.bincount(y.numpy(), minlength=V), P_TIES.numpy(), f"sparse q ({q_values})")
    expected_accept = float(torch.minimum(P_TIES, q_dense).sum())
    assert_distribution([int(acc.sum()), requests - int(acc.sum())], [expected_accept, 1 - expected_accept],
                        "acceptance with sparse q")


def test_sparse_q_with_every_id_equals_dense(device):
    # K = V listed in a shuffled order: the same q as the dense row, so the same tokens as
    # the reference with dense logits (keyed by vocabulary id, not by list position).
    R, gamma, V = 16, 3, 23
    target, drafts, lengths, temp, seed, offset, dl = random_case(R, gamma, V, seed=41)
    perm = torch.stack([torch.randperm(V, generator=torch.Generator().manual_seed(i)) for i in range(R * gamma)])
    ids = perm.view(R, gamma, V)
    got = dspark_ops.verify_chain(*to(device, (target, drafts, lengths, temp, seed, offset)),
                                  draft_logits=dl.gather(-1, ids).to(device), draft_ids=ids.to(device))
    want = reference.verify_chain(target, drafts, lengths, temp, seed, offset, dl)
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b)


@pytest.mark.parametrize("name,value,match", [
    ("draft_ids", torch.tensor([[[0, 0, 1]]]), "repeat"),
    ("draft_ids", torch.tensor([[[0, 9, 1]]]), "draft_ids"),
    ("draft_ids", torch.tensor([[[0, -2, 1]]]), "draft_ids"),
    ("top_p", torch.tensor([0.0]), "top_p"),
    ("top_p", torch.tensor([1.5]), "top_p"),
    ("min_p", torch.tensor([-0.1]), "min_p"),
    ("min_p", torch.tensor([float("nan")]), "min_p"),
    ("top_k", torch.tensor([1.0]), "top_k"),
    ("draft_probs", torch.ones(1, 1, 9, dtype=torch.float64), "draft_probs"),
])
def test_bad_new_arguments_on_cpu(name, value, match):
    kw = {"draft_logits": torch.zeros(1, 1, 3), "draft_ids": torch.tensor([[[0, 1, 2]]])}
    if name == "draft_probs":
        kw = {name: value}
    else:
        kw[name] = value
    with pytest.raises(RuntimeError, match=match):
        dspark_ops.verify_chain(torch.zeros(2, 9), torch.tensor([[1]]), torch.tensor([1]), 1.0, 0, 0, **kw)


def test_draft_logits_and_probs_together_is_an_error():
    with pytest.raises(RuntimeError, match="draft_probs"):
        dspark_ops.verify_chain(torch.zeros(2, 9), torch.tensor([[1]]), torch.tensor([1]), 1.0, 0, 0,
                                draft_logits=torch.zeros(1, 1, 9), draft_probs=torch.ones(1, 1, 9) / 9)
    with pytest.raises(RuntimeError, match="draft_ids"):
        dspark_ops.verify_chain(torch.zeros(2, 9), torch.tensor([[1]]), torch.tensor([1]), 1.0, 0, 0,
                                draft_ids=torch.tensor([[[1]]]))


def test_python_scalars_and_lists(device):
    target, drafts, lengths, temp, seed, offset, dl = to(device, random_case(3, 2, 11, seed=51, greedy_every=9))
    R = 3
    want = dspark_ops.verify_chain(target, drafts, lengths, torch.full((R,), 0.7, device=device),
                                   torch.zeros(R, dtype=torch.int64, device=device),
                                   torch.full((R,), 5, dtype=torch.int64, device=device), dl,
                                   top_p=torch.tensor([0.9, 1.0, 0.5], device=device),
                                   top_k=torch.full((R,), 4, device=device))
    got = dspark_ops.verify_chain(target, drafts, lengths, 0.7, 0, 5, dl, top_p=[0.9, 1.0, 0.5], top_k=4)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(RuntimeError, match="top_p"):
        dspark_ops.verify_chain(target, drafts, lengths, 0.7, 0, 5, dl, top_p=[0.9, 1.0])  # not [R]


def test_new_arguments_opcheck_and_compile(device):
    R, gamma, V, K = 5, 3, 17, 4
    target, drafts, lengths, temp, seed, offset, dl = to(device, random_case(R, gamma, V, seed=61))
    tk, tp, mp = to(device, filter_case(R, 9))
    ids = torch.stack([torch.randperm(V)[:K] for _ in range(R * gamma)]).view(R, gamma, K).to(device)
    probs = torch.softmax(dl, -1)
    op = torch.ops.dspark.verify_chain.default
    base = (target, drafts, lengths, temp, seed, offset)
    for extra in [(dl, None, tk, tp, mp), (None, None, tk, None, None, probs), (dl[..., :K], None, None, tp, None,
                                                                                   None, ids)]:
        torch.library.opcheck(op, base + extra)

    @torch.compile(fullgraph=True, backend="eager" if device == "cpu" else "inductor")
    def step(target, drafts, lengths, temp, seed, offset, sparse, ids, tk, tp):
        out, acc, emit = dspark_ops.verify_chain(target, drafts, lengths, temp, seed, offset, draft_logits=sparse,
                                                 top_k=tk, top_p=tp, draft_ids=ids)
        return out, acc + 0, emit * 1

    got = step(*base, dl[..., :K], ids, tk, tp)
    want = dspark_ops.verify_chain(*base, draft_logits=dl[..., :K], top_k=tk, top_p=tp, draft_ids=ids)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.slow
def test_filtered_chi_square_at_32000(device):
    # V = 32000 (bf16 logits), top-k 50 then top-p 0.9: 3000 zero-length rounds (bonus draws)
    # follow the filtered target.
    requests, V = 3000, 32000
    g = torch.Generator().manual_seed(8)
    row = torch.randn(V, generator=g) * 3
    target = row.to(torch.bfloat16).expand(requests, V).contiguous()
    out, _, _ = dspark_ops.verify_chain(target.to(device), torch.zeros(requests, 1, dtype=torch.int64, device=device),
                                        torch.zeros(requests, dtype=torch.int64, device=device), 1.0,
                                        torch.arange(requests, device=device), 0, top_k=50, top_p=0.9)
    p = torch.softmax(row.to(torch.bfloat16).float().double(), 0)
    want = brute_filter(p, 50, 0.9, 0.0)
    support = want.nonzero().squeeze(1)
    counts = np.bincount(out[:, 0].cpu().numpy(), minlength=V)
    assert counts.sum() == counts[support.numpy()].sum(), "a filtered-out token was emitted"
    assert_distribution(counts[support.numpy()], want[support].numpy(), "top-k 50 + top-p 0.9 at V = 32000")


def test_race_noise_bound_covers_every_uniform():
    """The CPU races (cpu/row_dist.h) skip an entry's two logarithms when
    log_weight + gumbel_upper_bound(u) < best. That never changes a winner only if the bound is
    at least the noise -log(-log u) for every open uniform u = (k + 0.5) 2^-23 (all 2^23 of
    them, here), with room for the rounding of logf. The bound below is the C++ one, step for
    step in float32."""
    u = ((np.arange(1 << 23, dtype=np.float64) + 0.5) / (1 << 23)).astype(np.float32)
    chord = (np.float32(1.0) - u).view(np.int32).astype(np.float32) * np.float32(1.0 / 8388608.0)
    bound = np.float32(0.6931472) * (np.float32(127.0) - chord) + np.float32(1e-3)
    exact = -np.log(-np.log(u.astype(np.float64)))
    rounded = -np.log(-np.log(u))  # float32 logs, as the kernels' logf
    assert (bound.astype(np.float64) >= exact + 5e-4).all()
    assert (bound >= rounded).all()
    # It must also prune: for most uniforms it lies within 1.5 of the noise itself.
    assert np.mean(bound - exact < 1.5) > 0.9
