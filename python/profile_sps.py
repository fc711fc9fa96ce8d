"""Profile a small model's steps-per-second curve SPS(B) and save it for schedule_lengths.

    PYTHONPATH=. python python/profile_sps.py --max-batch 128 --out sps.json        # CPU
    PYTHONPATH=. python python/profile_sps.py --device cuda --graphs --max-batch 2048

The "engine step" here is a forward pass of a tiny causal transformer over B verify tokens
(one flattened batch, as a verify pass sees it). Prints the raw timings, the monotone
envelope, and what the scheduler does with it for a few batch loads.
"""

from __future__ import annotations

import argparse

import torch

import dspark_ops
from dspark_ops.speculative.observe import plot_sps
from dspark_ops.speculative.sps_profile import SPSTable, profile_sps


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int = 1024, dim: int = 128, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        layer = torch.nn.TransformerEncoderLayer(dim, heads, 4 * dim, batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [1, B] -> [1, B, vocab]
        return self.head(self.blocks(self.embed(tokens)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-batch", type=int, default=128)
    ap.add_argument("--graphs", action="store_true", help="time CUDA-graph replays (CUDA only)")
    ap.add_argument("--out", default="sps.json")
    ap.add_argument("--plot", help="save the SPS curve (measured points and envelope) to this image (matplotlib)")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = TinyLM().to(args.device).eval()
    tokens = torch.randint(0, 1024, (1, args.max_batch), device=args.device)

    @torch.no_grad()
    def step(b: int) -> torch.Tensor:
        return model(tokens[:, :b])

    table = profile_sps(step, args.max_batch, device=args.device, cuda_graphs=args.graphs)
    table.save(args.out)
    table = SPSTable.load(args.out)
    print(f"saved {args.out}: {len(table.batch_sizes)} sizes measured on {table.meta['device']}")
    for b, t in list(zip(table.batch_sizes, table.step_seconds))[:: max(1, len(table.batch_sizes) // 12)]:
        print(f"  B={b:5d}  step {t * 1e3:8.3f} ms  raw SPS {1 / t:9.1f}  envelope SPS {table.sps[b]:9.1f}")
    if args.plot:
        plot_sps(table, path=args.plot)
        print(f"plot: {args.plot}")

    sps = table.tensor(args.device)
    gamma = 7
    for R in (1, 4, max(1, args.max_batch // (gamma + 1))):
        if R * (gamma + 1) >= len(sps):
            continue
        conf = (0.9 - 0.05 * torch.arange(gamma, device=args.device)).expand(R, gamma).contiguous()
        lengths, admitted, tau, theta = dspark_ops.schedule_lengths(conf, sps, 0)
        print(f"R={R:4d}: causal schedule admits {int(admitted):4d} drafts, mean length "
              f"{lengths.float().mean():.2f}, expected tokens/step {float(tau):.1f}, tokens/s {float(theta):.0f}")


if __name__ == "__main__":
    main()
