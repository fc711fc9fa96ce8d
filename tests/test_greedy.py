"""One greedy test everywhere: ``dspark_ops.ops.greedy.is_greedy`` (Python) and
``dspark::is_greedy`` (kernels) agree, NaN temperature is greedy, ``T = inf`` samples; the
kernels and the pure-PyTorch references give the same tokens for both."""

from __future__ import annotations

import math

import pytest
import torch

import dspark_ops
from dspark_ops import reference
from dspark_ops.ops.greedy import GREEDY_TEMPERATURE, is_greedy

from test_markov_draft import check_against_reference, make_inputs, to_device
from test_verify_chain import random_case
from test_verify_tree import batch_inputs

NAN, INF = float("nan"), float("inf")
# NaN (greedy), inf (uniform sampling), 0 (greedy), just above the threshold, and a plain T.
TEMPERATURES = [NAN, INF, 0.0, 2 * GREEDY_TEMPERATURE, 0.8, -1.0]


def test_is_greedy_semantics():
    t = torch.tensor([NAN, INF, -INF, 0.0, GREEDY_TEMPERATURE, 1.1e-5, 1.0])
    assert is_greedy(t).tolist() == [True, False, True, True, True, False, False]
    assert [is_greedy(float(x)) for x in t] == is_greedy(t).tolist()
    assert is_greedy(math.nan) and not is_greedy(math.inf)


def temperatures(R):
    return torch.tensor((TEMPERATURES * (R // len(TEMPERATURES) + 1))[:R], dtype=torch.float32)


@pytest.mark.parametrize("with_draft", [True, False])
def test_verify_chain_nan_and_inf_temperature(device, with_draft):
    target, drafts, lengths, _, seed, offset, dl = random_case(12, 4, 37, seed=5)
    temp = temperatures(12)
    dl = dl if with_draft else None
    ref = reference.verify_chain(target, drafts, lengths, temp, seed, offset, dl)
    out = dspark_ops.verify_chain(*[None if a is None else a.to(device) for a in
                                    (target, drafts, lengths, temp, seed, offset, dl)])
    for o, r in zip(out, ref):
        assert torch.equal(o.cpu(), r), (o, r)


@pytest.mark.parametrize("with_draft", [True, False])
def test_verify_tree_nan_and_inf_temperature(device, with_draft):
    target, tokens, parents, n, _, seeds, offsets, draft = batch_inputs(12, 7, 29, seed=6, greedy_every=0)
    temp = temperatures(12)
    draft = draft if with_draft else None
    ref = reference.verify_tree(target, tokens, parents, n, temp, seeds, offsets, draft)
    out = dspark_ops.verify_tree(*[None if a is None else a.to(device) for a in
                                   (target, tokens, parents, n, temp, seeds, offsets, draft)])
    for o, r in zip(out, ref):
        assert torch.equal(o.cpu(), r), (o, r)


def test_markov_draft_nan_and_inf_temperature(device):
    args = make_inputs(R=6, device=device, temperature=temperatures(6))
    out = dspark_ops.markov_draft(**args)
    ref = reference.markov_draft(**to_device(args, "cpu"))
    check_against_reference(out, ref, torch.float32, args["temperature"])
    greedy = is_greedy(args["temperature"].cpu())
    assert torch.equal(out[2].cpu()[greedy], torch.zeros(int(greedy.sum()), 4))  # greedy: log q = 0
