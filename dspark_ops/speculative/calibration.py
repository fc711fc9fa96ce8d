"""Sequential Temperature Scaling (STS) and calibration metrics for the confidence head.

The confidence head (SPEC §3) emits per-position conditional acceptance estimates
``c_k = sigmoid(conf_scale[k-1] * z_k)`` where ``z_k = conf_weight · f_k + conf_bias`` is the
raw confidence logit. The scheduler (SPEC §6) uses the survival products
``a_k = Π_{i<=k} c_i`` as the probability that the whole prefix ``x_1..x_k`` is accepted, so
those products must be calibrated in absolute terms. STS (DSpark paper §3.2.1) fits
``conf_scale`` left to right: at position k a 1-D grid search picks the scale minimising the
ECE of ``a_k`` against "prefix of length k accepted", with the scales of positions < k fixed.

Data layout used throughout:

- ``logits``: ``[N, γ]`` float, the raw confidence logits ``z_k`` (before any scale) of N
  held-out drafts;
- ``accepted``: ``[N]`` int, the number of draft tokens the target accepted (``0..γ``);
- ``verified`` (optional): ``[N]`` int, how many drafts were verified; positions past it have
  unknown outcome and are left out (default: all γ positions were verified).

The label of position k is ``accepted >= k``; it is observed when ``k <= verified``.

Example::

    scale = fit_sts(logits, accepted)            # tensor [γ], pass as conf_scale=...
    report = calibration_report(logits, accepted, scale)
    reliability_diagram(report_probs, labels, path="reliability.png")   # needs matplotlib
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = [
    "DEFAULT_GRID",
    "auc",
    "brier",
    "calibration_report",
    "ece",
    "fit_sts",
    "prefix_labels",
    "reliability_diagram",
    "survival",
]

#: The default STS grid: scales 0.02, 0.04, ..., 4.00.
DEFAULT_GRID = torch.arange(1, 201, dtype=torch.float64) * 0.02


def _as_f64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def prefix_labels(accepted, gamma: int, verified=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, observed), both ``[N, γ]`` bool: label ``accepted >= k`` at position k, observed
    where ``k <= verified`` (every position when ``verified`` is None)."""
    acc = torch.as_tensor(accepted).detach().to("cpu", torch.int64)
    k = torch.arange(1, gamma + 1)
    labels = acc[:, None] >= k
    if verified is None:
        observed = torch.ones_like(labels)
    else:
        observed = torch.as_tensor(verified).detach().to("cpu", torch.int64)[:, None] >= k
    return labels, observed


def survival(confidence) -> torch.Tensor:
    """``a_k = Π_{i<=k} c_i`` along the last dimension."""
    return torch.cumprod(_as_f64(confidence), dim=-1)


def _ece_many(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> torch.Tensor:
    """ECE of each row of ``probs [M, n]`` against ``labels [n]`` (equal-width bins)."""
    n = probs.shape[-1]
    if n == 0:
        return torch.zeros(probs.shape[0], dtype=torch.float64)
    bins = (probs * n_bins).floor().clamp(0, n_bins - 1).long()
    count = torch.zeros(probs.shape[0], n_bins, dtype=torch.float64).scatter_add_(1, bins, torch.ones_like(probs))
    conf = torch.zeros_like(count).scatter_add_(1, bins, probs)
    hits = torch.zeros_like(count).scatter_add_(1, bins, labels.to(torch.float64).expand_as(probs).contiguous())
    return (conf - hits).abs().sum(1) / n


def ece(probs, labels, n_bins: int = 15) -> float:
    """Expected Calibration Error: ``Σ_b (n_b / N) |mean(p_b) - mean(y_b)|`` over ``n_bins``
    equal-width bins of [0, 1]."""
    p = _as_f64(probs).reshape(-1)
    y = torch.as_tensor(labels).detach().to("cpu").reshape(-1)
    return float(_ece_many(p[None], y, n_bins)[0])


def brier(probs, labels) -> float:
    """Mean squared error of the probabilities against the 0/1 labels."""
    p = _as_f64(probs).reshape(-1)
    y = _as_f64(labels).reshape(-1)
    return float(((p - y) ** 2).mean()) if p.numel() else 0.0


def auc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN when only one class."""
    s = _as_f64(scores).reshape(-1)
    y = torch.as_tensor(labels).detach().to("cpu").reshape(-1).bool()
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = torch.argsort(s)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    # Average ranks over ties.
    uniq, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    avg = ends - (counts.to(torch.float64) - 1) / 2
    ranks[order] = avg[inverse]
    u = ranks[y].sum() - pos * (pos + 1) / 2
    return float(u / (pos * neg))


def fit_sts(
    logits,
    accepted,
    verified=None,
    grid: Optional[Sequence[float]] = None,
    n_bins: int = 15,
) -> torch.Tensor:
    """Fit the STS scales ``conf_scale [γ]`` (float32) position by position.

    At position k the scale ``s_k`` is the grid value minimising
    ``ECE(a_{k-1} * sigmoid(s_k * z_k), accepted >= k)`` over the drafts whose position k was
    observed, with ``a_{k-1}`` built from the scales already fitted; ties take the smaller
    grid index. Temperature scaling preserves order, so AUC per position is unchanged.
    """
    z = _as_f64(logits)
    if z.dim() != 2:
        raise ValueError(f"fit_sts: logits must be [N, γ], got shape {tuple(z.shape)}")
    gamma = z.shape[1]
    labels, observed = prefix_labels(accepted, gamma, verified)
    g = _as_f64(DEFAULT_GRID if grid is None else grid).reshape(-1)
    prev = torch.ones(z.shape[0], dtype=torch.float64)
    scales = torch.ones(gamma, dtype=torch.float64)
    for k in range(gamma):
        rows = observed[:, k]
        cand = prev[rows][None, :] * torch.sigmoid(g[:, None] * z[rows, k][None, :])  # [grid, n]
        errors = _ece_many(cand, labels[rows, k], n_bins)
        best = int(torch.argmin(errors))
        scales[k] = g[best]
        prev = prev * torch.sigmoid(scales[k] * z[:, k])
    return scales.to(torch.float32)


def calibration_report(logits, accepted, scales=None, verified=None, n_bins: int = 15) -> list[dict]:
    """Per position k: ECE and Brier of the survival product ``a_k`` (with ``scales``, default
    all 1), AUC of ``a_k`` as a score for "prefix k accepted", the mean predicted ``a_k`` and the
    observed acceptance rate, and the number of observed drafts."""
    z = _as_f64(logits)
    gamma = z.shape[1]
    s = torch.ones(gamma, dtype=torch.float64) if scales is None else _as_f64(scales)
    a = survival(torch.sigmoid(s[None, :] * z))
    labels, observed = prefix_labels(accepted, gamma, verified)
    out = []
    for k in range(gamma):
        rows = observed[:, k]
        p, y = a[rows, k], labels[rows, k]
        out.append(
            {
                "position": k + 1,
                "n": int(rows.sum()),
                "ece": ece(p, y, n_bins),
                "brier": brier(p, y),
                "auc": auc(p, y),
                "mean_predicted": float(p.mean()) if p.numel() else float("nan"),
                "observed_rate": float(y.double().mean()) if y.numel() else float("nan"),
            }
        )
    return out


def reliability_diagram(probs, labels, n_bins: int = 10, ax=None, path: Optional[str] = None, title: str = ""):
    """Reliability diagram (observed rate per confidence bin vs the diagonal). Needs matplotlib
    (an optional dependency: imported here, ImportError with a hint if missing). Returns the
    figure; saves it to ``path`` when given."""
    try:
        import matplotlib

        if ax is None and path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reliability_diagram needs matplotlib: pip install matplotlib") from exc
    p = _as_f64(probs).reshape(-1)
    y = _as_f64(labels).reshape(-1)
    bins = (p * n_bins).floor().clamp(0, n_bins - 1).long()
    count = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, bins, torch.ones_like(p))
    rate = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, bins, y) / count.clamp_min(1)
    mean_p = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, bins, p) / count.clamp_min(1)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 4))
    else:
        fig = ax.figure
    centers = (torch.arange(n_bins, dtype=torch.float64) + 0.5) / n_bins
    keep = count > 0
    ax.bar(centers[keep].numpy(), rate[keep].numpy(), width=1.0 / n_bins, edgecolor="black", alpha=0.7, label="observed")
    ax.plot(mean_p[keep].numpy(), rate[keep].numpy(), "o", color="C1", label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted prefix survival")
    ax.set_ylabel("observed acceptance")
    ax.set_title(title or f"ECE = {ece(p, y, n_bins):.4f}")
    ax.legend(loc="upper left")
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig
