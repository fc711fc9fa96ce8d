"""The rank side of tests/test_distributed.py, kept apart so that spawned ranks import only
torch and dspark_ops (not scipy and the other test modules)."""

from __future__ import annotations

import torch
import torch.distributed as dist

import dspark_ops.distributed as D


def run_shard(case, start, count, group):
    """The distributed call of one rank on its columns [start, start + count)."""
    cols = slice(start, start + count)
    draft = case["draft"]
    if case["kind"] == "chain":
        return D.verify_chain(case["target"][:, cols], case["drafts"], case["lengths"], case["temperature"],
                              case["seed"], case["offset"], None if draft is None else draft[..., cols], case["eos"],
                              vocab_start=start, vocab_size=case["target"].shape[1], group=group)
    return D.verify_tree(case["target"][:, cols], case["tokens"], case["parents"], case["n"], case["temperature"],
                         case["seed"], case["offset"], None if draft is None else draft[:, cols], case["eos"],
                         vocab_start=start, vocab_size=case["target"].shape[1], group=group)


def rank_worker(rank, world, workdir, backend, device):
    torch.set_num_threads(1)  # W ranks share the CI machine's cores
    dist.init_process_group(backend, init_method=f"file://{workdir}/store", rank=rank, world_size=world)
    if device == "cuda":
        torch.cuda.set_device(rank)
    cases = torch.load(f"{workdir}/cases.pt")
    log = []
    plain = D._all_gather

    def counted(t, group):
        log.append((tuple(t.shape), t.dtype))
        return plain(t, group)

    D._all_gather = counted
    results = {}
    for name, (case, splits) in cases.items():
        log.clear()
        on_dev = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in case.items()}
        out = run_shard(on_dev, *splits[rank], group=None)
        results[name] = ([t.cpu() for t in out], list(log))
    torch.save(results, f"{workdir}/rank{rank}.pt")
    dist.destroy_process_group()
