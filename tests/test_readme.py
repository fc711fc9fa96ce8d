"""Every ```python example of the README runs as written on the CPU (each block in a fresh
namespace, from the repository root)."""

import os
import re

import pytest
import torch

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def blocks() -> list[str]:
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_there_are_examples():
    assert len(blocks()) >= 8


@pytest.mark.parametrize("index", range(len(blocks())))
def test_readme_example_runs(index):
    code = blocks()[index]
    if "transformers" in code:
        pytest.importorskip("transformers")
    if "plot_" in code:
        pytest.importorskip("matplotlib")
        import matplotlib

        matplotlib.use("Agg")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    finally:
        torch.set_num_threads(threads)
