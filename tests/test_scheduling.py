"""Tests of dspark_ops.speculative.sps_profile: the monotone SPS envelope, JSON round trip, and profiling
a real (tiny) step function on CPU (and with CUDA events / graphs when a GPU is present)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dspark_ops
from dspark_ops.speculative.sps_profile import (
    SPSTable,
    default_batch_sizes,
    isotonic_non_decreasing,
    monotone_envelope,
    profile_sps,
)

from helpers import requires_cuda


def test_isotonic_is_least_squares_monotone():
    y = np.array([1.0, 3.0, 2.0, 2.0, 5.0, 4.0, 6.0])
    fit = isotonic_non_decreasing(y)
    assert np.all(np.diff(fit) >= 0)
    # Pool-adjacent-violators: (3,2,2) pool to 7/3, (5,4) to 4.5.
    np.testing.assert_allclose(fit, [1.0, 7 / 3, 7 / 3, 7 / 3, 4.5, 4.5, 6.0])
    assert np.array_equal(isotonic_non_decreasing([1.0, 2.0, 3.0]), [1.0, 2.0, 3.0])


def test_envelope_monotone_keeps_cliffs_removes_dips():
    sizes = list(range(1, 41))
    # Step-wise time: a cliff at B = 21 (1 ms -> 2 ms), plus a spurious fast outlier at B = 30.
    times = [1e-3 if b <= 20 else 2e-3 for b in sizes]
    times[29] = 0.5e-3
    sps = monotone_envelope(sizes, times, max_batch=50)
    assert sps.shape == (51,)
    assert np.all(np.diff(sps) <= 0), "SPS must be non-increasing in B"
    assert sps[10] == pytest.approx(1000.0) and sps[35] == pytest.approx(500.0)
    assert sps[30] == pytest.approx(500.0)  # the dip is gone
    assert sps[0] == sps[1] and sps[50] == sps[40]  # held flat outside the measured range
    with pytest.raises(ValueError):
        monotone_envelope([2, 1], [1.0, 1.0], 4)
    with pytest.raises(ValueError):
        monotone_envelope([1, 2], [1.0, 0.0], 4)


def test_default_batch_sizes():
    sizes = default_batch_sizes(1000)
    assert sizes[:32] == list(range(1, 33)) and sizes[-1] == 1000 and sizes == sorted(set(sizes))
    assert default_batch_sizes(5) == [1, 2, 3, 4, 5]


def test_json_round_trip(tmp_path):
    table = SPSTable([1, 4], [1e-3, 2e-3], list(monotone_envelope([1, 4], [1e-3, 2e-3], 6)), {"device": "cpu"})
    path = tmp_path / "sps.json"
    table.save(str(path))
    loaded = SPSTable.load(str(path))
    assert loaded == table and loaded.max_batch == 6
    t = loaded.tensor()
    assert t.dtype == torch.float32 and t.shape == (7,)
    path.write_text('{"version": 2}')
    with pytest.raises(ValueError):
        SPSTable.load(str(path))


def tiny_step_fn(device: str):
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)).to(device)
    x = torch.randn(512, 64, device=device)

    @torch.no_grad()
    def step(b: int):
        return mlp(x[:b])

    return step


def test_profile_cpu_and_schedule(tmp_path):
    table = profile_sps(tiny_step_fn("cpu"), max_batch=40, batch_sizes=[1, 8, 16, 32, 40], device="cpu",
                        warmup=1, iters=3, repeats=3)
    assert table.batch_sizes == [1, 8, 16, 32, 40] and len(table.step_seconds) == 5
    assert all(t > 0 for t in table.step_seconds)
    sps = table.tensor()
    assert sps.shape == (41,) and bool((sps[1:] <= sps[:-1]).all()) and bool((sps > 0).all())
    table.save(str(tmp_path / "t.json"))
    sps = SPSTable.load(str(tmp_path / "t.json")).tensor()
    # The table plugs straight into the scheduler: R = 5, γ = 7 needs S > 40.
    lengths, admitted, _, _ = dspark_ops.schedule_lengths(torch.full((5, 7), 0.9), sps, 0)
    assert int(lengths.sum()) == int(admitted)


@requires_cuda
@pytest.mark.parametrize("graphs", [False, True])
def test_profile_cuda(graphs):
    table = profile_sps(tiny_step_fn("cuda"), max_batch=64, batch_sizes=[1, 16, 64], device="cuda",
                        cuda_graphs=graphs, iters=5)
    sps = table.tensor("cuda")
    assert sps.shape == (65,) and bool((sps[1:] <= sps[:-1]).all())
    assert table.meta["cuda_graphs"] is graphs
