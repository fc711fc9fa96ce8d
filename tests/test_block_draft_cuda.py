"""CUDA block_attention kernels against each other and the CPU twin (SPEC §7; skipped without a
GPU). DSPARK_BLOCK_ATTENTION_KERNEL is read once per process, so each kernel runs in its own
child process (this file run as a script) over the same awkward cases: contexts that are not
a multiple of any key tile, long contexts (several key splits and the combine kernel), Dh 64,
128 and 256, MHA / GQA / MQA, γ·G above 32 (two row slices), γ = 1, a negative scale, strided
and unaligned caches, fp16 / bf16 / fp32, and NaN in every cache slot past cache_lens (it must
never reach the output)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# Against the float32 CPU twin: the tensor-core kernels round P to the input dtype before P V.
TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (5e-3, 5e-3)}
KERNELS = ["pipelined", "legacy", "simt"]

# (R, γ, Hq, Hkv, Dh, Lmax, cache_lens, scale sign, cache layout)
CASES = [
    (3, 7, 32, 8, 128, 4100, [4100, 0, 1000], 1, "contiguous"),  # many splits, ctx % 64 != 0
    (2, 7, 8, 2, 64, 193, [193, 65], 1, "strided heads"),  # GQA 4, caches read through strides
    (2, 5, 4, 4, 256, 130, [130, 31], 1, "contiguous"),  # MHA, Dh 256
    (1, 9, 8, 2, 128, 300, [257], 1, "contiguous"),  # γ·G = 36: two row slices
    (4, 3, 6, 1, 64, 50, [0, 0, 2, 49], 1, "unaligned"),  # MQA; rows not 16-byte aligned
    (64, 7, 32, 8, 128, 96, None, 1, "contiguous"),  # R = 64, ragged lengths
    (2, 1, 2, 1, 256, 5, [3, 0], 1, "contiguous"),  # γ = 1
    (2, 4, 8, 2, 128, 77, [77, 10], -1, "strided heads"),  # negative scale: max of scaled scores
]


def case_inputs(index: int, dtype: torch.dtype, device: str) -> dict:
    R, gamma, hq, hkv, dh, lmax, lens, sign, layout = CASES[index]
    g = torch.Generator().manual_seed(1000 + index)
    if lens is None:
        lens = torch.randint(0, lmax + 1, (R,), generator=g).tolist()

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    def cache():
        c = rnd(R, lmax, hkv, dh)
        for r, n in enumerate(lens):
            c[r, n:] = float("nan")  # never read: must not leak into the output
        c = c.to(device=device, dtype=dtype)
        if layout == "strided heads":  # [R, Lmax, 2 Hkv, Dh] storage, every other head
            big = torch.zeros(R, lmax, 2 * hkv, dh, device=device, dtype=dtype)
            big[:, :, ::2] = c
            return big[:, :, ::2]
        if layout == "unaligned":  # storage offset of one element
            flat = torch.zeros(c.numel() + 1, device=device, dtype=dtype)
            flat[1:] = c.reshape(-1)
            return flat[1:].view(c.shape)
        return c

    return dict(
        q=rnd(R, gamma, hq, dh).to(device=device, dtype=dtype),
        k_cache=cache(),
        v_cache=cache(),
        cache_lens=torch.tensor(lens, dtype=torch.int64, device=device),
        k_block=rnd(R, gamma, hkv, dh).to(device=device, dtype=dtype),
        v_block=rnd(R, gamma, hkv, dh).to(device=device, dtype=dtype),
        scale=sign * dh**-0.5,
    )


def all_calls():
    return [(i, dtype) for i in range(len(CASES)) for dtype in DTYPES]


def run_kernel(kernel: str, out_path: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, DSPARK_BLOCK_ATTENTION_KERNEL=kernel, **(extra_env or {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, HERE, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, os.path.abspath(__file__), out_path], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """kernel -> [CUDA output on the CPU, one per all_calls()], each kernel in its own process."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    results = {}
    for kernel in KERNELS:
        path = str(tmp_path_factory.mktemp("attn") / f"{kernel}.pt")
        done = run_kernel(kernel, path)
        assert done.returncode == 0, done.stderr[-4000:]
        results[kernel] = torch.load(path)
    return results


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("call", range(len(CASES) * len(DTYPES)))
def test_kernel_matches_cpu_twin(outputs, kernel, call):
    import dspark_ops

    index, dtype = all_calls()[call]
    gpu = outputs[kernel][call]
    cpu = dspark_ops.block_attention(**case_inputs(index, dtype, "cpu"))
    assert gpu.dtype == dtype and gpu.shape == cpu.shape
    assert torch.isfinite(gpu).all(), "NaN past cache_lens leaked into the output"
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(gpu.float(), cpu.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("call", range(len(CASES) * len(DTYPES)))
def test_pipelined_matches_legacy(outputs, call):
    index, dtype = all_calls()[call]
    new, old = outputs["pipelined"][call], outputs["legacy"][call]
    if dtype == torch.float32 or CASES[index][-1] == "unaligned":
        # Both modes serve these with the SIMT kernel: the same bits.
        assert torch.equal(new, old)
    else:
        atol, rtol = TOL[dtype]
        torch.testing.assert_close(new.float(), old.float(), atol=atol, rtol=rtol)


def test_unknown_kernel_name_raises(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    done = run_kernel("fastest", str(tmp_path / "x.pt"))
    assert done.returncode != 0 and "DSPARK_BLOCK_ATTENTION_KERNEL" in done.stderr


if __name__ == "__main__":
    # Child process: every call on CUDA under this process's DSPARK_BLOCK_ATTENTION_KERNEL.
    import dspark_ops

    results = [dspark_ops.block_attention(**case_inputs(i, dtype, "cuda")).cpu() for i, dtype in all_calls()]
    torch.save(results, sys.argv[1])
