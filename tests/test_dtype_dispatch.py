"""A dtype nobody planned for fails loudly: a RuntimeError naming the argument and the dtype,
on every device, never a silent reinterpretation as float32 (the dispatch of the CPU kernels,
csrc/cpu/dispatch.h, and the dtype map of the CUDA bindings, csrc/cuda/torch_dtype.h)."""

from __future__ import annotations

import pytest
import torch

import dspark_ops

from test_markov_draft import make_inputs
from test_verify_chain import random_case
from test_verify_tree import batch_inputs

BAD_DTYPES = [torch.float64, torch.int32, torch.complex64]


def cast(t, dtype):
    return t.to(dtype) if dtype != torch.complex64 else t.to(torch.float32).to(dtype)


@pytest.mark.parametrize("dtype", BAD_DTYPES)
@pytest.mark.parametrize("arg", ["target_logits", "draft_logits"])
def test_verify_chain(device, dtype, arg):
    target, drafts, lengths, temp, seed, offset, dl = [t.to(device) for t in random_case(3, 2, 11)]
    if arg == "target_logits":
        target = cast(target, dtype)
    else:
        dl = cast(dl, dtype)
    with pytest.raises(RuntimeError, match=rf"'{arg}'.*dtype"):
        dspark_ops.verify_chain(target, drafts, lengths, temp, seed, offset, dl)


@pytest.mark.parametrize("dtype", BAD_DTYPES)
@pytest.mark.parametrize("arg", ["target_logits", "draft_logits"])
def test_verify_tree(device, dtype, arg):
    target, tokens, parents, n, temp, seeds, offsets, draft = [t.to(device) for t in batch_inputs(3, 5, 11)]
    if arg == "target_logits":
        target = cast(target, dtype)
    else:
        draft = cast(draft, dtype)
    with pytest.raises(RuntimeError, match=rf"'{arg}'.*dtype"):
        dspark_ops.verify_tree(target, tokens, parents, n, temp, seeds, offsets, draft)


@pytest.mark.parametrize("dtype", BAD_DTYPES)
def test_markov_draft(device, dtype):
    args = make_inputs(R=3, V=17, device=device)
    args["base_logits"] = cast(args["base_logits"], dtype)
    with pytest.raises(RuntimeError, match=r"'base_logits'.*dtype"):
        dspark_ops.markov_draft(**args)


@pytest.mark.parametrize("dtype", BAD_DTYPES)
def test_rms_norm(device, dtype):
    x = cast(torch.randn(2, 8, device=device), dtype)
    with pytest.raises(RuntimeError, match=r"'x'.*dtype"):
        dspark_ops.rms_norm(x, x[0].clone(), 1e-6)
