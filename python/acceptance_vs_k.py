"""How much acceptance pruning the Markov head costs: per-position acceptance of the DSpark
drafter on a tiny target as a function of K (``markov_draft_topk``, SPEC §10) beside the dense
head (``markov_draft``). Not a test: prints a table and writes bench/results/acceptance_vs_k.json.

    PYTHONPATH=. python -P python/acceptance_vs_k.py [--requests 32] [--tokens 48] [--device cpu]

The drafter is a DeepSpec-compatible ``DSparkDrafter`` (Qwen3 layout, vanilla Markov head,
confidence head) with randomly initialised layers that shares the target's embeddings and
``lm_head``; there is no trained tiny checkpoint in the repository, so absolute acceptance is
low and what matters is the trend in K. Every round verifies all γ drafts (FixedLength(γ)), and
acceptance at position k is P(x_k accepted | x_1..x_{k-1} accepted), pooled over rounds.
With ``--dense-q`` the pruned proposal is verified through the equivalent dense q (its logits
scattered into ``[R, γ, V]`` with -inf off the candidates): the same distribution, so the same
acceptance, for a verify_chain without ``draft_ids``.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch

from dspark_ops import DSparkDrafter, FixedLength, generate
from dspark_ops.speculative.proposers import DSparkProposer, Proposal
from dspark_ops.speculative.targets import TinyCausalLM, TinyConfig


def make_pair(vocab: int, device: str, seed: int = 0):
    cfg = TinyConfig(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, d_ff=128, hidden_layers=(1, 2))
    target = TinyCausalLM(cfg, seed=seed, device=device)
    torch.manual_seed(seed + 1)
    config = dict(vocab_size=vocab, hidden_size=cfg.d_model, intermediate_size=128, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=10000.0,
                  target_layer_ids=list(cfg.hidden_layers), mask_token_id=vocab - 1, block_size=6, markov_rank=16,
                  markov_head_type="vanilla", enable_confidence_head=True, confidence_head_with_markov=True)
    drafter = DSparkDrafter(config).to(device).eval()
    with torch.no_grad():
        drafter.embed_tokens.weight.copy_(target.embed.weight)
        drafter.lm_head.weight.copy_(target.lm_head.weight)
    return target, drafter


class DenseQ:
    """A pruned proposer whose proposals carry the equivalent dense q (-inf off the candidates)."""

    def __init__(self, inner: DSparkProposer, vocab: int):
        self.inner, self.vocab = inner, vocab

    def propose(self, anchor, temperature, seed, offset, gamma):
        p = self.inner.propose(anchor, temperature, seed, offset, gamma)
        if p.draft_ids is None:
            return p
        dense = p.draft_logits.new_full((*p.draft_logits.shape[:2], self.vocab), float("-inf"))
        return Proposal(p.tokens, dense.scatter(-1, p.draft_ids, p.draft_logits), p.confidence)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def acceptance(result, gamma: int) -> list[float]:
    tried, ok = [0] * gamma, [0] * gamma
    for rs in result.rounds:
        t, a = rs.position_counts(gamma)
        tried = [x + y for x, y in zip(tried, t)]
        ok = [x + y for x, y in zip(ok, a)]
    return [o / t if t else float("nan") for o, t in zip(ok, tried)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--gamma", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dense-q", action="store_true", help="verify pruned drafts through the equivalent dense q")
    args = ap.parse_args()
    target, drafter = make_pair(args.vocab, args.device)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, args.vocab, (8,), generator=g).tolist() for _ in range(args.requests)]
    rows = []
    for K in [None, args.vocab, 256, 64, 16, 4, 1]:
        proposer = DSparkProposer(drafter, num_candidates=K)
        if args.dense_q:
            proposer = DenseQ(proposer, args.vocab)
        with torch.no_grad():
            res = generate(target, proposer, prompts, max_new_tokens=args.tokens, temperature=args.temperature,
                           seed=list(range(args.requests)), gamma=args.gamma, schedule=FixedLength(args.gamma))
        acc = acceptance(res, args.gamma)
        mean_accepted = sum(sum(rs.accepted) for rs in res.rounds) / max(1, sum(len(rs.accepted) for rs in res.rounds))
        rows.append({"K": "dense" if K is None else K, "acceptance_per_position": acc,
                     "mean_accepted_per_round": mean_accepted})
        print(f"K={rows[-1]['K']!s:>6}  accepted/round {mean_accepted:.3f}  per position "
              + " ".join(f"{a:.3f}" for a in acc), flush=True)
    out = pathlib.Path(__file__).resolve().parent.parent / "bench" / "results" / "acceptance_vs_k.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
