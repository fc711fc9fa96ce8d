"""The CPU threshold search of SPEC §9 (csrc/cpu/filter_threshold.h) against the definition of
dspark/filters.h computed by brute force, on awkward rows: ties at every boundary, -inf and NaN
entries, top_p next to 0 and 1, top_k >= V, min_p at a weight of the row, in the band around
log(min_p) and below the band's range, V = 1, 7, 50257. The threshold is observed through
markov_draft: with zero Markov weights its first draft row is the base row, and every entry
the filter drops comes back as -inf.

The definition is exact to the bit: weights w = expf(s - m) (the C library's expf, as the
kernel's), float32 running sums in descending order of s (numpy's accumulate is sequential),
and top_p's target is the float32 product top_p * total."""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest
import torch

import dspark_ops
from dspark_ops.ops.greedy import inverse_temperature

_libm = ctypes.CDLL(ctypes.util.find_library("m"))
_libm.expf.restype = ctypes.c_float
_libm.expf.argtypes = [ctypes.c_float]
_expf = np.frompyfunc(_libm.expf, 1, 1)

NEG_INF = np.float32("-inf")


def weights(s: np.ndarray, m: np.float32) -> np.ndarray:
    """filter_weight(s, m) = expf(s - m) for float32 s (the difference rounded to float32)."""
    return _expf((s - m).astype(np.float32)).astype(np.float32)


def brute_theta(s: np.ndarray, w: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.float32:
    """θ of dspark/filters.h on one row of scaled logits s (float32, NaN already -inf) whose
    weights are w = weights(s, max(s))."""
    V = s.size
    top_k = 0 if top_k <= 0 or top_k >= V else top_k
    top_p, min_p = np.float32(top_p), np.float32(min_p)
    if not np.isfinite(s.max()) or (top_k == 0 and top_p >= 1 and min_p <= 0):
        return NEG_INF
    theta = NEG_INF
    if min_p > 0:
        theta = s[(s > NEG_INF) & (w >= min_p)].min()
    order = np.argsort(-s, kind="stable")
    order = order[(s[order] >= theta) & (s[order] > NEG_INF)]  # the kept, descending
    if 0 < top_k < order.size:
        theta = s[order[top_k - 1]]
        order = order[s[order] >= theta]
    if top_p < 1:
        kept = s[order]
        mass = np.cumsum(w[order], dtype=np.float32)  # sequential float32 sums
        target = np.float32(top_p * mass[-1])
        group_end = np.append(kept[1:] < kept[:-1], True)
        theta = kept[np.flatnonzero(group_end & (mass >= target))[0]]
    return theta


def rows(V: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Awkward logit rows of length V (float32)."""
    n = rng.standard_normal(V).astype(np.float32)
    out = [n * 3, n * 0.01, n * 30, np.round(n * 2) / 2, np.full(V, 0.25, np.float32),
           (n * 1e-6 + 1).astype(np.float32), np.ldexp(1.0, -rng.integers(0, 40, V)).astype(np.float32)]
    holes = (n * 3).copy()
    holes[rng.random(V) < 0.2] = -np.inf
    holes[rng.random(V) < 0.05] = np.nan
    out.append(holes)
    peaked = (n * 2).copy()
    peaked[rng.integers(V)] = 25.0  # most of the mass on one token, the rest absorbed
    out.append(peaked)
    # Many values, each weight near the sum's rounding: the end of the sum is long and flat.
    out.append((rng.random(V) * 12).astype(np.float32))
    out.append(torch.from_numpy(n * 3).bfloat16().float().numpy())  # bf16 logits: values repeat
    single = np.full(V, -np.inf, np.float32)
    single[rng.integers(V)] = -3.0
    out.append(single)
    return out


def filters(s: np.ndarray, w: np.ndarray, V: int, rng: np.random.Generator) -> list[tuple[int, float, float]]:
    """(top_k, top_p, min_p) triples for the row s (weights w), including values placed on
    its own boundaries: min_p on a weight of the row, top_p on a tie group's mass fraction."""
    out = [(1, 1.0, 0.0), (2, 1.0, 0.0), (5, 1.0, 0.0), (V - 1, 1.0, 0.0), (V, 0.9, 0.0), (V + 5, 1.0, 0.05),
           (0, 0.9, 0.0), (0, 0.5, 0.0), (0, 1e-7, 0.0), (0, 1e-45, 0.0), (0, 0.99999994, 0.0), (0, 0.999, 0.0),
           (0, 1.0, 1.0), (0, 1.0, 0.05), (0, 1.0, 1e-6), (0, 1.0, 1e-35), (0, 1.0, 1.4e-45),
           (3, 0.9, 0.05), (50, 0.7, 0.0), (7, 0.6, 1e-6)]
    finite = np.flatnonzero(s > NEG_INF)
    if finite.size:
        on = float(w[finite[rng.integers(finite.size)]])
        above = float(np.nextafter(np.float32(on), np.float32(1)))
        out += [(0, 1.0, on), (0, 1.0, above), (0, 1.0, min(on * np.exp(1e-3), 1.0))]  # the band's edge
        order = finite[np.argsort(-s[finite], kind="stable")]
        mass = np.cumsum(w[order], dtype=np.float32)
        frac = np.float32(mass[rng.integers(order.size)] / mass[-1])
        if 0 < frac < 1:
            out += [(0, float(frac), 0.0), (0, float(np.nextafter(frac, np.float32(0))), 0.0)]
    return out


def op_kept(z: np.ndarray, T: float, f: list[tuple[int, float, float]]) -> torch.Tensor:
    """The kept sets [len(f), V] of markov_draft's first row, the row z under each filter."""
    R, V = len(f), z.size
    base = torch.from_numpy(np.tile(z, (R, 1)))[:, None, :]
    out = dspark_ops.markov_draft(base_logits=base, anchor=torch.zeros(R, dtype=torch.int64),
                                  w1=torch.zeros(V, 2), w2=torch.zeros(V, 2), temperature=T, seed=1, offset=0,
                                  top_k=[k for k, _, _ in f], top_p=[p for _, p, _ in f],
                                  min_p=[mp for _, _, mp in f])[1][:, 0]
    return ~(torch.isinf(out) & (out < 0)) & ~torch.isnan(out)


@pytest.mark.parametrize("V", [1, 7, 211, 50257])
@pytest.mark.parametrize("T", [1.0, 0.7])
def test_threshold_is_the_definition(V, T):
    rng = np.random.default_rng(V * 10 + int(T * 10))
    inv_t = np.float32(inverse_temperature(T))
    checked = 0
    for z in rows(V, rng):
        s = z * inv_t
        s = np.where(np.isnan(s), NEG_INF, s).astype(np.float32)
        m = s.max()
        w = weights(s, m) if np.isfinite(m) else np.zeros_like(s)
        f = filters(s, w, V, rng)
        got = op_kept(z, T, f)
        for i, (k, p, mp) in enumerate(f):
            theta = brute_theta(s, w, k, p, mp)
            expect = torch.from_numpy((s >= theta) & (s > NEG_INF))
            assert torch.equal(got[i], expect), (V, T, k, p, mp, float(theta))
            checked += 1
    assert checked > 100


def test_rows_without_a_finite_max_are_left_alone():
    # All -inf, all NaN, and +inf present: SPEC §9 leaves such rows unfiltered.
    V = 9
    z = np.stack([np.full(V, -np.inf), np.full(V, np.nan), np.array([np.inf] + [0.0] * (V - 1))]).astype(np.float32)
    base = torch.from_numpy(z)[:, None, :]
    out = dspark_ops.markov_draft(base_logits=base, anchor=torch.zeros(3, dtype=torch.int64), w1=torch.zeros(V, 2),
                                  w2=torch.zeros(V, 2), temperature=1.0, seed=1, offset=0, top_k=2, top_p=0.5,
                                  min_p=0.3)[1][:, 0]
    assert torch.equal(out.isnan(), base[:, 0].isnan())
    same = ~base[:, 0].isnan()
    assert torch.equal(out[same], base[:, 0][same])
