"""Vocab-parallel verification (dspark_ops.distributed, SPEC §11): communication and local time.

Rows (one per mode): the local phases of ONE rank of a W-way tensor-parallel group on its
shard of V / W columns (the phase ops, with the other ranks' records stood in by copies of
this rank's, which keeps every shape), against the single-device op on the full logits (what
every rank runs after all-gathering them). The note gives the bytes each rank contributes to
the collectives (ours: the records; the usual engine: its [N, V / W] logit shard), which is
what the interconnect carries per rank, times W - 1 in a ring.

The collectives themselves are not timed here: NCCL cannot run several ranks on one GPU. On a
multi-GPU machine, time the whole call with real NCCL ranks:

    torchrun --nproc-per-node 8 bench/bench_distributed.py --R 64 --gamma 7 --V 151936

which prints, on rank 0, the median time of dspark_ops.distributed.verify_chain against
all_gather_into_tensor of the logits + dspark_ops.verify_chain.
"""

from __future__ import annotations

import argparse

import torch
from bench_verify_chain import make_inputs as chain_inputs
from bench_verify_tree import make_inputs as tree_inputs

import dspark_ops

from harness import Case

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
STATS_BYTES, KEY_BYTES, MASS_BYTES = 40, 16, 4  # per row, per request, per request (see verify_sharded.h)


def sent_bytes(kind: str, rows: int, requests: int, width: int, with_draft: bool) -> int:
    """Bytes one rank contributes to the collectives of one call (dspark_ops/distributed.py)."""
    if kind == "chain":
        return rows * STATS_BYTES + requests * KEY_BYTES
    if not with_draft:
        return rows * STATS_BYTES
    return rows * STATS_BYTES + max(width - 2, 0) * requests * MASS_BYTES + requests * KEY_BYTES


def shard(args: dict, kind: str, start: int, count: int) -> dict:
    out = dict(args)
    out["target_logits"] = args["target_logits"][:, start:start + count].contiguous()
    if args.get("draft_logits") is not None:
        out["draft_logits"] = args["draft_logits"][..., start:start + count].contiguous()
    return out


def chain_local(a: dict, W: int, V: int):
    ops = torch.ops.dspark
    base = (a["target_logits"], a["draft_tokens"], a["lengths"], a["temperature"], a["seed"], a["offset"])
    stats = ops.verify_chain_shard_stats(*base, a["draft_logits"], 0, V)
    out, acc, emit, keys = ops.verify_chain_shard_decide(*base, stats.expand(W, -1, -1), a["draft_logits"], None, 0, V)
    return ops.verify_shard_finish(out, acc, emit, keys.expand(W, -1, -1))


def tree_local(a: dict, W: int, V: int):
    ops = torch.ops.dspark
    base = (a["target_logits"], a["tree_tokens"], a["parents"], a["num_nodes"], a["temperature"], a["seed"],
            a["offset"])
    draft = a["draft_logits"]
    stats = ops.verify_tree_shard_stats(*base, draft, 0, V).expand(W, -1, -1)
    walk, out, nodes, partial = ops.verify_tree_shard_walk(*base, stats, None, None, None, None, draft, None, 0, V)
    if draft is not None:
        for _ in range(max(a["tree_tokens"].shape[1] - 2, 0)):
            walk, out, nodes, partial = ops.verify_tree_shard_walk(
                *base, stats, walk, out, nodes, partial.expand(W, -1), draft, None, 0, V)
    keys, acc, emit = ops.verify_tree_shard_race(*base, stats, walk, draft, 0, V)
    return ops.verify_shard_finish(out, acc, emit, keys.expand(W, -1, -1))


def case(kind: str, R: int, width: int, V: int, W: int, dtype_name: str, device: str, greedy: bool) -> Case:
    dtype = DTYPES[dtype_name]
    if kind == "chain":
        full = chain_inputs(R, width, V, dtype, device)
        if greedy:
            full["temperature"].zero_()
            full["draft_logits"] = None
        local = lambda: chain_local(mine, W, V)  # noqa: E731
        single = lambda: dspark_ops.verify_chain(**full)  # noqa: E731
        rows = R * (width + 1)
    else:
        full = tree_inputs(R, width, V, dtype, device, greedy)
        local = lambda: tree_local(mine, W, V)  # noqa: E731
        single = lambda: dspark_ops.verify_tree(**full)  # noqa: E731
        rows = R * width
    mine = shard(full, kind, 0, V // W)
    with_draft = full["draft_logits"] is not None
    ours = sent_bytes(kind, rows, R, width, with_draft)
    gather = rows * (V // W) * dtype.itemsize
    mode = "greedy" if greedy else ("draft_logits" if with_draft else "sampling")
    read = rows * (V // W) * dtype.itemsize * (2 if with_draft else 1)
    return Case(
        f"dist_{kind}_{mode}", f"R={R} {'γ' if kind == 'chain' else 'M'}={width} V={V} W={W}", dtype_name,
        {"ours": local, "gathered+single": single}, read,
        note=f"{mode}: rank sends {ours} B vs {gather} B for the logit all-gather ({gather / ours:.0f}x); "
             "ours = local phases of one rank, gathered+single = the single-device op on the full logits")


def cases(preset: str, device: str) -> list[Case]:
    if device == "cpu":
        V, R, W = 32000, 16, 4
    else:
        V, R, W = 151936, 64, 8
    return [
        case("chain", R, 7, V, W, "bf16", device, greedy=False),
        case("chain", R, 7, V, W, "bf16", device, greedy=True),
        case("tree", R, 15, V, W, "bf16", device, greedy=False),
        case("tree", R, 15, V, W, "bf16", device, greedy=True),
    ]


def main() -> None:
    """Real NCCL ranks (torchrun): ours vs all-gather of the logits + the single-device op."""
    import torch.distributed as dist

    import dspark_ops.distributed as D

    p = argparse.ArgumentParser()
    p.add_argument("--R", type=int, default=64)
    p.add_argument("--gamma", type=int, default=7)
    p.add_argument("--V", type=int, default=151936)
    p.add_argument("--iters", type=int, default=50)
    a = p.parse_args()
    dist.init_process_group("nccl")
    rank, W = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank % torch.cuda.device_count())
    full = chain_inputs(a.R, a.gamma, a.V, torch.bfloat16, "cuda")
    start, count = D.shard_range(a.V, rank, W)
    mine = shard(full, "chain", start, count)
    rest = {k: v for k, v in mine.items() if k not in ("target_logits", "draft_logits")}
    if a.V % W:
        raise SystemExit("--V must be divisible by the world size for the all-gather baseline")
    gathered = torch.empty(W * full["target_logits"].shape[0], count, dtype=torch.bfloat16, device="cuda")
    dgathered = torch.empty(W * a.R * a.gamma, count, dtype=torch.bfloat16, device="cuda")

    def ours():
        return D.verify_chain(mine["target_logits"], draft_logits=mine["draft_logits"], vocab_start=start,
                              vocab_size=a.V, **rest)

    def baseline():
        dist.all_gather_into_tensor(gathered, mine["target_logits"])
        dist.all_gather_into_tensor(dgathered, mine["draft_logits"].reshape(-1, count))
        t = gathered.view(W, -1, count).permute(1, 0, 2).reshape(-1, a.V)
        d = dgathered.view(W, -1, count).permute(1, 0, 2).reshape(*full["draft_logits"].shape)
        return dspark_ops.verify_chain(t, draft_logits=d, **rest)

    for name, fn in (("distributed.verify_chain", ours), ("all_gather + verify_chain", baseline)):
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(a.iters):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            dist.barrier()
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) * 1e3)
        if rank == 0:
            print(f"{name:28s} W={W} R={a.R} γ={a.gamma} V={a.V}: median {sorted(times)[len(times) // 2]:.1f} µs")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
