"""dspark_ops.compat: the peers' call signatures (FlashInfer, vLLM, sgl-kernel) on our ops.

Each peer's published test cases are re-expressed here with their inputs and expectations
(FlashInfer ``tests/utils/test_sampling.py`` and the ``chain_speculative_sampling`` docstring;
vLLM ``tests/v1/sample/test_rejection_sampler.py``; sgl-kernel
``tests/speculative/test_eagle_utils.py`` and ``test_speculative_sampling.py``), plus
chi-square checks that the adapters' outputs follow the target distribution (ALPHA in
helpers.py, fixed seeds).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dspark_ops.compat import flashinfer, sglang, vllm

from stats import assert_distribution

# ---------------------------------------------------------------------------------------
# sgl-kernel

# The two-request tree of sgl-kernel's tests: request 0 has root children 1 and 3 (1 -> 2,
# 3 -> 4 -> 5); request 1 has root children 4 and 1, listed in that order (4 -> 5, 1 -> 2 -> 3).
SGL_CANDIDATES = [[0, 1, 2, 3, 4, 5], [7, 8, 9, 10, 11, 12]]
SGL_RETRIVE_INDEX = [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
SGL_NEXT_TOKEN = [[1, 2, -1, 4, 5, -1], [4, 2, 3, -1, 5, -1]]
SGL_NEXT_SIBLING = [[-1, 3, -1, -1, -1, -1], [-1, -1, -1, -1, 1, -1]]
SGL_EXPECTED_PREDICTS = [3, -1, -1, 4, 5, 18, 11, -1, -1, -1, 12, 18]
SGL_EXPECTED_ACCEPT_INDEX = [[0, 3, 4, 5], [6, 10, 11, -1]]
SGL_EXPECTED_ACCEPT_NUM = [3, 2]


def sgl_tree(device):
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.int64, device=device)  # noqa: E731
    return tuple(map(as_tensor, (SGL_CANDIDATES, SGL_RETRIVE_INDEX, SGL_NEXT_TOKEN, SGL_NEXT_SIBLING)))


def sgl_target_logits(device):
    """Their logits: 1 everywhere, 10 at the path's next token, else 10 at token 18."""
    logits = torch.full((2, 6, 20), 1.0, device=device)
    for (r, node), token in {(0, 0): 3, (0, 3): 4, (0, 4): 5, (1, 0): 11, (1, 4): 12}.items():
        logits[r, node, token] = 10.0
    logits[..., 18] = torch.where(logits.amax(-1) < 10, 10.0, logits[..., 18])
    return logits


def sgl_outputs(device, steps=4):
    predicts = torch.full((12,), -1, dtype=torch.int32, device=device)
    accept_index = torch.full((2, steps), -1, dtype=torch.int32, device=device)
    return predicts, accept_index, torch.zeros(2, dtype=torch.int32, device=device)


def test_sgl_verify_tree_greedy_published_case(device):
    candidates, retrive_index, next_token, next_sibling = sgl_tree(device)
    predicts, accept_index, accept_num = sgl_outputs(device)
    target_predict = sgl_target_logits(device).argmax(-1)
    sglang.verify_tree_greedy(predicts, accept_index, accept_num, candidates, retrive_index, next_token,
                              next_sibling, target_predict)
    assert predicts.tolist() == SGL_EXPECTED_PREDICTS
    assert accept_index.tolist() == SGL_EXPECTED_ACCEPT_INDEX
    assert accept_num.tolist() == SGL_EXPECTED_ACCEPT_NUM


def test_sgl_target_only_published_case(device):
    """Their threshold 1/1 case: temperature 0.01 makes every target row one-hot."""
    candidates, retrive_index, next_token, next_sibling = sgl_tree(device)
    predicts, accept_index, accept_num = sgl_outputs(device)
    probs = torch.softmax(sgl_target_logits(device) / 0.01, -1)
    gen = torch.Generator(device=device).manual_seed(0)
    coins = torch.rand(2, 6, generator=gen, device=device)
    final = torch.rand(2, generator=gen, device=device)
    sglang.tree_speculative_sampling_target_only(predicts, accept_index, accept_num, candidates, retrive_index,
                                                 next_token, next_sibling, coins, final, probs, torch.zeros_like(probs))
    assert predicts.tolist() == SGL_EXPECTED_PREDICTS
    assert accept_index.tolist() == SGL_EXPECTED_ACCEPT_INDEX
    assert accept_num.tolist() == SGL_EXPECTED_ACCEPT_NUM


def test_sgl_target_only_refuses_lossy_thresholds(device):
    """Their threshold 0/0 case accepts every first child whatever the target says; that is
    not lossless, so the adapter refuses it rather than return something else."""
    candidates, retrive_index, next_token, next_sibling = sgl_tree(device)
    predicts, accept_index, accept_num = sgl_outputs(device)
    probs = torch.softmax(sgl_target_logits(device) / 0.01, -1)
    with pytest.raises(ValueError, match="threshold_single"):
        sglang.tree_speculative_sampling_target_only(
            predicts, accept_index, accept_num, candidates, retrive_index, next_token, next_sibling,
            torch.rand(2, 6, device=device), torch.rand(2, device=device), probs, threshold_single=0.0, threshold_acc=0.0)


def test_sgl_accept_index_width_limits_depth(device):
    """With ``num_spec_step = 2`` sgl-kernel accepts at most one draft and emits at that node."""
    candidates, retrive_index, next_token, next_sibling = sgl_tree(device)
    predicts, accept_index, accept_num = sgl_outputs(device, steps=2)
    target_predict = sgl_target_logits(device).argmax(-1)
    sglang.verify_tree_greedy(predicts, accept_index, accept_num, candidates, retrive_index, next_token,
                              next_sibling, target_predict)
    assert accept_num.tolist() == [1, 1]
    assert accept_index.tolist() == [[0, 3], [6, 10]]
    # Node 3's argmax (4) and node 4's of request 1 (12) are emitted at the depth limit.
    assert predicts.tolist() == [3, -1, -1, 4, -1, -1, 11, -1, -1, -1, 12, -1]


def random_parents(rng: np.random.Generator, batch: int, width: int) -> torch.Tensor:
    parents = np.full((batch, width), -1, dtype=np.int64)
    for r in range(batch):
        for i in range(1, width):
            parents[r, i] = rng.integers(0, i)
    return torch.from_numpy(parents)


def test_sgl_tree_conversion_round_trip(device):
    rng = np.random.default_rng(12)
    parents = random_parents(rng, 16, 9).to(device)
    num_nodes = torch.full((16,), 9, device=device)
    retrive_index, next_token, next_sibling = sglang.parents_to_sgl_tree(parents, num_nodes)
    assert torch.equal(sglang.sgl_tree_to_parents(next_token, next_sibling), parents)
    assert torch.equal(retrive_index, torch.arange(16 * 9, device=device).reshape(16, 9))
    # And back: SGLang's published request 0 (siblings in index order) survives both ways.
    _, _, sgl_next, sgl_sibling = sgl_tree(device)
    ours = sglang.sgl_tree_to_parents(sgl_next, sgl_sibling)
    assert ours.tolist() == [[-1, 0, 1, 0, 3, 4], [-1, 0, 1, 2, 0, 4]]
    _, back_next, back_sibling = sglang.parents_to_sgl_tree(ours, torch.full((2,), 6, device=device))
    assert back_next[0].tolist() == SGL_NEXT_TOKEN[0] and back_sibling[0].tolist() == SGL_NEXT_SIBLING[0]


def test_sgl_target_only_follows_target_distribution(device):
    """Root with children tokens 0 and 1 (leaves), V = 4: the token after the root is
    distributed as p_root, and the bonus after child 0 as p_child0 (chi-square)."""
    trials = 8000
    p_root = torch.tensor([0.4, 0.3, 0.2, 0.1])
    p_leaf = torch.tensor([0.1, 0.2, 0.3, 0.4])
    probs = torch.stack([p_root, p_leaf, p_leaf]).expand(trials, 3, 4).contiguous().to(device)
    candidates = torch.tensor([[9, 0, 1]], device=device).expand(trials, 3).contiguous()
    _, next_token, next_sibling = sglang.parents_to_sgl_tree(torch.tensor([[-1, 0, 0]], device=device),
                                                             torch.tensor([3], device=device))
    retrive_index = torch.arange(trials * 3, device=device).reshape(trials, 3)
    predicts = torch.full((trials * 3,), -1, dtype=torch.int32, device=device)
    accept_index = torch.full((trials, 3), -1, dtype=torch.int32, device=device)
    accept_num = torch.zeros(trials, dtype=torch.int32, device=device)
    gen = torch.Generator(device=device).manual_seed(5)
    sglang.tree_speculative_sampling_target_only(
        predicts, accept_index, accept_num, candidates, retrive_index, next_token.expand(trials, 3).contiguous(),
        next_sibling.expand(trials, 3).contiguous(), torch.rand(trials, 3, generator=gen, device=device),
        torch.rand(trials, generator=gen, device=device), probs)
    first = predicts.reshape(trials, 3)[:, 0].cpu()
    assert_distribution(np.bincount(first.numpy(), minlength=4), p_root.numpy(), "token after the root")
    took_child0 = accept_index[:, 1].cpu() == retrive_index[:, 1].cpu()
    assert torch.equal(accept_num.cpu(), (first <= 1).int())  # a child is accepted iff y is 0 or 1
    bonus = predicts.reshape(trials, 3)[:, 1].cpu()[took_child0]
    assert_distribution(np.bincount(bonus.numpy(), minlength=4), p_leaf.numpy(), "bonus after child 0")


# ---------------------------------------------------------------------------------------
# FlashInfer


def test_flashinfer_docstring_example(device):
    """FlashInfer's docstring: draft 2 accepted (p=0.6 > q=0.3), draft 1 rejected (p=0), the
    residual max(0, p - q) = [0.8, 0, 0, 0] gives token 0."""
    draft_probs = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.2, 0.3, 0.4, 0.1]]], device=device)
    draft_token_ids = torch.tensor([[2, 1]], dtype=torch.int32, device=device)
    target_probs = torch.tensor([[[0.0, 0.1, 0.6, 0.3], [1.0, 0.0, 0.0, 0.0], [0.7, 0.1, 0.1, 0.1]]], device=device)
    out, accepted, emitted = flashinfer.chain_speculative_sampling(draft_probs, draft_token_ids, target_probs, seed=42, offset=0)
    assert out.dtype == torch.int32 and out.tolist() == [[2, 0, -1]]
    assert accepted.tolist() == [1] and emitted.tolist() == [1]


def normalized(shape, gen, device):
    x = torch.rand(shape, generator=gen, device=device)
    return x / x.sum(-1, keepdim=True)


@pytest.mark.parametrize("batch", [1, 99])
@pytest.mark.parametrize("steps", [1, 3, 5])
@pytest.mark.parametrize("onehot_target", [False, True])
def test_flashinfer_published_chain_test(device, batch, steps, onehot_target):
    """FlashInfer's test_chain_speculative_sampling at V = 111: a one-hot target whose first S
    tokens are the drafts is reproduced exactly; otherwise ids are in range, the first
    mismatch is followed only by -1, and emitted + 1 tokens are written. Counters accumulate."""
    vocab = 111
    gen = torch.Generator(device=device).manual_seed(batch * 10 + steps)
    draft_probs = normalized((batch, steps, vocab), gen, device)
    draft_ids = torch.randint(vocab, (batch, steps), generator=gen, device=device)
    if onehot_target:
        target_ids = torch.randint(vocab, (batch, steps + 1), generator=gen, device=device)
        target_ids[:, :steps] = draft_ids
        target_probs = torch.zeros(batch, steps + 1, vocab, device=device).scatter_(2, target_ids[..., None], 1.0)
    else:
        target_probs = normalized((batch, steps + 1, vocab), gen, device)
    accepted = torch.zeros(batch, dtype=torch.int32, device=device)
    emitted = torch.zeros(batch, dtype=torch.int32, device=device)
    total = torch.zeros(batch, dtype=torch.int32, device=device)
    for trial in range(3):
        before = emitted.clone()
        out, accepted, emitted = flashinfer.chain_speculative_sampling(
            draft_probs, draft_ids, target_probs, accepted, emitted, seed=7, offset=trial)
        this = emitted - before
        total += this
        if onehot_target:
            assert torch.equal(out, target_ids.int())
        else:
            assert out.shape == (batch, steps + 1) and bool((out < vocab).all())
            mismatch = out[:, :-1] != draft_ids.int()
            first = torch.where(mismatch.any(1), mismatch.int().argmax(1), steps)
            col = torch.arange(steps + 1, device=device)[None]
            assert bool((out[col > first[:, None] + 0] == -1).all())
            assert torch.equal(first, this.long())
        assert torch.equal(this + 1, (out != -1).sum(1).int())
    assert bool((accepted >= emitted).all()) and torch.equal(emitted, total)


def test_flashinfer_trace_reference_case(device):
    """FlashInfer's trace test: one-hot drafts equal to a one-hot target accept everything
    and append the target's bonus token."""
    gen = torch.Generator(device=device).manual_seed(3)
    batch, steps, vocab = 3, 4, 128
    ids = torch.randint(vocab, (batch, steps + 1), generator=gen, device=device)
    target = torch.zeros(batch, steps + 1, vocab, device=device).scatter_(2, ids[..., None], 1.0)
    out, accepted, emitted = flashinfer.chain_speculative_sampling(
        target[:, :steps].clone(), ids[:, :steps].int(), target, generator=gen)
    assert torch.equal(out, ids.int())
    assert accepted.tolist() == [steps] * batch and emitted.tolist() == [steps] * batch


def test_flashinfer_matches_target_distribution(device):
    """The first output token follows p_1 whatever q is, and row seeds from one scalar seed
    are independent (chi-square over 4000 rows of one batch)."""
    trials, vocab = 4000, 6
    q = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.05, 0.0])
    p = torch.tensor([0.1, 0.2, 0.3, 0.0, 0.25, 0.15])
    gen = torch.Generator().manual_seed(11)
    drafts = torch.multinomial(q, trials, replacement=True, generator=gen)[:, None]
    draft_probs = q.expand(trials, 1, vocab).to(device)
    target = torch.stack([p, p]).expand(trials, 2, vocab).to(device)
    out, accepted, emitted = flashinfer.chain_speculative_sampling(draft_probs, drafts.to(device), target, seed=5, offset=1)
    assert_distribution(np.bincount(out[:, 0].cpu().numpy(), minlength=vocab), p.numpy(), "first token")
    assert torch.equal(accepted, emitted)  # S = 1: nothing after the first position


def test_flashinfer_independent_accept_metric(device):
    """The accepted-count metric counts, past the emitted prefix, exactly the positions whose
    own coin passes: recomputed here from the reference Philox coins."""
    from dspark_ops.compat._common import row_keys
    from dspark_ops.ops.random_bits import Purpose
    from dspark_ops.reference.rng import random_bits, random_uniform

    batch, steps, vocab = 64, 6, 8
    gen = torch.Generator(device=device).manual_seed(2)
    draft_probs = normalized((batch, steps, vocab), gen, device)
    target_probs = normalized((batch, steps + 1, vocab), gen, device)
    drafts = torch.randint(vocab, (batch, steps), generator=gen, device=device)
    _, accepted, emitted = flashinfer.chain_speculative_sampling(draft_probs, drafts, target_probs, seed=9, offset=4)
    seeds, offsets = row_keys(9, 4, batch, torch.device(device))
    k = torch.arange(1, steps + 1, device=device)
    coins = random_uniform(random_bits(seeds[:, None], offsets[:, None], Purpose.CHAIN_COIN, k, 0))
    q = draft_probs.gather(-1, drafts[..., None]).squeeze(-1)
    p = target_probs[:, :steps].gather(-1, drafts[..., None]).squeeze(-1)
    passes = coins * q < p
    later = k[None] > emitted[:, None].long() + 1
    assert torch.equal(accepted.long(), emitted.long() + (passes & later).sum(1))
    assert bool((accepted > emitted).any())  # the metric does count past the prefix here


# ---------------------------------------------------------------------------------------
# vLLM

PLACEHOLDER = vllm.PLACEHOLDER_TOKEN_ID


class SpecDecodeMetadata:
    """The fields of vLLM's SpecDecodeMetadata the sampler reads (``make_dummy``'s layout)."""

    def __init__(self, spec_tokens: list[list[int]], device):
        counts = [len(t) for t in spec_tokens]
        self.draft_token_ids = torch.tensor([t for ts in spec_tokens for t in ts], dtype=torch.int32, device=device)
        self.num_draft_tokens = counts
        self.cu_num_draft_tokens = torch.tensor(np.cumsum(counts), dtype=torch.int32, device=device)
        self.max_spec_len = max(counts)


class SamplingMetadata:
    def __init__(self, all_greedy, temperature=None, top_k=None, top_p=None, generators=None):
        self.all_greedy, self.all_random = all_greedy, not all_greedy
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generators = generators or {}


def greedy_logits(output_tokens: list[list[int]], vocab: int, device) -> torch.Tensor:
    """vLLM's create_logits_tensor (100 at the wanted token, -100 elsewhere), with the bonus
    row included: one row per output token, so the argmax chain is ``output_tokens``."""
    rows = [t for tokens in output_tokens for t in tokens]
    logits = torch.full((len(rows), vocab), -100.0, device=device)
    logits[torch.arange(len(rows)), torch.tensor(rows)] = 100.0
    return logits


GREEDY_CASES = [
    ([[1, 2, 3]], [[1, 2, 3, 4]], [[1, 2, 3, 4]]),  # test_perfect_match
    ([[1, 2, 3]], [[1, 5, 3, 4]], [[1, 5, PLACEHOLDER, PLACEHOLDER]]),  # test_early_mismatch
    ([[1, 2], [3]], [[1, 2, 5], [3, 4]], [[1, 2, 5], [3, 4, PLACEHOLDER]]),  # test_multiple_sequences
    ([[1]], [[1, 2]], [[1, 2]]),  # test_single_token_sequence
    ([[]], [[5]], [[5]]),  # test_empty_sequence
    ([[1, 2, 3], [4, 5, 6]], [[1, 2, 7, 6], [4, 8, 6, 9]],
     [[1, 2, 7, PLACEHOLDER], [4, 8, PLACEHOLDER, PLACEHOLDER]]),  # test_multiple_mismatches
    ([[1, 2]], [[1, 2, 3]], [[1, 2, 3]]),  # test_parametrized_cases
    ([[1]], [[2, 3]], [[2, PLACEHOLDER]]),
    ([[1, 2], [3, 4]], [[1, 5, 6], [3, 4, 7]], [[1, 5, PLACEHOLDER], [3, 4, 7]]),
]


@pytest.mark.parametrize("spec_tokens,output_tokens,expected", GREEDY_CASES)
def test_vllm_published_greedy_cases(device, spec_tokens, output_tokens, expected):
    sampler = vllm.RejectionSampler()
    logits = greedy_logits(output_tokens, 100, device)
    out = sampler(SpecDecodeMetadata(spec_tokens, device), None, logits, SamplingMetadata(all_greedy=True))
    assert out.sampled_token_ids.dtype == torch.int32
    assert out.sampled_token_ids.tolist() == expected


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("batch", [1, 8])
def test_vllm_deterministic_when_seeded(device, k, batch):
    """vLLM's test_deterministic_when_seeded: requests with a seeded generator give the same
    tokens on every repetition (half the batch seeded, 10 repetitions)."""
    vocab = 1000
    gen = torch.Generator(device=device).manual_seed(batch + k)
    draft_probs = torch.softmax(torch.rand(batch * k, vocab, generator=gen, device=device), -1)
    logits = torch.rand(batch * (k + 1), vocab, generator=gen, device=device)
    drafts = torch.randint(vocab, (batch, k), generator=gen, device=device).tolist()
    seeded = [i for i in range(batch) if i % 2 == 0]
    results = []
    for _ in range(10):
        generators = {i: torch.Generator(device=device).manual_seed(i) for i in seeded}
        meta = SamplingMetadata(False, torch.ones(batch, device=device), generators=generators)
        results.append(vllm.RejectionSampler()(SpecDecodeMetadata(drafts, device), draft_probs, logits, meta).sampled_token_ids)
    for i in seeded:
        assert all(torch.equal(r[i], results[0][i]) for r in results[1:])


def test_vllm_rejection_sampling_matches_target_distribution(device):
    """vLLM's test_rejection_sampling_approximates_target_distribution (V = 10, k = 2, drafts
    drawn from a fixed draft distribution), judged by chi-square: column 0 of the output is
    distributed as the target, and so is column 1 where it exists."""
    vocab, k, trials = 10, 2, 4000
    gen = torch.Generator().manual_seed(4)
    q = torch.softmax(torch.rand(vocab, generator=gen), -1)
    target_logits = torch.rand(vocab, generator=gen)
    p = torch.softmax(target_logits, -1)
    drafts = torch.multinomial(q, trials * k, replacement=True, generator=gen).reshape(trials, k)
    meta = SpecDecodeMetadata(drafts.tolist(), device)
    out = vllm.rejection_sample(
        meta.draft_token_ids, meta.cu_num_draft_tokens, k, q.expand(trials * k, vocab).to(device),
        target_logits.expand(trials * (k + 1), vocab).to(device), torch.ones(trials, device=device),
        torch.arange(trials, device=device), torch.zeros(trials, dtype=torch.int64, device=device)).cpu()
    assert_distribution(np.bincount(out[:, 0].numpy(), minlength=vocab), p.numpy(), "column 0")
    second = out[:, 1][out[:, 1] >= 0]
    assert_distribution(np.bincount(second.numpy(), minlength=vocab), p.numpy(), "column 1")


def masked_case(device, filters, target_logits, keep_sets):
    """vLLM's _test_masked_logits: 100 requests x 3 drafts drawn from random draft probs;
    every emitted non-bonus token must lie in its row's kept set."""
    batch, k, vocab = 100, 3, target_logits.shape[1]
    gen = torch.Generator(device=device).manual_seed(8)
    draft_probs = torch.softmax(torch.rand(batch * k, vocab, generator=gen, device=device), -1)
    drafts = torch.multinomial(draft_probs, 1, generator=gen).reshape(batch, k)
    meta = SpecDecodeMetadata(drafts.tolist(), device)
    logits = torch.cat([target_logits.reshape(batch, k, vocab), torch.zeros(batch, 1, vocab, device=device)], 1)
    sampling = SamplingMetadata(False, torch.ones(batch, device=device), **filters)
    out = vllm.RejectionSampler()(meta, draft_probs, logits.reshape(-1, vocab), sampling).sampled_token_ids
    tokens = out[:, :-1].reshape(-1).tolist()
    for i, token in enumerate(tokens):
        if token != PLACEHOLDER:
            assert token in keep_sets[i], f"row {i}: token {token} outside the kept set"


@pytest.mark.parametrize("top_k", [1, 5, 99])
def test_vllm_top_k(device, top_k):
    """vLLM's test_top_k: +0.1 on a random top-k set; nothing outside it is ever emitted."""
    rows, vocab = 300, 100
    gen = torch.Generator(device=device).manual_seed(top_k)
    keep = torch.stack([torch.randperm(vocab, generator=gen, device=device)[:top_k] for _ in range(rows)])
    logits = torch.zeros(rows, vocab, device=device)
    logits.scatter_(1, keep, 0.1)
    top_k_t = torch.full((100,), top_k, dtype=torch.int64, device=device)
    masked_case(device, {"top_k": top_k_t}, logits, [set(r) for r in keep.tolist()])


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_vllm_top_p(device, top_p):
    """vLLM's test_top_p: the kept set is every token outside the ascending-cumsum tail of
    mass <= 1 - top_p (the largest always kept)."""
    rows, vocab = 300, 100
    gen = torch.Generator(device=device).manual_seed(int(top_p * 100))
    logits = torch.randn(rows, vocab, generator=gen, device=device)
    sorted_logits, order = logits.sort(-1)
    tail = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
    tail[:, -1] = False
    keep = [set(order[i][~tail[i]].tolist()) for i in range(rows)]
    top_p_t = torch.full((100,), top_p, dtype=torch.float32, device=device)
    masked_case(device, {"top_p": top_p_t}, logits, keep)


def test_vllm_placeholder_draft(device):
    """vLLM's test_placeholder_draft_token_rejected_random: a -1 draft is rejected without
    reading out of range, and the token emitted there is a valid id (ours: the target's own
    token at that position, as SPEC §4 reads -1 as the end of the chain)."""
    vocab = 100
    logits = greedy_logits([[1, vocab - 1, 7, 9]], vocab, device)
    meta = SpecDecodeMetadata([[1, vocab - 1, PLACEHOLDER]], device)
    gen = torch.Generator(device=device).manual_seed(0)
    sampling = SamplingMetadata(False, torch.ones(1, device=device), generators={0: gen})
    out = vllm.RejectionSampler()(meta, None, logits, sampling).sampled_token_ids
    assert out.tolist() == [[1, vocab - 1, 7, PLACEHOLDER]]


def test_vllm_ragged_draft_probs_and_bonus_override(device):
    """Requests with fewer drafts than max_spec_len: draft_probs rows are gathered per
    request; a given bonus token replaces ours only where every draft was accepted."""
    vocab = 50
    logits = greedy_logits([[3, 4, 5], [6, 8]], vocab, device)  # request 1 rejects its draft 7
    meta = SpecDecodeMetadata([[3, 4], [7]], device)
    draft_probs = torch.full((3, vocab), 1.0 / vocab, device=device)
    zeros = torch.zeros(2, dtype=torch.int64, device=device)
    out = vllm.rejection_sample(meta.draft_token_ids, meta.cu_num_draft_tokens, 2, draft_probs, logits,
                                torch.zeros(2, device=device), zeros, zeros,
                                bonus_token_ids=torch.tensor([[42], [43]], device=device))
    assert out.tolist() == [[3, 4, 42], [6, PLACEHOLDER, PLACEHOLDER]]


def test_vllm_rejection_sample_min_p_and_scalar_arguments(device):
    """Beyond vLLM (whose spec path ignores min-p): min_p filters the target rows, and the
    per-request arguments may be Python scalars. With min_p = 0.5 only tokens whose target
    probability is at least half the row's maximum can be emitted."""
    batch, k, vocab = 64, 2, 16
    gen = torch.Generator(device=device).manual_seed(21)
    logits = 2.0 * torch.randn(batch * (k + 1), vocab, generator=gen, device=device)
    drafts = torch.randint(vocab, (batch * k,), generator=gen, device=device)
    cu = torch.arange(1, batch + 1, device=device) * k
    draft_probs = torch.full((batch * k, vocab), 1.0 / vocab, device=device)
    out = vllm.rejection_sample(drafts, cu, k, draft_probs, logits, 1.0, 3, 0, min_p=0.5)
    probs = torch.softmax(logits, -1).reshape(batch, k + 1, vocab)
    allowed = probs >= 0.5 * probs.amax(-1, keepdim=True)  # [B, k+1, V]
    for r in range(batch):
        for j, token in enumerate(out[r].tolist()):
            if token != PLACEHOLDER:
                assert bool(allowed[r, j, token]), f"request {r} position {j}: token {token} below min_p"


# ---------------------------------------------------------------------------------------
# Every adapter is a fixed sequence of tensor ops: it traces whole (no graph break, no host sync).


def test_adapters_compile_fullgraph(device):
    backend = "eager" if device == "cpu" else "inductor"
    candidates, retrive_index, next_token, next_sibling = sgl_tree(device)
    target_predict = sgl_target_logits(device).argmax(-1)

    def greedy(predicts, accept_index, accept_num):
        sglang.verify_tree_greedy(predicts, accept_index, accept_num, candidates, retrive_index, next_token,
                                  next_sibling, target_predict)
        return predicts, accept_index, accept_num

    predicts, accept_index, accept_num = torch.compile(greedy, fullgraph=True, backend=backend)(*sgl_outputs(device))
    assert predicts.tolist() == SGL_EXPECTED_PREDICTS and accept_num.tolist() == SGL_EXPECTED_ACCEPT_NUM

    gen = torch.Generator(device=device).manual_seed(1)
    draft_probs = normalized((3, 2, 9), gen, device)
    target_probs = normalized((3, 3, 9), gen, device)
    drafts = torch.randint(9, (3, 2), generator=gen, device=device)
    seed, offset = torch.tensor([1], device=device), torch.tensor([2], device=device)
    chain = torch.compile(flashinfer.chain_speculative_sampling, fullgraph=True, backend=backend)
    compiled = chain(draft_probs, drafts, target_probs, seed=seed, offset=offset)
    eager = flashinfer.chain_speculative_sampling(draft_probs, drafts, target_probs, seed=seed, offset=offset)
    assert all(torch.equal(a, b) for a, b in zip(compiled, eager))

    logits = torch.randn(7, 9, generator=gen, device=device)
    flat, cu = torch.randint(9, (4,), generator=gen, device=device), torch.tensor([2, 3, 4], device=device)
    keys = torch.arange(3, device=device)
    args = (flat, cu, 2, None, logits, torch.ones(3, device=device), keys, keys)
    rejection = torch.compile(vllm.rejection_sample, fullgraph=True, backend=backend)
    top_k = torch.tensor([3, 0, 5], device=device)
    assert torch.equal(rejection(*args, top_k=top_k), vllm.rejection_sample(*args, top_k=top_k))
