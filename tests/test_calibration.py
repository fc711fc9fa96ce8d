"""Tests of dspark_ops.speculative.calibration: metrics on hand-checked examples, and the STS fit on
synthetic data whose true calibration is known."""

from __future__ import annotations

import math

import pytest
import torch

from dspark_ops.speculative import calibration as cal


def test_ece_brier_auc_by_hand():
    p = torch.tensor([0.1, 0.4, 0.35, 0.8])
    y = torch.tensor([0, 0, 1, 1])
    assert cal.auc(p, y) == pytest.approx(0.75)  # 3 of the 4 (pos, neg) pairs ordered right
    assert cal.brier(p, y) == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    # Two bins: [0, .5) holds 0.1, 0.4, 0.35 (mean .2833, rate 1/3); [.5, 1] holds .8 (rate 1).
    expect = 3 / 4 * abs((0.1 + 0.4 + 0.35) / 3 - 1 / 3) + 1 / 4 * abs(0.8 - 1.0)
    assert cal.ece(p, y, n_bins=2) == pytest.approx(expect)
    assert cal.ece(torch.tensor([0.3, 0.3, 0.3]), torch.tensor([1, 0, 0]), n_bins=10) == pytest.approx(1 / 30)
    assert cal.auc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == pytest.approx(0.5)  # ties count half
    assert math.isnan(cal.auc(torch.tensor([0.2, 0.3]), torch.tensor([1, 1])))


def test_prefix_labels_and_survival():
    labels, observed = cal.prefix_labels(torch.tensor([0, 2, 3]), 3, verified=torch.tensor([3, 2, 3]))
    assert labels.tolist() == [[False, False, False], [True, True, False], [True, True, True]]
    assert observed.tolist() == [[True, True, True], [True, True, False], [True, True, True]]
    a = cal.survival(torch.tensor([[0.5, 0.5, 0.2]]))
    torch.testing.assert_close(a, torch.tensor([[0.5, 0.25, 0.05]], dtype=torch.float64))


def synthetic(true_scale, n=20000, seed=0, verified_frac=0.0):
    """Raw confidence logits z and acceptance outcomes drawn from P(accept_k | prefix) =
    sigmoid(true_scale[k] * z_k): the calibration that STS must recover."""
    g = torch.Generator().manual_seed(seed)
    gamma = len(true_scale)
    z = torch.randn(n, gamma, generator=g) * 2 + 1.5
    c = torch.sigmoid(torch.tensor(true_scale) * z)
    ok = (torch.rand(n, gamma, generator=g) < c).long()
    accepted = torch.cumprod(ok, 1).sum(1)
    verified = None
    if verified_frac:
        verified = torch.where(torch.rand(n, generator=g) < verified_frac,
                               torch.randint(0, gamma + 1, (n,), generator=g), torch.full((n,), gamma))
        accepted = torch.minimum(accepted, verified)
    return z, accepted, verified


def test_sts_recovers_known_scales():
    true = [0.5, 0.8, 1.5, 0.3]
    z, accepted, _ = synthetic(true)
    grid = torch.arange(1, 101, dtype=torch.float64) * 0.04  # 0.04 .. 4.00
    scale = cal.fit_sts(z, accepted, grid=grid)
    assert scale.dtype == torch.float32 and scale.shape == (4,)
    for s, t in zip(scale.tolist(), true):
        assert abs(s - t) <= 0.15 * t + 0.05, (scale, true)
    before = cal.calibration_report(z, accepted)
    after = cal.calibration_report(z, accepted, scale)
    for b, a in zip(before, after):
        assert a["ece"] < 0.02 < b["ece"]
        assert abs(a["mean_predicted"] - a["observed_rate"]) < 0.02
    # The true scales are (close to) what the fit reaches.
    oracle = cal.calibration_report(z, accepted, torch.tensor(true))
    assert all(o["ece"] < 0.02 for o in oracle)


def test_sts_leaves_calibrated_head_alone_and_handles_unverified():
    true = [1.0, 1.0, 1.0]
    z, accepted, verified = synthetic(true, seed=1, verified_frac=0.3)
    # Positions past `verified` are unobserved: masking them keeps the fit unbiased.
    scale = cal.fit_sts(z, accepted, verified=verified, grid=torch.arange(1, 101, dtype=torch.float64) * 0.04)
    assert torch.allclose(scale, torch.ones(3), atol=0.15), scale
    # Ignoring the mask would treat unverified positions as rejections and shrink the scales.
    biased = cal.calibration_report(z, accepted, torch.ones(3))
    masked = cal.calibration_report(z, accepted, torch.ones(3), verified=verified)
    assert masked[-1]["ece"] < biased[-1]["ece"]


def test_sts_scale_order_preserving():
    z, accepted, _ = synthetic([0.6, 0.6], n=4000, seed=2)
    scale = cal.fit_sts(z, accepted)
    r1 = cal.calibration_report(z, accepted)
    r2 = cal.calibration_report(z, accepted, scale)
    assert r1[0]["auc"] == pytest.approx(r2[0]["auc"])  # position 1: a monotone map keeps AUC


def test_reliability_diagram(tmp_path):
    pytest.importorskip("matplotlib")
    z, accepted, _ = synthetic([0.5], n=2000, seed=3)
    labels, _ = cal.prefix_labels(accepted, 1)
    path = tmp_path / "rel.png"
    fig = cal.reliability_diagram(torch.sigmoid(z[:, 0]), labels[:, 0], path=str(path))
    assert path.stat().st_size > 1000
    assert fig.axes[0].get_xlabel() == "predicted prefix survival"
