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

from dspark_ops.compat import sglang
from helpers import assert_distribution

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
    trials = 20000
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
