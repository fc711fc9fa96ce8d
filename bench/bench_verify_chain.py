"""verify_chain: ours vs the vectorised eager reference and torch.compile of it.

Inputs look like a real round: the draft logits are the target's plus noise, drafts are
sampled from q, every request verifies γ tokens at temperature 1 (the sampling path, which
reads both logits tensors). The floor reads every target row and every draft row once.

Variants beside the plain temperature case (same inputs): the SPEC §9 filters top-p 0.9 and
top-k 50 on every request (the threshold search adds passes over each target row that is
read), and a sparse q (SPEC §10: draft_ids with the K = 256 largest draft logits per row, so
the draft side reads K entries and ids per row instead of V).
"""

from __future__ import annotations

import functools

import torch

import dspark_ops
from dspark_ops import reference
from dspark_ops.ops.arguments import request_args

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


SPARSE_K = 256
VARIANTS = {  # name -> (extra arguments from the inputs, note)
    "plain": (lambda a: {}, "sampling path, T=1, drafts ~ q"),
    # Per-request tensors (the reference, unlike the wrappers, takes no Python scalars).
    "top-p 0.9": (lambda a: filters(a, top_p=0.9), "top-p 0.9 on every request"),
    "top-k 50": (lambda a: filters(a, top_k=50), "top-k 50 on every request"),
    f"sparse q K={SPARSE_K}": (lambda a: sparse_q(a["draft_logits"], SPARSE_K), "draft_ids: K largest draft logits"),
}


def filters(args, **values):
    """SPEC §9 filter values as [R] tensors on the logits' device."""
    return request_args(args["lengths"].shape[0], args["target_logits"].device, **values)


def sparse_q(draft_logits, K):
    """The K largest draft logits of every row and their ids (q renormalised over them)."""
    top = draft_logits.float().topk(K, dim=-1)
    return {"draft_logits": top.values.to(draft_logits.dtype).contiguous(), "draft_ids": top.indices.contiguous()}


def case(R, gamma, V, dtype_name, device, with_compile, variant="plain"):
    args = make_inputs(R, gamma, V, DTYPES[dtype_name], device)
    extra_of, note = VARIANTS[variant]
    args = {**args, **extra_of(args)}
    elem = DTYPES[dtype_name].itemsize
    draft_width = args["draft_logits"].shape[-1]
    draft_bytes = R * gamma * draft_width * (elem + (8 if "draft_ids" in args else 0))
    bytes_moved = R * (gamma + 1) * V * elem + draft_bytes
    providers = {
        "ours": lambda: dspark_ops.verify_chain(**args),
        "eager": lambda: reference.verify_chain(**args),
    }
    if with_compile:
        providers["compile"] = lambda: compiled_reference()(**args)
    shape = f"R={R} γ={gamma} V={V}" + ("" if variant == "plain" else f" {variant}")
    return Case("verify_chain", shape, dtype_name, providers, bytes_moved, note=note)


def cases(preset: str, device: str) -> list[Case]:
    variants = [case(16, 7, 32000, "fp32", device, False, v) for v in VARIANTS if v != "plain"]
    if device == "cpu" and preset == "quick":
        return [case(16, 7, 32000, "fp32", device, with_compile=True), case(1, 7, 32000, "fp32", device, False),
                case(64, 7, 32000, "bf16", device, False)] + variants
    sizes = [(R, V, dt) for R in (1, 16, 64, 256) for V in (32000, 151936) for dt in ("bf16", "fp32")]
    if device == "cpu":
        sizes = [s for s in sizes if s[0] <= 64 and s[1] == 32000]
    plain = [case(R, 7, V, dt, device, with_compile=(R == 64 or device == "cpu" and R == 16)) for R, V, dt in sizes]
    if device == "cuda":
        variants += [case(64, 7, 151936, "bf16", device, False, v) for v in VARIANTS if v != "plain"]
    return plain + variants
