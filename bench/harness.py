"""One benchmark harness for every op family (STYLE.md "Benchmarks").

A bench file defines ``cases(preset, device) -> list[Case]``; ``run.py`` measures every
provider of every case side by side in one process and reports medians, p20/p80, achieved
bandwidth and the fraction of the roofline floor reached.

Timing: on CUDA, ``triton.testing.do_bench`` (it flushes L2 between runs, so repeated runs do
not measure the cache) or CUDA events when Triton is missing; on CPU,
``torch.utils.benchmark.Timer.blocked_autorange``.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from typing import Callable

import numpy as np
import torch


@dataclasses.dataclass
class Case:
    op: str  # "verify_chain"
    shape: str  # "R=64 γ=7 V=151936"
    dtype: str  # "bf16"
    providers: dict[str, Callable[[], object]]  # "ours", "eager", "compile", ...: run once each
    bytes_moved: float  # minimal DRAM/HBM traffic of the op: the memory floor
    flops: float = 0.0  # minimal arithmetic, where the op can be compute-bound
    note: str = ""


@dataclasses.dataclass
class Timing:
    median_us: float
    p20_us: float
    p80_us: float


def time_cuda(fn: Callable[[], object]) -> Timing:
    try:
        from triton.testing import do_bench

        q = do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
        return Timing(q[0] * 1e3, q[1] * 1e3, q[2] * 1e3)
    except ImportError:
        pass
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    for _ in range(5):
        fn()
    times = []
    for _ in range(50):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    t = np.asarray(times)
    return Timing(float(np.median(t)), float(np.percentile(t, 20)), float(np.percentile(t, 80)))


def time_cpu(fn: Callable[[], object], min_run_time: float) -> Timing:
    from torch.utils import benchmark

    fn()  # warm-up (and lazy initialisation)
    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time)
    t = np.asarray(m.times) * 1e6
    return Timing(float(np.median(t)), float(np.percentile(t, 20)), float(np.percentile(t, 80)))


def measure(fn: Callable[[], object], device: str, min_run_time: float = 0.3) -> Timing:
    if device == "cuda":
        return time_cuda(fn)
    return time_cpu(fn, min_run_time)


# Peak DRAM bandwidth (bytes/s) and dense bf16 tensor throughput (FLOP/s) of known GPUs.
GPU_PEAKS = {
    "H100": (3.35e12, 989e12),
    "H200": (4.8e12, 989e12),
    "A100": (2.0e12, 312e12),
}


def device_peaks(device: str) -> tuple[float, float, str]:
    """(bandwidth B/s, FLOP/s, how they were obtained) for the floor."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, (bw, fl) in GPU_PEAKS.items():
            if key in name:
                return bw, fl, f"datasheet peak of {name}"
        return measured_bandwidth("cuda"), 0.0, f"measured copy bandwidth of {name}"
    return measured_bandwidth("cpu"), 0.0, "measured copy bandwidth (read + write) of this CPU"


def measured_bandwidth(device: str) -> float:
    """Bytes read + written per second by a large copy: the machine's practical ceiling."""
    src = torch.ones(64 * 2**20, dtype=torch.float32, device=device)  # 256 MiB
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device, min_run_time=0.5)
    return 2 * src.numel() * 4 / (t.median_us * 1e-6)


def environment(device: str) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = ""
    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "git_commit": commit,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return env


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"
