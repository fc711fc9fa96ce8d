"""The one greedy test of the package, and the one temperature scaling: a request with ``temperature <= GREEDY_TEMPERATURE``
decodes by argmax. Written as ``not (T > GREEDY_TEMPERATURE)`` so that a NaN temperature is
greedy, exactly as ``dspark::is_greedy`` in ``csrc/include/dspark/sampling.h`` decides it in
every CPU and CUDA kernel; the references, proposers and ``generate`` use this module."""

from __future__ import annotations

from typing import Union

import torch

GREEDY_TEMPERATURE = 1e-5


def is_greedy(temperature: Union[torch.Tensor, float]) -> Union[torch.Tensor, bool]:
    """``temperature``: a tensor (any shape; the result is a bool tensor of that shape) or a
    Python float (the result is a bool). NaN counts as greedy, ``inf`` as sampling."""
    if isinstance(temperature, torch.Tensor):
        return ~(temperature > GREEDY_TEMPERATURE)
    return not (temperature > GREEDY_TEMPERATURE)


def inverse_temperature(temperature: Union[torch.Tensor, float]) -> Union[torch.Tensor, float]:
    """``1 / T`` rounded to float32, as ``dspark::inverse_temperature``: every kernel, CPU twin
    and reference scales a logit as ``L * (1/T)`` in float32 (never ``L / T``), so that they all
    round identically. A tensor gives a float32 tensor of its shape; a float gives the float32
    value as a Python float (exact, so multiplying a float32 tensor by it rounds once).
    ``T >= 2**126`` gives 0 (uniform sampling, as ``T = inf``), as in the kernels."""
    t = temperature.float() if isinstance(temperature, torch.Tensor) else torch.tensor(temperature, dtype=torch.float32)
    inv = torch.where(t >= 2.0**126, torch.zeros_like(t), torch.reciprocal(t))
    return inv if isinstance(temperature, torch.Tensor) else inv.item()
