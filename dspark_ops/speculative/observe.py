"""Observability for long runs: a progress bar (``tqdm``, optional) and plots (``matplotlib``,
optional) of an SPS profile and of a ``generate`` run's per-position acceptance.

Neither dependency is required by the library: without ``tqdm`` the bar is silently off,
and the plot functions raise an ``ImportError`` that says what to install.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["ProgressBar", "plot_acceptance", "plot_sps"]


class ProgressBar:
    """A ``tqdm`` bar of ``total`` units, or nothing. ``enabled = None`` leaves the choice to
    tqdm (shown on a terminal, hidden when output is redirected); ``False`` hides it."""

    def __init__(self, total: int, desc: str, unit: str, enabled: Optional[bool] = None):
        self._bar = None
        if enabled is False:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # optional dependency: no bar
            return
        self._bar = tqdm(total=total, desc=desc, unit=unit, disable=None if enabled is None else not enabled,
                         leave=False, dynamic_ncols=True)

    def update(self, n: int, **postfix) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from e
    return plt


def _axes(ax):
    """The axes to draw on: ``ax``, or those of a new 6x4 figure."""
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(6, 4))
    return ax


def _finish(ax, path: Optional[str]):
    """Adds the legend, saves the figure to ``path`` when given, returns the axes."""
    ax.legend()
    if path is not None:
        ax.figure.savefig(path, bbox_inches="tight")
    return ax


def plot_sps(table, ax=None, path: Optional[str] = None):
    """The SPS curve of an :class:`~dspark_ops.speculative.sps_profile.SPSTable`: measured
    steps per second (points) and the monotone envelope the scheduler reads (line), against
    the verify batch size. Returns the axes; saves the figure to ``path`` when given."""
    ax = _axes(ax)
    measured = [1.0 / s for s in table.step_seconds]
    ax.plot(range(1, len(table.sps)), table.sps[1:], label="envelope (schedule_lengths)")
    ax.scatter(table.batch_sizes, measured, s=12, color="C1", label="measured")
    ax.set_xlabel("verify batch size B (tokens)")
    ax.set_ylabel("steps per second")
    ax.set_title(f"SPS profile ({table.meta.get('device', '?')})")
    return _finish(ax, path)


def plot_acceptance(result, ax=None, path: Optional[str] = None):
    """Per draft position k of a :class:`~dspark_ops.speculative.generate.GenerateResult`:
    the conditional acceptance ``P(x_k accepted | x_1..x_{k-1} accepted)`` (bars) and the
    survival ``P(x_1..x_k all accepted)`` (line), over every verified request-round.
    Returns the axes; saves the figure to ``path`` when given."""
    ax = _axes(ax)
    cond = result.acceptance_by_position()
    surv = result.survival_by_position()
    k = list(range(1, result.gamma + 1))
    ax.bar(k, [0.0 if c != c else c for c in cond], color="C0", alpha=0.6, label="acceptance | prefix accepted")
    ax.plot(k, surv, "o-", color="C3", label="survival (prefix accepted)")
    ax.set_xticks(k)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("draft position k")
    ax.set_ylabel("probability")
    ax.set_title(f"acceptance by position ({result.num_rounds} rounds, τ = {result.tokens_per_round():.2f})")
    return _finish(ax, path)
