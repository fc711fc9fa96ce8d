"""python/engine_step.py, the static-shape engine round of docs/engines.md, in quick mode:
compiled with torch.compile(fullgraph=True) on CPU, captured in a CUDA graph on GPU."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest
import torch

_PATH = pathlib.Path(__file__).resolve().parents[1] / "python" / "engine_step.py"
_spec = importlib.util.spec_from_file_location("engine_step", _PATH)
engine_step = importlib.util.module_from_spec(_spec)
sys.modules["engine_step"] = engine_step  # dataclasses look their module up by name
_spec.loader.exec_module(engine_step)

QUICK = engine_step.Config(slots=4, gamma=3, vocab=64, max_tokens=16, seed=3)


def backend(device):
    # inductor on CPU compiles C++ (slow on CI's two cores); "eager" still traces the whole
    # round with fullgraph=True (any graph break fails) and runs it. `main()` uses inductor.
    return "eager" if device == "cpu" else "inductor"


def check_logprobs(result, rows):
    table = result["target_table"]
    for r, tokens in enumerate(result["tokens"]):
        prev = result["prompts"][r]
        for t, lp in zip(tokens, result["logprobs"][r]):
            assert lp == pytest.approx(float(torch.log_softmax(table[prev], -1)[t]), abs=1e-4)
            prev = t
        assert len(result["logprobs"][r]) == len(tokens) == rows[r]


def test_greedy_rounds_equal_the_target_greedy_output(device):
    result = engine_step.run(QUICK, device, backend(device), temperature=0.0)
    table = result["target_table"]
    lengths = []
    for r, tokens in enumerate(result["tokens"]):
        assert tokens == engine_step.greedy_reference(table, result["prompts"][r], QUICK.max_tokens, QUICK.eos)
        lengths.append(len(tokens))
    check_logprobs(result, lengths)
    assert result["accepted_per_round"] > 0  # the drafter is close to the target: drafts are accepted


def test_sampled_rounds_respect_top_k(device):
    """Every emitted token lies in the top-3 of its target row (filters on the target), and
    KV lengths account for one anchor plus the accepted drafts per round."""
    result = engine_step.run(QUICK, device, backend(device), temperature=1.0, top_k=3, top_p=0.95)
    table = result["target_table"]
    for r, tokens in enumerate(result["tokens"]):
        assert tokens, "every slot emits at least one token per round"
        prev = result["prompts"][r]
        for t in tokens:
            assert t in table[prev].topk(3).indices.tolist()
            prev = t
    check_logprobs(result, [len(t) for t in result["tokens"]])
    for kv, tokens in zip(result["kv_len"], result["tokens"]):
        # kv = 1 + Σ (accepted + 1) and tokens = Σ emitted (= accepted + 1, or accepted at an
        # EOS), cut at max_tokens: equal up to the last round's overshoot.
        assert len(tokens) <= kv - 1 <= len(tokens) + QUICK.gamma + 1


def test_tree_keep_slots():
    accepted_nodes = torch.tensor([[2, 5, -1, -1], [-1, -1, -1, -1]])
    src = engine_step.tree_keep_slots(accepted_nodes, torch.tensor([2, 0]))
    assert src.tolist() == [[0, 2, 5, -1, -1], [0, -1, -1, -1, -1]]
