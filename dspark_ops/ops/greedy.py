"""The one greedy test of the package: a request with ``temperature <= GREEDY_TEMPERATURE``
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
