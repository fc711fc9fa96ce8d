"""End-to-end tests of the reference speculative ``generate`` loop (SPEC §1, §8).

The target is a tiny random transformer in float64 (so that the cached, batched verify
pass and the no-cache reference agree far below float32 rounding: greedy ties cannot flip);
the references below never use the KV cache or the loop.
"""

from __future__ import annotations

import math

import pytest
import torch

from dspark_ops import ConfidenceThreshold, FixedLength, SPSSchedule, generate, target_decode
from dspark_ops.speculative.proposers import AlwaysWrongDrafter, Proposal, RandomDrafter, TinyDrafter
from dspark_ops.speculative.targets import HFCausalLM, TinyCausalLM, TinyConfig

from stats import assert_distribution

V = 96
CFG = TinyConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, d_ff=64, hidden_layers=(1, 2))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: intra-op threads only add contention (4x slower on a
    shared 2-core CI box). Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_target(device="cpu", seed=0, cfg=CFG):
    return TinyCausalLM(cfg, seed=seed, dtype=torch.float64, device=device)


def make_draft_model(target: TinyCausalLM, noise: float, seed: int = 1):
    """A copy of the target with Gaussian noise on every weight: agrees often, not always."""
    return target.perturbed(noise, seed)


def make_prompts(n: int, seed: int = 0, lo: int = 1, hi: int = 12, vocab: int = V) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (n,), generator=gen).tolist()
    return [torch.randint(0, vocab, (l,), generator=gen).tolist() for l in lens]


@torch.no_grad()
def greedy_reference(logits_fn, prompt, max_new, eos=()):
    """Plain greedy decoding by full recomputation (no cache): argmax of the float32 logits,
    the lowest index on ties; stops after the first EOS, which is kept."""
    seq, out = list(prompt), []
    for _ in range(max_new):
        tok = int(logits_fn(seq).float().argmax())
        out.append(tok)
        seq.append(tok)
        if tok in eos:
            break
    return out


def tiny_logits(model):
    return lambda seq: model(torch.tensor([seq], device=model.device))[0, -1]


class ScriptedDrafter:
    """Proposes each request's known continuation (``script[r]``), corrupted at the
    generated-token indices where ``wrong(index)`` is true: lets a test decide exactly which
    drafts are right. Deterministic (``draft_logits`` None). Host-side bookkeeping only."""

    def __init__(self, script, wrong=lambda i: False, vocab=V):
        self.script, self.wrong, self.vocab = script, wrong, vocab

    def begin(self, tokens, lengths, hidden, capacity):
        self.rows = list(range(lengths.shape[0]))
        self.generated = [1] * len(self.rows)  # the anchor is generated token 0

    def propose(self, anchor, temperature, seed, offset, gamma):
        out = []
        for r, g in zip(self.rows, self.generated):
            row = []
            for i in range(g, g + gamma):
                t = self.script[r][i] if i < len(self.script[r]) else -1
                row.append((t + 1) % self.vocab if t >= 0 and self.wrong(i) else t)
            out.append(row)
        return Proposal(torch.tensor(out, dtype=torch.int64, device=anchor.device).reshape(-1, gamma))

    def commit(self, tokens, lengths, keep, hidden):
        self.generated = [g + k for g, k in zip(self.generated, keep.tolist())]

    def retain(self, index):
        index = index.tolist()
        self.rows = [self.rows[i] for i in index]
        self.generated = [self.generated[i] for i in index]


class RecordingDrafter:
    """Wraps a drafter and records the context (tokens + target hidden states) it is given."""

    def __init__(self, inner):
        self.inner = inner
        self.log = []

    def begin(self, tokens, lengths, hidden, capacity):
        self.rows = list(range(lengths.shape[0]))
        self.ctx = {r: [] for r in self.rows}
        self._add(tokens, lengths, lengths, hidden)
        self.inner.begin(tokens, lengths, hidden, capacity)

    def _add(self, tokens, lengths, keep, hidden):
        start = 0
        for j, (l, k) in enumerate(zip(lengths.tolist(), keep.tolist())):
            for i in range(k):
                self.ctx[self.rows[j]].append((int(tokens[start + i]), hidden[start + i].clone()))
            start += l

    def propose(self, *args):
        return self.inner.propose(*args)

    def commit(self, tokens, lengths, keep, hidden):
        self._add(tokens, lengths, keep, hidden)
        self.inner.commit(tokens, lengths, keep, hidden)

    def retain(self, index):
        self.rows = [self.rows[i] for i in index.tolist()]
        self.inner.retain(index)


@pytest.fixture(scope="module")
def target():
    return make_target()


@pytest.fixture(scope="module")
def draft_model(target):
    return make_draft_model(target, noise=0.05)


# --------------------------------------------------------------------------------------
# The adapters themselves.


def test_tiny_cache_matches_full_forward(device):
    """prefill, verify (variable lengths, one of them 0) and partial rollback give the same
    logits and hidden states as the no-cache forward over the committed sequence."""
    model = make_target(device)
    prompts = [[3, 1, 4, 1, 5], [9], [2, 6, 5]]
    lens = torch.tensor([5, 1, 3], device=device)
    out = model.prefill(torch.tensor(sum(prompts, []), device=device), lens, 32)
    for r, p in enumerate(prompts):
        torch.testing.assert_close(out.logits[r], model(torch.tensor([p], device=device))[0, -1])
    seqs = [list(p) for p in prompts]
    blocks = [[7, 8, 9], [], [11, 12]]
    keeps = [2, 0, 1]
    for step in range(2):
        flat = torch.tensor(sum(blocks, []), device=device)
        vl = torch.tensor([len(b) for b in blocks], device=device)
        out = model.verify(flat, vl, 3)
        start = 0
        for r, b in enumerate(blocks):
            if b:
                full = model(torch.tensor([seqs[r] + b], device=device))[0, -len(b):]
                torch.testing.assert_close(out.logits[start : start + len(b)], full)
            start += len(b)
        assert out.hidden.shape == (flat.numel(), 2 * CFG.d_model)
        model.rollback(torch.tensor(keeps, device=device))
        for r, b in enumerate(blocks):
            seqs[r] += b[: keeps[r]]
        blocks = [[20 + step, 21], [5], [30, 31, 32]]
        keeps = [1, 1, 3]


# --------------------------------------------------------------------------------------
# Greedy losslessness.

POLICIES = {
    "fixed": lambda: FixedLength(),
    "fixed2": lambda: FixedLength(2),
    "threshold": lambda: ConfidenceThreshold(0.6),
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_greedy_equals_target_greedy(device, policy):
    target = make_target(device)
    drafter = TinyDrafter(make_draft_model(target, noise=0.05))
    prompts = make_prompts(6, seed=1)
    max_new = [24, 17, 30, 5, 24, 11]
    res = generate(target, drafter, prompts, max_new_tokens=max_new, gamma=4, schedule=POLICIES[policy]())
    for p, n, toks in zip(prompts, max_new, res.tokens):
        assert toks == greedy_reference(tiny_logits(target), p, n)
    assert res.finish_reason == ["length"] * 6
    lengths = [l for s in res.rounds for l in s.lengths]
    accepted = [a for s in res.rounds for a in s.accepted]
    assert sum(accepted) > 0, "the drafter should get some drafts accepted"
    assert sum(accepted) < sum(lengths), "and some rejected"
    assert max(lengths) <= (2 if policy == "fixed2" else 4)
    if policy == "threshold":
        assert min(lengths) < max(lengths), "the threshold policy should vary the lengths"
    _check_stats(res, max_new)


def _check_stats(res, max_new):
    """Bookkeeping that every run must satisfy."""
    emitted = {}
    for s in res.rounds:
        assert len(s.requests) == len(s.lengths) == len(s.accepted) == len(s.emitted)
        for r, l, a, e in zip(s.requests, s.lengths, s.accepted, s.emitted):
            assert 0 <= a <= l <= res.gamma and e in (a, a + 1)
            emitted[r] = emitted.get(r, 0) + e
        assert set(s.times) == {"draft", "schedule", "target", "verify", "update"}
    for r, toks in enumerate(res.tokens):
        assert len(toks) <= max_new[r]
        assert emitted.get(r, 0) + (1 if max_new[r] > 0 else 0) == len(toks)
    acc = res.acceptance_by_position()
    assert all(math.isnan(a) or 0 <= a <= 1 for a in acc)


def test_greedy_equals_target_greedy_sps_schedule():
    target = make_target()
    drafter = TinyDrafter(make_draft_model(target, noise=0.05))
    prompts = make_prompts(6, seed=2)
    gamma = 4
    # A step rate that falls with the verify batch: long blocks only pay when they are likely.
    sps = 1.0 / (1.0 + 0.15 * torch.arange(len(prompts) * (gamma + 1) + 1, dtype=torch.float32))
    res = generate(target, drafter, prompts, max_new_tokens=20, gamma=gamma, schedule=SPSSchedule(sps))
    for p, toks in zip(prompts, res.tokens):
        assert toks == greedy_reference(tiny_logits(target), p, 20)
    lengths = [l for s in res.rounds for l in s.lengths]
    assert min(lengths) < max(lengths)
    _check_stats(res, [20] * 6)


@pytest.mark.parametrize("drafter_kind", ["always_wrong", "random"])
def test_wrong_drafter_still_exact(target, drafter_kind):
    prompts = make_prompts(5, seed=3)
    drafter = AlwaysWrongDrafter() if drafter_kind == "always_wrong" else RandomDrafter(V)
    res = generate(target, drafter, prompts, max_new_tokens=12, gamma=3)
    for p, toks in zip(prompts, res.tokens):
        assert toks == greedy_reference(tiny_logits(target), p, 12)
    if drafter_kind == "always_wrong":
        assert all(a == 0 for s in res.rounds for a in s.accepted)
        assert res.num_rounds == 11


def test_always_wrong_drafter_sampling_equals_plain_sampling(target):
    """A draft that is never accepted (-1, q = 0) makes the emitted token a draw from the
    full target distribution with the noise of position 1 — the very draw of plain decoding
    (ℓ = 0) with the same seeds: the outputs are identical token for token."""
    prompts = make_prompts(8, seed=4)
    kw = dict(max_new_tokens=10, temperature=[1.0, 0.7, 1.3, 0.0, 1.0, 2.0, 0.5, 1.0], seed=list(range(100, 108)))
    spec = generate(target, AlwaysWrongDrafter(), prompts, gamma=3, **kw)
    plain = target_decode(target, prompts, **kw)
    assert spec.tokens == plain.tokens


def test_oracle_drafter_accepts_everything(target):
    prompts = make_prompts(4, seed=5)
    refs = [greedy_reference(tiny_logits(target), p, 21) for p in prompts]
    res = generate(target, ScriptedDrafter(refs), prompts, max_new_tokens=21, gamma=4)
    assert res.tokens == refs
    # 1 (prefill) + 4 rounds of 5 tokens = 21: every draft accepted, no round wasted.
    assert res.num_rounds == 4
    assert res.acceptance_by_position() == [1.0] * 4
    assert res.tokens_per_round() == 5.0


def test_partially_wrong_script_acceptance_by_position(target):
    """Drafts wrong exactly at generated indices ≡ 0 mod 3: the accepted lengths and the
    per-position acceptance follow from the script, and the output is still exact."""
    prompts = make_prompts(3, seed=6)
    refs = [greedy_reference(tiny_logits(target), p, 30) for p in prompts]
    res = generate(target, ScriptedDrafter(refs, wrong=lambda i: i % 3 == 0), prompts, max_new_tokens=30, gamma=4)
    assert res.tokens == refs
    # After a rejection at index 3m the anchor is ref[3m] and the drafts are indices 3m+1..:
    # two right, then a wrong one, so every full round accepts exactly 2.
    full = [a for s in res.rounds for a, l in zip(s.accepted, s.lengths) if l == 4]
    assert full and all(a == 2 for a in full)


# --------------------------------------------------------------------------------------
# Edge cases of the loop.


def test_eos_in_first_round(target, draft_model):
    prompts = make_prompts(4, seed=7)
    refs = [greedy_reference(tiny_logits(target), p, 16) for p in prompts]
    # Request 0 stops on its very first token (from the prefill), request 2 on its third
    # (inside the first drafted block); the others only if they meet one of these ids.
    eos = [refs[0][0], refs[2][2]]
    expect = [greedy_reference(tiny_logits(target), p, 16, eos) for p in prompts]
    assert expect[0] == refs[0][:1] and expect[2][-1] in eos and len(expect[2]) <= 3
    for drafter in (TinyDrafter(draft_model), ScriptedDrafter(refs), AlwaysWrongDrafter()):
        res = generate(target, drafter, prompts, max_new_tokens=16, gamma=4, eos_ids=eos)
        assert res.tokens == expect
        for toks, why in zip(res.tokens, res.finish_reason):
            assert why == ("eos" if toks[-1] in eos else "length")
        assert 0 not in res.rounds[0].requests  # finished at the prefill: never drafted


def test_eos_accepted_inside_block(target):
    """An accepted EOS draft ends the request at once (verify_chain emits nothing after it)."""
    prompts = make_prompts(2, seed=8)
    refs = [greedy_reference(tiny_logits(target), p, 16) for p in prompts]
    # The EOS is draft x_k of round 1 (generated index k; index 0 is the prefill's token).
    k = next(i for i in (3, 2, 1) if refs[0][i] not in refs[0][:i])
    eos = [refs[0][k]]
    expect = [greedy_reference(tiny_logits(target), p, 16, eos) for p in prompts]
    assert expect[0] == refs[0][: k + 1]
    res = generate(target, ScriptedDrafter(refs), prompts, max_new_tokens=16, gamma=4, eos_ids=eos)
    assert res.tokens == expect
    assert res.finish_reason[0] == "eos"
    first = res.rounds[0]
    j = first.requests.index(0)
    assert first.accepted[j] == k and first.emitted[j] == k  # accepted, nothing emitted after
    assert all(0 not in s.requests for s in res.rounds[1:])


def test_max_new_tokens_mid_block(device):
    target = make_target(device)
    prompts = make_prompts(6, seed=9)
    max_new = [0, 1, 2, 7, 9, 13]  # with γ = 4 and every draft right, 7/9/13 end mid-block
    refs = [greedy_reference(tiny_logits(target), p, n) for p, n in zip(prompts, max_new)]
    for drafter in (ScriptedDrafter(refs), TinyDrafter(make_draft_model(target, 0.05))):
        res = generate(target, drafter, prompts, max_new_tokens=max_new, gamma=4)
        assert res.tokens == refs
        assert [len(t) for t in res.tokens] == max_new
        _check_stats(res, max_new)
        for s in res.rounds:
            assert 0 not in s.requests and 1 not in s.requests
    # With perfect drafts only the cap shortens a block: max_new = 7 gives 1 (prefill) + 5
    # (ℓ = 4) + 1 (ℓ = 0); 9 gives 1 + 5 + 3 (ℓ = 2); 13 gives 1 + 5 + 5 + 2 (ℓ = 1).
    res = generate(target, ScriptedDrafter(refs), prompts, max_new_tokens=max_new, gamma=4)
    per_request = {}
    for s in res.rounds:
        for r, l in zip(s.requests, s.lengths):
            per_request.setdefault(r, []).append(l)
    assert per_request[3] == [4, 0] and per_request[4] == [4, 2] and per_request[5] == [4, 4, 1]


@pytest.mark.parametrize("R", [1, 32])
def test_batch_sizes(target, draft_model, R):
    prompts = make_prompts(R, seed=10 + R, lo=1, hi=20)
    res = generate(target, TinyDrafter(draft_model), prompts, max_new_tokens=12, gamma=3, schedule=ConfidenceThreshold(0.3))
    for p, toks in zip(prompts, res.tokens):
        assert toks == greedy_reference(tiny_logits(target), p, 12)
    _check_stats(res, [12] * R)


def test_mixed_temperatures_and_batch_invariance(target, draft_model):
    """Greedy rows equal greedy decoding; sampled rows depend only on their own prompt,
    temperature and seed: the same when run alone or in another batch order."""
    prompts = make_prompts(6, seed=11)
    temps = [0.0, 1.0, 0.0, 0.7, 1.5, 0.0]
    seeds = [11, 12, 13, 14, 15, 16]
    res = generate(target, TinyDrafter(draft_model), prompts, max_new_tokens=15, temperature=temps, seed=seeds, gamma=4)
    for p, t, toks in zip(prompts, temps, res.tokens):
        if t == 0.0:
            assert toks == greedy_reference(tiny_logits(target), p, 15)
    for i in (1, 3, 4):
        alone = generate(target, TinyDrafter(draft_model), [prompts[i]], max_new_tokens=15, temperature=temps[i], seed=seeds[i], gamma=4)
        assert alone.tokens[0] == res.tokens[i]
    order = [4, 2, 0, 5, 3, 1]
    perm = generate(
        target, TinyDrafter(draft_model), [prompts[i] for i in order], max_new_tokens=15,
        temperature=[temps[i] for i in order], seed=[seeds[i] for i in order], gamma=4,
    )
    assert perm.tokens == [res.tokens[i] for i in order]
    # A different seed changes a sampled request (the seed is really used).
    other = generate(target, TinyDrafter(draft_model), [prompts[1]], max_new_tokens=15, temperature=1.0, seed=999, gamma=4)
    assert other.tokens[0] != res.tokens[1]


def test_drafter_receives_target_hidden_states_of_committed_tokens(target, draft_model):
    """The context handed to the drafter is exactly the committed sequence (prompt, anchors,
    accepted drafts, in order) with the target's selected hidden states of each token."""
    prompts = make_prompts(3, seed=12)
    rec = RecordingDrafter(TinyDrafter(draft_model))
    res = generate(target, rec, prompts, max_new_tokens=14, gamma=4)
    for r, (p, toks) in enumerate(zip(prompts, res.tokens)):
        ctx = rec.ctx[r]
        seq = p + toks
        assert [t for t, _ in ctx] == seq[: len(ctx)]
        assert len(ctx) == len(seq) - 1  # everything but the last emitted token
        _, layers = target._run(torch.tensor([seq]), torch.arange(len(seq))[None], cache=False)
        full = torch.cat(layers, -1)[0]
        torch.testing.assert_close(torch.stack([h for _, h in ctx]), full[: len(ctx)])


def test_zero_prompts_and_bad_arguments(target):
    assert generate(target, AlwaysWrongDrafter(), [], max_new_tokens=4).tokens == []
    with pytest.raises(ValueError, match="prompt"):
        generate(target, AlwaysWrongDrafter(), [[]], max_new_tokens=4)
    with pytest.raises(ValueError, match="temperature"):
        generate(target, AlwaysWrongDrafter(), [[1], [2]], temperature=[0.0])
    with pytest.raises(ValueError, match="gamma"):
        generate(target, AlwaysWrongDrafter(), [[1]], gamma=0)
    # Every request done at the prefill (max_new_tokens 1 or 0): no round at all.
    res = generate(target, AlwaysWrongDrafter(), [[1, 2], [3]], max_new_tokens=[1, 0])
    assert res.num_rounds == 0 and [len(t) for t in res.tokens] == [1, 0]

    class BadDrafter(AlwaysWrongDrafter):
        def propose(self, anchor, temperature, seed, offset, gamma):
            return Proposal(torch.zeros(anchor.shape[0], gamma + 1, dtype=torch.int64))

    with pytest.raises(RuntimeError, match="drafter proposed tokens"):
        generate(target, BadDrafter(), [[1]], max_new_tokens=4)


# --------------------------------------------------------------------------------------
# Sampling: the output follows the target's own distribution.


@torch.no_grad()
def _exact_marginals(model, prompt, temperature, depth):
    """P(t_1), P(t_2), ... P(t_depth) of the target's own sampling, by enumerating every
    prefix (V^(depth-1) sequences through the no-cache forward)."""
    Vv = model.vocab_size
    seqs = torch.tensor([prompt])
    weight = torch.ones(1, dtype=torch.float64)
    out = []
    for d in range(depth):
        p = torch.softmax(model(seqs)[:, -1].float().double() / temperature, -1)  # [S, V]
        out.append((weight[:, None] * p).sum(0))
        if d + 1 < depth:
            weight = (weight[:, None] * p).reshape(-1)
            seqs = torch.cat([seqs.repeat_interleave(Vv, 0), torch.arange(Vv).repeat(seqs.shape[0])[:, None]], 1)
    return out


@pytest.mark.parametrize("drafter_kind", ["tiny", "dspark", "random"])
def test_sampling_matches_target_distribution(drafter_kind):
    """Tokens 1..4 (1 from the prefill, 2..4 drafted and verified from round 1) of 4000 requests with distinct seeds
    follow the target's exact marginals (enumerated), by ``stats.assert_distribution``. A drafter with a
    different q (noisy copy, or uniform) makes both the accept and the residual paths hit."""
    cfg = TinyConfig(vocab_size=24, d_model=32, n_layers=2, n_heads=2, d_ff=64, hidden_layers=(1, 2))
    model = make_target(seed=3, cfg=cfg)
    prompt = [5, 17, 2]
    T = 0.9
    n = 4000
    if drafter_kind == "tiny":
        drafter = TinyDrafter(make_draft_model(model, noise=0.3))
    elif drafter_kind == "dspark":  # markov_draft's sampling and draft logits in the loop
        drafter = make_dspark_proposer("vanilla", cfg=cfg)
    else:
        drafter = RandomDrafter(cfg.vocab_size)
    with torch.no_grad():
        res = generate(model, drafter, [prompt] * n, max_new_tokens=4, temperature=T, seed=list(range(n)), gamma=3)
    toks = torch.tensor(res.tokens)
    assert toks.shape == (n, 4)
    acc = res.rounds[0].accepted
    assert 0.05 < sum(a > 0 for a in acc) / n < 0.95 or drafter_kind == "random"
    marg = _exact_marginals(model, prompt, T, 4)
    for d in range(4):
        assert_distribution(torch.bincount(toks[:, d], minlength=cfg.vocab_size), marg[d], f"token {d + 1}")


# --------------------------------------------------------------------------------------
# Hugging Face adapter.


def _tiny_qwen3(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.Qwen3Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        initializer_range=0.5, tie_word_embeddings=False,
    )
    return transformers.Qwen3ForCausalLM(cfg).to(torch.float64).eval()


def test_hf_adapter_greedy_equals_target_greedy():
    model = _tiny_qwen3()
    prompts = make_prompts(4, seed=13)

    def logits(seq):
        return model(torch.tensor([seq])).logits[0, -1]

    with torch.no_grad():
        refs = [greedy_reference(logits, p, 14) for p in prompts]
        # Independent check of the reference with transformers' own greedy generate.
        hf = model.generate(torch.tensor([prompts[0]]), max_new_tokens=14, do_sample=False, min_new_tokens=14)
        assert hf[0, len(prompts[0]) :].tolist() == refs[0]
    eos = [refs[2][5]]
    expect = [greedy_reference(logits, p, 14, eos) for p in prompts]
    target = HFCausalLM(model, hidden_layers=(1, 2))
    rec = RecordingDrafter(ScriptedDrafter(refs, wrong=lambda i: i % 4 == 2))
    res = generate(target, rec, prompts, max_new_tokens=14, gamma=3, eos_ids=eos)
    assert res.tokens == expect
    accepted = [a for s in res.rounds for a in s.accepted]
    assert 0 < sum(accepted) < sum(l for s in res.rounds for l in s.lengths)  # rollback of rejected slots exercised
    # The hidden states handed to the drafter are those of a plain forward of the sequence.
    with torch.no_grad():
        for r, (p, toks) in enumerate(zip(prompts, res.tokens)):
            ctx = rec.ctx[r]
            seq = p + toks
            hs = model(torch.tensor([seq]), output_hidden_states=True).hidden_states
            full = torch.cat([hs[1], hs[2]], -1)[0]
            assert [t for t, _ in ctx] == seq[: len(ctx)]
            torch.testing.assert_close(torch.stack([h for _, h in ctx]), full[: len(ctx)])
    # Finished requests leave the batch: the adapter keeps working after retain().
    assert any(len(s.requests) < len(prompts) for s in res.rounds)


def test_hf_adapter_with_tiny_drafter_and_sampling_batch_invariance():
    model = _tiny_qwen3(seed=1)
    target = HFCausalLM(model)
    draft = TinyDrafter(make_draft_model(make_target(), noise=0.0))  # unrelated model: mostly wrong
    prompts = make_prompts(3, seed=14)
    res = generate(target, draft, prompts, max_new_tokens=10, temperature=[0.0, 1.0, 0.8], seed=[1, 2, 3], gamma=3)
    with torch.no_grad():
        assert res.tokens[0] == greedy_reference(lambda s: model(torch.tensor([s])).logits[0, -1], prompts[0], 10)
    alone = generate(target, draft, [prompts[2]], max_new_tokens=10, temperature=0.8, seed=3, gamma=3)
    assert alone.tokens[0] == res.tokens[2]


# ---------------------------------------------------------------- the DSpark drafter in the loop


def make_dspark_proposer(head: str, seed: int = 0, cfg: TinyConfig = CFG):
    from dspark_ops import DSparkDrafter
    from dspark_ops.speculative.proposers import DSparkProposer

    torch.manual_seed(seed)
    vocab = cfg.vocab_size
    config = dict(vocab_size=vocab, hidden_size=cfg.d_model, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6,
                  rope_theta=10000.0, target_layer_ids=list(cfg.hidden_layers), mask_token_id=vocab - 1,
                  block_size=5, markov_rank=8, markov_head_type=head, enable_confidence_head=True,
                  confidence_head_with_markov=True)
    return DSparkProposer(DSparkDrafter(config).eval())


@pytest.mark.parametrize("head", ["vanilla", "gated", "rnn"])
def test_dspark_drafter_greedy_equals_target_greedy(head):
    target = make_target()
    prompts = make_prompts(4, seed=5)
    with torch.no_grad():
        res = generate(target, make_dspark_proposer(head), prompts, max_new_tokens=14, gamma=4,
                       schedule=ConfidenceThreshold(0.05))
    for p, toks in zip(prompts, res.tokens):
        assert toks == greedy_reference(tiny_logits(target), p, 14)
    _check_stats(res, [14] * 4)


def test_dspark_drafter_sampling_is_reproducible_and_batch_invariant():
    target = make_target()
    prompts = make_prompts(3, seed=6)
    kw = dict(max_new_tokens=10, gamma=3, temperature=[0.9, 0.0, 1.2], seed=[5, 6, 7])
    with torch.no_grad():
        a = generate(target, make_dspark_proposer("vanilla"), prompts, **kw)
        b = generate(target, make_dspark_proposer("vanilla"), prompts, **kw)
        alone = generate(target, make_dspark_proposer("vanilla"), prompts[2:], max_new_tokens=10, gamma=3,
                         temperature=[1.2], seed=[7])
    assert a.tokens == b.tokens
    assert alone.tokens[0] == a.tokens[2]
