"""verify_chain: ours vs the vectorised eager reference and torch.compile of it.

Inputs look like a real round: the draft logits are the target's plus noise, drafts are
sampled from q, every request verifies γ tokens at temperature 1 (the sampling path, which
reads both logits tensors). The floor reads every target row and every draft row once.
"""

from __future__ import annotations

import functools

import torch

import dspark_ops
from dspark_ops import reference

from harness import Case

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_inputs(R: int, gamma: int, V: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    target = torch.randn(R, gamma + 1, V, generator=g) * 3.0
    draft = target[:, :gamma] + torch.randn(R, gamma, V, generator=g)
    drafts = torch.multinomial(torch.softmax(draft.reshape(-1, V), -1), 1, generator=g).view(R, gamma)
    return dict(
        target_logits=target.reshape(-1, V).to(device=device, dtype=dtype),
        draft_tokens=drafts.to(device),
        lengths=torch.full((R,), gamma, dtype=torch.int64, device=device),
        temperature=torch.ones(R, device=device),
        seed=torch.arange(R, device=device),
        offset=torch.zeros(R, dtype=torch.int64, device=device),
        draft_logits=draft.to(device=device, dtype=dtype),
    )


@functools.lru_cache(maxsize=None)
def compiled_reference():
    return torch.compile(reference.verify_chain, dynamic=False)


def case(R, gamma, V, dtype_name, device, with_compile):
    args = make_inputs(R, gamma, V, DTYPES[dtype_name], device)
    elem = DTYPES[dtype_name].itemsize
    bytes_moved = (R * (gamma + 1) + R * gamma) * V * elem
    providers = {
        "ours": lambda: dspark_ops.verify_chain(**args),
        "eager": lambda: reference.verify_chain(**args),
    }
    if with_compile:
        providers["compile"] = lambda: compiled_reference()(**args)
    return Case("verify_chain", f"R={R} γ={gamma} V={V}", dtype_name, providers, bytes_moved,
                note="sampling path, T=1, drafts ~ q")


def cases(preset: str, device: str) -> list[Case]:
    if device == "cpu" and preset == "quick":
        return [case(16, 7, 32000, "fp32", device, with_compile=True), case(1, 7, 32000, "fp32", device, False),
                case(64, 7, 32000, "bf16", device, False)]
    sizes = [(R, V, dt) for R in (1, 16, 64, 256) for V in (32000, 151936) for dt in ("bf16", "fp32")]
    if device == "cpu":
        sizes = [s for s in sizes if s[0] <= 64 and s[1] == 32000]
    return [case(R, 7, V, dt, device, with_compile=(R == 64 or device == "cpu" and R == 16)) for R, V, dt in sizes]
