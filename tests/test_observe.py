"""Observability: survival / acceptance by position from a GenerateResult, the plots (SPS
curve, acceptance / survival), and the optional tqdm progress bars of generate and
profile_sps."""

import pytest
import torch

from dspark_ops import GenerateResult, generate
from dspark_ops.speculative.generate import RoundStats
from dspark_ops.speculative.observe import ProgressBar, plot_sps
from dspark_ops.speculative.proposers import ModelDrafter
from dspark_ops.speculative.sps_profile import profile_sps
from dspark_ops.speculative.targets import TinyCausalLM, TinyConfig


def result():
    # Two rounds, γ = 3: (ℓ, accepted) = (3, 1), (2, 2) | (3, 3), (0, 0).
    rounds = [RoundStats([0, 1], [3, 2], [1, 2], [2, 3], {}), RoundStats([0, 1], [3, 0], [3, 0], [4, 1], {})]
    return GenerateResult([[1], [2]], ["length", "length"], rounds, 3)


def test_survival_and_acceptance_by_position():
    res = result()
    # Survival: position k among the request-rounds with ℓ >= k (3, 3, 2 of them), accepted
    # with its whole prefix in 3, 2 and 1 of them.
    assert res.survival_by_position() == [1.0, 2 / 3, 1 / 2]
    # Conditional: position 3 is only tried where x_1, x_2 were accepted (once, accepted).
    assert res.acceptance_by_position() == [1.0, 2 / 3, 1.0]


def test_plots_write_files(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    res = result()
    ax = res.plot_acceptance(path=str(tmp_path / "acc.png"))
    assert (tmp_path / "acc.png").stat().st_size > 0 and len(ax.patches) == 3
    table = profile_sps(lambda b: torch.ones(b).sum(), max_batch=16, batch_sizes=[1, 4, 16], device="cpu",
                        iters=1, repeats=1, warmup=0, progress=False)
    plot_sps(table, path=str(tmp_path / "sps.png"))
    assert (tmp_path / "sps.png").stat().st_size > 0


def test_progress_bars(capsys):
    pytest.importorskip("tqdm")
    with ProgressBar(5, "x", "it", enabled=True) as bar:
        bar.update(5, rate="1")
    assert "x" in capsys.readouterr().err
    with ProgressBar(5, "hidden", "it", enabled=False) as bar:
        bar.update(5)
    assert "hidden" not in capsys.readouterr().err
    target = TinyCausalLM(TinyConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_ff=32))
    res = generate(target, ModelDrafter(target.perturbed(0.01)), [[1, 2]], max_new_tokens=8, progress=True)
    assert len(res.tokens[0]) == 8 and "generate" in capsys.readouterr().err
    profile_sps(lambda b: torch.ones(b).sum(), max_batch=8, batch_sizes=[1, 8], device="cpu", iters=1, repeats=1,
                warmup=0, progress=True)
    assert "profile_sps" in capsys.readouterr().err
