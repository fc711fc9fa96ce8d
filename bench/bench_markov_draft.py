"""markov_draft: ours vs an eager DeepSpec-style Python loop and torch.compile of that loop.

The eager loop is what a drafter written in PyTorch does per round (batched over requests):
for each of the γ positions, embed x_{k-1} with w1, project with w2 (nn.Linear), add the
backbone logits, round to the model dtype, softmax at T, draw with torch.multinomial, and
gather log q(x). Inputs: vanilla Markov head, rank r = 256, every request sampling at T = 1.

Floor: every position must read w2 (V·r) and U_k (R·V) and write draft_logits (R·V):
bytes = γ·(V·r + 2·R·V)·elem. flops = 2·R·γ·V·r (the rank-r products).

Pruned rows (op markov_draft_topk, SPEC §10): ours = markov_draft_topk with K candidates,
"dense" = markov_draft on the same inputs, side by side. Its floor reads U_k once for the
selection and the K gathered w2 rows per request and position, and writes K logits and ids:
bytes = γ·R·(V + K·r + K)·elem + γ·R·K·8. flops = 2·R·γ·K·r.
"""

from __future__ import annotations

import functools

import torch

import dspark_ops

from harness import Case

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_inputs(R: int, gamma: int, V: int, r: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return dict(
        base_logits=(torch.randn(R, gamma, V, generator=g) * 2.0).to(device=device, dtype=dtype),
        anchor=torch.randint(0, V, (R,), generator=g).to(device),
        w1=(torch.randn(V, r, generator=g) * 0.05).to(device=device, dtype=dtype),
        w2=(torch.randn(V, r, generator=g) * 0.05).to(device=device, dtype=dtype),
        temperature=torch.ones(R, device=device),
        seed=torch.arange(R, device=device),
        offset=torch.zeros(R, dtype=torch.int64, device=device),
    )


def eager_loop(base_logits, anchor, w1, w2, temperature, seed=None, offset=None):
    """DeepSpec-style sequential head: one small batch of PyTorch ops per position."""
    R, gamma, V = base_logits.shape
    x = anchor
    tokens, logits_out, logprobs = [], [], []
    for k in range(gamma):
        e = torch.nn.functional.embedding(x, w1)
        logits = (base_logits[:, k].float() + torch.nn.functional.linear(e.float(), w2.float())).to(base_logits.dtype)
        scaled = logits.float() * torch.reciprocal(temperature.float())[:, None]
        probs = torch.softmax(scaled, -1)
        x = torch.multinomial(probs, 1)[:, 0]
        logprobs.append(torch.log_softmax(scaled, -1).gather(1, x[:, None])[:, 0])
        tokens.append(x)
        logits_out.append(logits)
    return torch.stack(tokens, 1), torch.stack(logits_out, 1), torch.stack(logprobs, 1)


@functools.lru_cache(maxsize=None)
def compiled_loop():
    return torch.compile(eager_loop, dynamic=False)


def case(R, gamma, V, r, dtype_name, device, with_compile):
    args = make_inputs(R, gamma, V, r, DTYPES[dtype_name], device)
    elem = DTYPES[dtype_name].itemsize
    providers = {
        "ours": lambda: dspark_ops.markov_draft(**args),
        "eager": lambda: eager_loop(**args),
    }
    if with_compile:
        providers["compile"] = lambda: compiled_loop()(**args)
    return Case("markov_draft", f"R={R} γ={gamma} V={V} r={r}", dtype_name, providers,
                bytes_moved=gamma * (V * r + 2 * R * V) * elem, flops=2.0 * R * gamma * V * r,
                note="vanilla head, T=1")


def pruned_case(R, gamma, V, r, K, dtype_name, device):
    args = make_inputs(R, gamma, V, r, DTYPES[dtype_name], device)
    elem = DTYPES[dtype_name].itemsize
    providers = {
        "ours": lambda: dspark_ops.markov_draft_topk(**args, num_candidates=K),
        "dense": lambda: dspark_ops.markov_draft(**args),
    }
    return Case("markov_draft_topk", f"R={R} γ={gamma} V={V} r={r} K={K}", dtype_name, providers,
                bytes_moved=gamma * R * (V + K * r + K) * elem + gamma * R * K * 8, flops=2.0 * R * gamma * K * r,
                note="vanilla head, T=1; dense = markov_draft")


def cases(preset: str, device: str) -> list[Case]:
    if device == "cpu":
        if preset == "quick":
            return [case(4, 7, 32000, 256, "fp32", device, with_compile=True),
                    case(1, 7, 32000, 256, "fp32", device, with_compile=False),
                    pruned_case(4, 7, 151936, 256, 256, "fp32", device)]
        return [case(R, 7, 32000, 256, dt, device, with_compile=(R == 4))
                for R in (1, 4, 16, 64) for dt in ("fp32", "bf16")] + [
                pruned_case(R, 7, 151936, 256, K, "bf16", device) for R in (1, 4, 16) for K in (64, 256, 1024)]
    if preset == "quick":
        return [case(R, 7, 151936, 256, "bf16", device, with_compile=(R == 1)) for R in (1, 64)] + [
                pruned_case(R, 7, 151936, 256, 256, "bf16", device) for R in (4, 64)]
    return [case(R, 7, V, 256, "bf16", device, with_compile=True) for R in (1, 8, 64, 256) for V in (32000, 151936)] + [
            pruned_case(R, 7, 151936, 256, K, "bf16", device) for R in (1, 4, 64, 256) for K in (64, 256, 1024, 4096)]
