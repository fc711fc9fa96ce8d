"""Profiling the engine's steps-per-second curve ``SPS(B)`` for ``schedule_lengths``.

The scheduler (SPEC §6, Algorithm 1) needs ``sps[B]``: how many target verify steps per
second the engine runs with ``B`` tokens in the batch. This module measures it once, at
engine start-up, from a step function the caller provides, and turns the noisy
measurements into a dense, monotone table::

    table = profile_sps(lambda b: model(tokens[:b]), max_batch=R * (gamma + 1))
    table.save("sps.json")
    ...
    sps = SPSTable.load("sps.json").tensor("cuda")   # [max_batch + 1] float32
    lengths, *_ = dspark_ops.schedule_lengths(confidence, sps, mode=0)

Timing: on CUDA, CUDA events around ``iters`` back-to-back calls (optionally replaying a
CUDA graph of the step, which removes launch overhead the way a graph-replaying engine
does); on CPU, ``time.perf_counter``. The per-size time is the median of ``repeats``
measurements on CUDA and their minimum on CPU (where other processes only ever add time).

Envelope: the raw step times are smoothed with a running median over neighbouring measured
sizes (``smooth_window``), made non-decreasing in ``B`` by isotonic regression (pool
adjacent violators, on log-time), and linearly interpolated onto every ``B`` in ``[0, max_batch]``.
``sps = 1 / time`` is then non-increasing in ``B``: a bigger batch never runs more steps per
second. The causal scheduler (mode 0) stops at the first throughput drop, so a jagged raw
curve would make it stop early at a spurious dip; the envelope removes such dips while
keeping the real cliffs (a step up in time stays a step down in SPS).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from .observe import ProgressBar

__all__ = ["SPSTable", "profile_sps", "monotone_envelope", "isotonic_non_decreasing", "default_batch_sizes"]


def isotonic_non_decreasing(values: Sequence[float], weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """Least-squares non-decreasing fit (pool adjacent violators), ``O(n)``."""
    y = np.asarray(values, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    blocks: list[list[float]] = []  # [mean, weight, count]
    for yi, wi in zip(y, w):
        blocks.append([yi, wi, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(int(n), m) for m, _, n in blocks]) if blocks else np.zeros(0)


def _running_median(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < 3:
        return values.copy()
    half = window // 2
    return np.array([np.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))])


def monotone_envelope(batch_sizes: Sequence[int], step_seconds: Sequence[float], max_batch: int,
                      smooth_window: int = 5) -> np.ndarray:
    """Dense ``sps[0..max_batch]`` (float64), non-increasing in ``B``, from measured step times.

    ``batch_sizes`` must be strictly increasing and positive. Sizes below the first
    measurement take its value (``sps[0]`` included: it is only read for ``R = 0``), sizes
    past the last keep the last one.
    """
    b = np.asarray(batch_sizes, dtype=np.float64)
    t = np.asarray(step_seconds, dtype=np.float64)
    if len(b) == 0 or len(b) != len(t):
        raise ValueError("monotone_envelope: need one step time per batch size (and at least one)")
    if np.any(np.diff(b) <= 0) or b[0] < 1:
        raise ValueError("monotone_envelope: batch_sizes must be positive and strictly increasing")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError("monotone_envelope: step times must be positive and finite")
    # Isotonic fit of log-time: timing noise is multiplicative (a busy host slows a step by a
    # factor), and pooling in log space keeps one slow outlier from lifting a whole block.
    fitted = np.exp(isotonic_non_decreasing(np.log(_running_median(t, smooth_window))))
    dense_t = np.interp(np.arange(max_batch + 1, dtype=np.float64), b, fitted)
    return 1.0 / dense_t


def default_batch_sizes(max_batch: int) -> list[int]:
    """Every size up to 32, then about 64 evenly spaced sizes, always including ``max_batch``."""
    sizes = set(range(1, min(max_batch, 32) + 1))
    stride = max(1, max_batch // 64)
    sizes.update(range(stride, max_batch + 1, stride))
    sizes.add(max_batch)
    return sorted(s for s in sizes if s >= 1)


@dataclass
class SPSTable:
    """A profiled steps-per-second table. ``sps[B]`` is the envelope at batch size ``B``."""

    batch_sizes: list[int]
    step_seconds: list[float]  # raw per-step times, one per measured size
    sps: list[float]  # dense envelope, index B in [0, max_batch]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def max_batch(self) -> int:
        return len(self.sps) - 1

    def tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The ``sps`` argument of ``schedule_lengths``: ``[max_batch + 1]`` float32."""
        return torch.tensor(self.sps, dtype=torch.float32, device=device)

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "batch_sizes": list(self.batch_sizes), "step_seconds": list(self.step_seconds),
                "sps": list(self.sps), "meta": dict(self.meta)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SPSTable":
        if data.get("version") != 1:
            raise ValueError(f"SPSTable: unsupported version {data.get('version')!r}")
        sps = [float(x) for x in data["sps"]]
        if any(not math.isfinite(x) or x <= 0 for x in sps):
            raise ValueError("SPSTable: sps entries must be positive and finite")
        return cls([int(b) for b in data["batch_sizes"]], [float(s) for s in data["step_seconds"]], sps,
                   dict(data.get("meta", {})))

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)

    @classmethod
    def load(cls, path: str) -> "SPSTable":
        with open(path) as f:
            return cls.from_json(json.load(f))


def _time_cpu(fn: Callable[[], Any], iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def _time_cuda(fn: Callable[[], Any], iters: int) -> float:
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3 / iters


def profile_sps(
    step_fn: Callable[[int], Any],
    max_batch: int,
    batch_sizes: Optional[Sequence[int]] = None,
    *,
    device: torch.device | str | None = None,
    warmup: int = 2,
    iters: int = 5,
    repeats: int = 3,
    cuda_graphs: bool = False,
    smooth_window: int = 5,
    progress: Optional[bool] = None,
) -> SPSTable:
    """Measure ``step_fn(B)`` (one engine step with ``B`` verify tokens) and build an SPSTable.

    Args:
        step_fn: runs one step for a batch of ``B`` tokens. Everything it needs should be
            allocated beforehand (it is timed as a whole). With ``cuda_graphs=True`` it must
            be capturable (static shapes per ``B``, no host sync).
        max_batch: the largest ``B`` the table must cover: ``R_max * (γ + 1)`` for the
            scheduler (``schedule_lengths`` needs ``S > R*(γ+1)`` entries).
        batch_sizes: the sizes to measure (default ``default_batch_sizes(max_batch)``); the
            rest are interpolated.
        device: ``"cuda"`` times with CUDA events on the current stream; CPU uses a timer.
            Default: CUDA if available.
        warmup, iters, repeats: per size, ``warmup`` untimed calls, then ``repeats`` timings
            of ``iters`` calls each; the median (CUDA) or minimum (CPU) is kept.
        cuda_graphs: capture ``step_fn(B)`` into a CUDA graph per size and time replays.
        smooth_window: running-median window over neighbouring sizes before the monotone fit.
        progress: a tqdm bar over the sizes (None: shown on a terminal if tqdm is installed).
    """
    if max_batch < 1:
        raise ValueError("profile_sps: max_batch must be >= 1")
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = sorted(set(int(b) for b in (batch_sizes if batch_sizes is not None else default_batch_sizes(max_batch))))
    if not sizes or sizes[0] < 1 or sizes[-1] > max_batch:
        raise ValueError("profile_sps: batch_sizes must lie in [1, max_batch]")
    medians = []
    bar = ProgressBar(len(sizes), "profile_sps", "size", progress)
    for b in sizes:
        fn: Callable[[], Any] = lambda b=b: step_fn(b)
        graph = None
        if dev.type == "cuda" and cuda_graphs:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(max(warmup, 1)):
                    step_fn(b)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step_fn(b)
            fn = graph.replay
        for _ in range(warmup):
            fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            times = [_time_cuda(fn, iters) for _ in range(repeats)]
        else:
            times = [_time_cpu(fn, iters) for _ in range(repeats)]
        medians.append(statistics.median(times) if dev.type == "cuda" else min(times))
        del graph
        bar.update(1, B=b, step_ms=f"{medians[-1] * 1e3:.3g}")
    bar.close()
    sps = monotone_envelope(sizes, medians, max_batch, smooth_window)
    meta = {"device": str(dev), "cuda_graphs": bool(cuda_graphs and dev.type == "cuda"), "iters": iters,
            "repeats": repeats, "smooth_window": smooth_window, "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if dev.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(dev)
    return SPSTable(sizes, [float(x) for x in medians], [float(x) for x in sps], meta)
