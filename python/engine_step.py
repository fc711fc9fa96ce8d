"""The round a serving engine runs with dspark_ops, with static shapes (docs/engines.md).

Every tensor has a shape fixed at start-up: ``R`` request slots (padded batch), ``γ`` drafts
per slot, ``N = R * (γ + 1)`` verify rows, ``L`` output tokens per slot. A round is one
function of preallocated buffers, so it is captured once in a CUDA graph on GPU and replayed
every round, and compiled once with ``torch.compile(fullgraph=True)`` on CPU:

1. draft γ tokens per slot (a toy drafter: a bigram table, sampled with our Philox noise)
   and keep the probabilities they were drawn from (``draft_probs``);
2. run the target over ``[x0, x1 .. xγ]`` of every slot (a toy bigram target: one table
   lookup per input token; a real engine runs its model here on the same N rows);
3. ``verify_chain`` with per-slot temperature, top-k, top-p and the draft probabilities;
4. logprobs of the emitted tokens (``dspark_ops.speculative.logprobs``: one extra
   log-softmax pass over the verify rows);
5. bookkeeping: append the emitted tokens, the last one becomes the next anchor, the
   KV cache keeps the anchor plus the accepted drafts (``kv_len += num_accepted + 1``: a
   length change, no copy, for chains), ``offset += 1`` so the next round draws fresh random
   numbers, and slots that hit EOS or ``L`` tokens stop.

Variable draft lengths keep N fixed: verify every slot at γ and give the drafts past a
slot's own length the id -1; ``verify_chain`` ends the chain at the first -1 exactly as if
``lengths[r]`` were shorter (SPEC §4). Finished and empty slots run on padding and their
results are masked out.

Run: ``python python/engine_step.py [--device cpu|cuda] [--quick] [--backend inductor]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Callable, Optional

import torch

import dspark_ops
from dspark_ops.ops.arguments import request_args
from dspark_ops.ops.random_bits import Purpose, gumbel
from dspark_ops.speculative.logprobs import chain_rows, token_logprobs

GREEDY = 1e-5


@dataclasses.dataclass
class Config:
    slots: int = 8  # R, the padded batch
    gamma: int = 4  # drafts per slot and round
    vocab: int = 256  # V
    max_tokens: int = 64  # L, output tokens per slot
    eos: int = 1
    seed: int = 0


@dataclasses.dataclass
class Buffers:
    """Everything a round reads and writes, allocated once (one row per slot)."""

    anchor: torch.Tensor  # [R] int64, last committed token (x0 of the next round)
    tokens: torch.Tensor  # [R, L] int64, generated tokens, -1 after
    logprobs: torch.Tensor  # [R, L] float32, log p of each generated token (raw logits)
    length: torch.Tensor  # [R] int64, generated tokens so far
    kv_len: torch.Tensor  # [R] int64, entries the target's KV cache keeps
    active: torch.Tensor  # [R] bool
    temperature: torch.Tensor  # [R] float32
    top_k: torch.Tensor  # [R] int64 (0: off)
    top_p: torch.Tensor  # [R] float32 (1: off)
    seed: torch.Tensor  # [R] int64
    offset: torch.Tensor  # [R] int64, advanced by one per round
    accepted: torch.Tensor  # [R] int64, drafts accepted over all rounds (statistics)
    rounds: torch.Tensor  # [R] int64, rounds the slot was active in


def new_buffers(cfg: Config, prompts: torch.Tensor, temperature, top_k, top_p, device) -> Buffers:
    """Slots for ``prompts [R]`` (one anchor token each; a real engine prefilled them)."""
    r, length = cfg.slots, cfg.max_tokens
    params = request_args(r, torch.device(device), temperature=temperature, top_k=top_k, top_p=top_p)
    zeros = torch.zeros(r, dtype=torch.int64, device=device)
    return Buffers(
        anchor=prompts.to(device=device, dtype=torch.int64).clone(),
        tokens=torch.full((r, length), -1, dtype=torch.int64, device=device),
        logprobs=torch.zeros((r, length), dtype=torch.float32, device=device),
        length=zeros.clone(),
        kv_len=torch.ones(r, dtype=torch.int64, device=device),
        active=torch.ones(r, dtype=torch.bool, device=device),
        temperature=params["temperature"],
        top_k=params["top_k"],
        top_p=params["top_p"],
        seed=cfg.seed * 1000 + torch.arange(r, device=device),
        offset=zeros.clone(),
        accepted=zeros.clone(),
        rounds=zeros.clone(),
    )


def draft(b: Buffers, draft_table: torch.Tensor, gamma: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Toy drafter: ``x_k ~ softmax(draft_table[x_{k-1}] / T)`` (argmax when greedy) by
    Gumbel-max on our Philox stream. Returns ``tokens [R, γ]`` and the probabilities they
    were drawn from, ``draft_probs [R, γ, V]`` (what ``verify_chain`` needs to be exact)."""
    greedy = b.temperature <= GREEDY
    scale = torch.where(greedy, torch.ones_like(b.temperature), b.temperature)[:, None]
    vocab = draft_table.shape[1]
    prev, tokens, probs = b.anchor, [], []
    for k in range(1, gamma + 1):
        logits = draft_table[prev] / scale
        noise = gumbel(dspark_ops.random_bits(b.seed, b.offset, Purpose.DRAFT_SAMPLE, k, vocab))
        prev = torch.where(greedy, logits.argmax(-1), (logits + noise).argmax(-1))
        tokens.append(prev)
        probs.append(torch.softmax(logits, -1))
    drafts = torch.stack(tokens, 1)
    return torch.where(b.active[:, None], drafts, -1), torch.stack(probs, 1)


def round_step(b: Buffers, target_table: torch.Tensor, draft_table: torch.Tensor, eos_ids: torch.Tensor, gamma: int) -> None:
    """One round on the slots, in place. Fixed shapes and no host sync: capturable."""
    slots, width = b.tokens.shape
    drafts, draft_probs = draft(b, draft_table, gamma)
    # Target pass over the N = R * (γ + 1) verify rows (toy target: logits = table[input]).
    inputs = torch.cat([b.anchor[:, None], drafts.clamp_min(0)], 1)
    target_logits = target_table[inputs].reshape(slots * (gamma + 1), -1)
    lengths = torch.full((slots,), gamma, dtype=torch.int64, device=drafts.device)
    out, num_accepted, num_emitted = dspark_ops.verify_chain(
        target_logits, drafts, lengths, b.temperature, b.seed, b.offset,
        eos_ids=eos_ids, top_k=b.top_k, top_p=b.top_p, draft_probs=draft_probs,
    )
    logp = token_logprobs(target_logits, chain_rows(lengths, gamma + 1), out)

    # Append the emitted tokens (at most L per slot) and their logprobs.
    emitted = torch.where(b.active, num_emitted, 0)
    j = torch.arange(gamma + 1, device=out.device)[None]
    at = b.length[:, None] + j
    keep = (j < emitted[:, None]) & (at < width)
    flat = torch.where(keep, torch.arange(slots, device=out.device)[:, None] * width + at, slots * width)
    b.tokens.copy_(_scatter_flat(b.tokens, flat, out))
    b.logprobs.copy_(_scatter_flat(b.logprobs, flat, logp))
    new_length = torch.clamp(b.length + emitted, max=width)

    # Next anchor: the last emitted token. KV rollback: the target cached all γ + 1 inputs;
    # it keeps x0 and the accepted drafts, and the rest is overwritten next round.
    last = out.gather(1, (num_emitted - 1).clamp_min(0)[:, None]).squeeze(1)
    b.anchor.copy_(torch.where(b.active & (num_emitted > 0), last, b.anchor))
    b.kv_len.add_(torch.where(b.active, num_accepted + 1, 0))
    b.accepted.add_(torch.where(b.active, num_accepted, 0))
    b.rounds.add_(b.active.long())
    # Finished: an accepted EOS ended the chain (nothing emitted after it), or the emitted
    # correction/bonus token is itself an EOS.
    stopped = (num_emitted == num_accepted) | (last[:, None] == eos_ids).any(1)
    b.active.copy_(b.active & ~stopped & (new_length < width))
    b.length.copy_(new_length)
    b.offset.add_(1)


def _scatter_flat(buffer: torch.Tensor, flat_index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``buffer`` with ``values`` written at ``flat_index`` (index ``buffer.numel()``: dropped)."""
    extended = torch.cat([buffer.reshape(-1), buffer.new_zeros(1)])
    extended.scatter_(0, flat_index.reshape(-1), values.reshape(-1).to(buffer.dtype))
    return extended[:-1].reshape(buffer.shape)


def tree_keep_slots(accepted_nodes: torch.Tensor, num_accepted: torch.Tensor) -> torch.Tensor:
    """KV rollback for ``verify_tree``: ``src [R, M + 1]``, the tree node whose cache entry
    goes to path position k (the root at 0, then ``accepted_nodes``), ``-1`` for positions to
    drop. Copy ``kv[start + k] = kv[start + src[k]]`` where ``src[k] >= 0`` and set
    ``kv_len = start + num_accepted + 1``. Fixed shape, no host sync."""
    src = torch.cat([torch.zeros_like(accepted_nodes[:, :1]), accepted_nodes], 1)
    keep = torch.arange(src.shape[1], device=src.device)[None] <= num_accepted[:, None]
    return torch.where(keep, src, -1)


def make_runner(b: Buffers, step: Callable[[], None], device: str, backend: str) -> Callable[[], None]:
    """The round as it runs in an engine: a replayed CUDA graph on GPU, a compiled function
    (``torch.compile(fullgraph=True)``) on CPU."""
    if device == "cuda":
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        saved = {f.name: getattr(b, f.name).clone() for f in dataclasses.fields(b)}
        with torch.cuda.stream(stream):  # warm-up outside the graph (allocator, lazy init)
            step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        for name, value in saved.items():  # undo the warm-up and capture rounds
            getattr(b, name).copy_(value)
        return graph.replay
    return torch.compile(step, fullgraph=True, backend=backend)


def greedy_reference(target_table: torch.Tensor, prompt: int, max_tokens: int, eos: int) -> list[int]:
    """The target's own greedy output for one prompt (what greedy speculation must equal)."""
    out, tok = [], prompt
    while len(out) < max_tokens:
        tok = int(target_table[tok].argmax())
        out.append(tok)
        if tok == eos:
            break
    return out


def run(cfg: Config, device: str, backend: str, temperature=0.0, top_k=0, top_p=1.0, max_rounds: Optional[int] = None) -> dict:
    gen = torch.Generator().manual_seed(cfg.seed)
    target_table = (3.0 * torch.randn(cfg.vocab, cfg.vocab, generator=gen)).to(device)
    draft_table = (target_table + 1.5 * torch.randn(cfg.vocab, cfg.vocab, generator=gen).to(device))
    prompts = torch.randint(2, cfg.vocab, (cfg.slots,), generator=gen)
    eos_ids = torch.tensor([cfg.eos], device=device)
    b = new_buffers(cfg, prompts, temperature, top_k, top_p, device)

    def step() -> None:
        round_step(b, target_table, draft_table, eos_ids, cfg.gamma)

    runner = make_runner(b, step, device, backend)
    rounds = max_rounds or cfg.max_tokens  # every round emits >= 1 token per live slot
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    start = time.perf_counter()
    runner()  # on CPU the first call compiles
    sync()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(rounds - 1):
        runner()
    sync()
    elapsed = time.perf_counter() - start
    length = b.length.cpu()
    tokens = [b.tokens[r, : int(length[r])].tolist() for r in range(cfg.slots)]
    return {
        "tokens": tokens,
        "logprobs": [b.logprobs[r, : int(length[r])].tolist() for r in range(cfg.slots)],
        "prompts": prompts.tolist(),
        "target_table": target_table.cpu(),
        "kv_len": b.kv_len.cpu().tolist(),
        "accepted_per_round": float(b.accepted.sum()) / max(1, int(b.rounds.sum())),
        "first_round_seconds": first,
        "seconds": elapsed,
        "rounds": rounds,
    }


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes, few rounds (tests)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend on CPU")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=0.9)
    args = parser.parse_args(argv)
    cfg = Config(slots=4, gamma=3, vocab=64, max_tokens=16) if args.quick else Config()
    result = run(cfg, args.device, args.backend, args.temperature, args.top_k, args.top_p)
    for r, toks in enumerate(result["tokens"]):
        print(f"slot {r}: prompt {result['prompts'][r]} -> {toks}")
    print(f"first round {result['first_round_seconds']:.1f} s (compile on CPU), then "
          f"{result['seconds'] * 1e3 / max(1, result['rounds'] - 1):.2f} ms per round on {args.device}; "
          f"{result['accepted_per_round']:.2f} drafts accepted per slot-round")
    return result


if __name__ == "__main__":
    main()
