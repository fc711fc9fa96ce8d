"""Speculative decoding with ``dspark_ops.generate`` on the built-in tiny target.

The draft model is a noisy copy of the target (a stand-in for a trained drafter), so some
drafts are accepted and some are not. Prints the accepted length per round, the tokens per
round, the acceptance by draft position, and the time split by stage; then checks the
greedy requests against plain target decoding and compares the wall time.

    python python/demo_generate.py [--device cuda] [--requests 8] [--gamma 4]
        [--schedule fixed|threshold|sps] [--temperature 0.0] [--max-new-tokens 48]

The tiny model's steps are dominated by Python and launch overhead, so the speed-up here
says little about a real model; the accepted length and the stage split are the point.
"""

from __future__ import annotations

import argparse
import time

import torch

import dspark_ops
from dspark_ops import ConfidenceThreshold, FixedLength, SPSSchedule, generate, target_decode
from dspark_ops.ops.greedy import is_greedy
from dspark_ops.speculative.proposers import TinyDrafter
from dspark_ops.speculative.targets import TinyCausalLM, TinyConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() and dspark_ops.has_cuda_kernels() else "cpu")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--schedule", choices=["fixed", "threshold", "sps"], default="fixed")
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--draft-noise", type=float, default=0.01, help="std of the noise that makes the draft model")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    device = torch.device(args.device)
    cfg = TinyConfig(vocab_size=args.vocab, d_model=64, n_layers=4, n_heads=4, d_ff=256)
    target = TinyCausalLM(cfg, seed=args.seed, device=device)
    drafter = TinyDrafter(target.perturbed(args.draft_noise, seed=args.seed + 1))
    gen = torch.Generator().manual_seed(args.seed)
    prompts = [torch.randint(0, cfg.vocab_size, (int(n),), generator=gen).tolist() for n in torch.randint(4, 33, (args.requests,), generator=gen)]

    if args.schedule == "fixed":
        schedule = FixedLength()
    elif args.schedule == "threshold":
        schedule = ConfidenceThreshold(args.threshold)
    else:
        # A made-up step rate that falls with the verify batch size (profile a real engine).
        size = args.requests * (args.gamma + 1) + 1
        schedule = SPSSchedule(1.0 / (1.0 + 0.05 * torch.arange(size, dtype=torch.float32)))

    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=list(range(args.requests)))
    generate(target, drafter, prompts, gamma=args.gamma, schedule=schedule, **kw)  # warm-up
    t0 = time.perf_counter()
    res = generate(target, drafter, prompts, gamma=args.gamma, schedule=schedule, **kw)
    spec_time = time.perf_counter() - t0

    print(f"device {device}, {args.requests} requests, gamma {args.gamma}, schedule {args.schedule}, T {args.temperature}")
    print("round  active  scheduled lengths            accepted")
    for i, s in enumerate(res.rounds, 1):
        print(f"{i:5d}  {len(s.requests):6d}  {str(s.lengths):28s} {s.accepted}  (mean {sum(s.accepted) / len(s.accepted):.2f})")
    print(f"rounds: {res.num_rounds}   tokens per request-round (accepted + 1): {res.tokens_per_round():.2f}")
    print("acceptance by position:", " ".join(f"{a:.2f}" for a in res.acceptance_by_position()))
    times = res.stage_times()
    total = sum(times.values())
    print("time by stage:", ", ".join(f"{k} {v * 1e3:.1f} ms ({100 * v / total:.0f}%)" for k, v in times.items()))

    t0 = time.perf_counter()
    plain = target_decode(target, prompts, **kw)
    plain_time = time.perf_counter() - t0
    if is_greedy(args.temperature):
        same = res.tokens == plain.tokens
        print(f"greedy output identical to plain target decoding: {same}")
        assert same
    n_tokens = sum(len(t) for t in res.tokens)
    print(f"{n_tokens} tokens: speculative {spec_time * 1e3:.0f} ms ({res.num_rounds} rounds), "
          f"plain decoding {plain_time * 1e3:.0f} ms ({plain.num_rounds} steps)")


if __name__ == "__main__":
    main()
