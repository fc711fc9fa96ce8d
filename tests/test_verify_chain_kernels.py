"""verify_chain on CUDA: the three-launch pipeline against the legacy one
(DSPARK_VERIFY_CHAIN_KERNEL=legacy, read once per process, so it runs in a subprocess) and
against the CPU twin on awkward shapes: rows that are not 16-byte aligned (V = 151937, 50257),
tiny rows (V = 7, 1), filters, draft_probs, sparse draft_ids, greedy mixes, NaN rows. All
three must give identical tokens; near-ties from float rounding (SPEC §2 (c)) are improbable
on these random cases."""

import os
import subprocess
import sys

import pytest
import torch

import dspark_ops

from helpers import requires_cuda

pytestmark = requires_cuda

# (name, R, gamma, V, target dtype, draft kind, filters)
CASES = [
    ("unaligned_bf16", 6, 3, 151937, torch.bfloat16, "logits", False),
    ("gpt2_fp16", 6, 4, 50257, torch.float16, "logits", False),
    ("unaligned_f32_filters", 5, 3, 50257, torch.float32, "logits", True),
    ("tiny_v7", 40, 4, 7, torch.bfloat16, "logits", True),
    ("v1", 10, 3, 1, torch.float32, "logits", False),
    ("probs", 8, 3, 4099, torch.bfloat16, "probs", True),
    ("sparse_ids", 8, 3, 10007, torch.float16, "sparse", False),
    ("none", 8, 5, 2053, torch.bfloat16, "none", True),
]


def make_case(R, gamma, V, dtype, kind, filters, seed):
    """Inputs (CPU tensors) of one case: a third of the requests greedy, NaN entries and a NaN row."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, gamma + 1, (R,), generator=g)
    N = int((lengths + 1).sum())
    target = torch.randn(N, V, generator=g) * 2
    target[torch.rand(N, V, generator=g) < 0.01] = float("nan")
    target[N // 2] = float("nan")  # a whole NaN row
    target = target.to(dtype)
    # Half the drafts are a target row's argmax (often accepted), the rest random ids or -1.
    likely = target[:R].float().nan_to_num(float("-inf")).argmax(-1, keepdim=True).expand(R, gamma)
    drafts = torch.where(torch.rand(R, gamma, generator=g) < 0.5, likely, torch.randint(-1, V, (R, gamma), generator=g))
    temperature = torch.rand(R, generator=g) + 0.3
    temperature[::3] = 0.0
    kw = {
        "seed": torch.randint(0, 2**62, (R,), generator=g),
        "offset": torch.randint(0, 2**40, (R,), generator=g),
    }
    if kind == "logits":
        kw["draft_logits"] = (torch.randn(R, gamma, V, generator=g) * 2).to(torch.bfloat16)
    elif kind == "probs":
        kw["draft_probs"] = torch.softmax(torch.randn(R, gamma, V, generator=g), -1)
    elif kind == "sparse":
        K = 33
        ids = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(R * gamma)]).view(R, gamma, K)
        ids[torch.rand(R, gamma, K, generator=g) < 0.2] = -1
        kw["draft_ids"] = ids
        kw["draft_logits"] = torch.randn(R, gamma, K, generator=g).to(dtype)
        drafts = torch.where(torch.rand(R, gamma, generator=g) < 0.7, ids[..., 0], drafts)
    if filters:
        kw["top_k"] = torch.randint(-1, max(V // 2, 2), (R,), generator=g)
        kw["top_p"] = torch.where(torch.rand(R, generator=g) < 0.4, torch.ones(R), torch.rand(R, generator=g) * 0.9 + 0.05)
        kw["min_p"] = torch.where(torch.rand(R, generator=g) < 0.5, torch.zeros(R), torch.rand(R, generator=g) * 0.3)
    return (target, drafts, lengths, temperature), kw


def run_cases(device):
    out = {}
    for i, (name, R, gamma, V, dtype, kind, filters) in enumerate(CASES):
        args, kw = make_case(R, gamma, V, dtype, kind, filters, seed=100 + i)
        args = [a.to(device) for a in args]
        kw = {k: v.to(device) for k, v in kw.items()}
        out[name] = [t.cpu() for t in dspark_ops.verify_chain(*args, **kw)]
    return out


_LEGACY_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_verify_chain_kernels import run_cases
torch.save(run_cases("cuda"), {out!r})
"""


def run_legacy(tmp_path):
    out = tmp_path / "legacy.pt"
    env = dict(os.environ, DSPARK_VERIFY_CHAIN_KERNEL="legacy")
    script = _LEGACY_SCRIPT.format(tests=os.path.dirname(__file__), out=str(out))
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    return torch.load(out)


def test_new_legacy_and_cpu_agree(tmp_path):
    assert os.environ.get("DSPARK_VERIFY_CHAIN_KERNEL", "") in ("", "default")
    new, cpu, legacy = run_cases("cuda"), run_cases("cpu"), run_legacy(tmp_path)
    for name in new:
        for a, b, c in zip(new[name], legacy[name], cpu[name]):
            assert torch.equal(a, b), name
            assert torch.equal(a, c), name


@pytest.mark.parametrize("V", [151937, 50257, 7])
def test_unaligned_rows_are_batch_invariant(V):
    # Row i of request r starts at a different 16-byte phase alone and in the batch.
    (target, drafts, lengths, temperature), kw = make_case(7, 3, V, torch.bfloat16, "logits", True, seed=V)
    dev = lambda t: t.cuda()
    full = dspark_ops.verify_chain(*map(dev, (target, drafts, lengths, temperature)),
                                   **{k: dev(v) for k, v in kw.items()})
    first = (torch.cumsum(lengths + 1, 0) - (lengths + 1)).tolist()
    for r in range(7):
        rows = target[first[r]:first[r] + int(lengths[r]) + 1]
        one = dspark_ops.verify_chain(dev(rows), dev(drafts[r:r + 1]), dev(lengths[r:r + 1]),
                                      dev(temperature[r:r + 1]), **{k: dev(v[r:r + 1]) for k, v in kw.items()})
        assert one[0][0].tolist() == full[0][r].tolist()
        assert one[2].item() == full[2][r].item()


def test_unknown_kernel_name_is_refused():
    env = dict(os.environ, DSPARK_VERIFY_CHAIN_KERNEL="fast")
    script = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
              "from test_verify_chain_kernels import run_cases\nrun_cases('cuda')\n")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "DSPARK_VERIFY_CHAIN_KERNEL" in done.stderr
