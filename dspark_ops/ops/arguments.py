"""Per-request arguments of the op wrappers: Python scalars and lists become ``[R]`` tensors.

Engines often hold one temperature or seed for the whole batch (``temperature=0.7``,
``seed=0``) or a list (``top_p=[0.9, 1.0]``). The wrappers convert such values once, to the
SPEC dtype on the device of the logits; tensors pass through untouched (the raw ops check
them and name the argument), so the conversion costs nothing for callers that already hold
tensors, and the raw ops themselves stay tensor-only.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

PerRequest = Union[torch.Tensor, float, int, Sequence[float], Sequence[int]]

# SPEC §2 / §9 dtypes of the per-request arguments.
FLOAT_ARGS = ("temperature", "top_p", "min_p")
INT_ARGS = ("seed", "offset", "top_k")


def per_request(value: Optional[PerRequest], requests: int, dtype: torch.dtype, device: torch.device) -> Optional[torch.Tensor]:
    """``value`` as an ``[R]`` tensor: a scalar is repeated, a list/tuple is taken as given
    (its length is checked by the op), a tensor or None is returned as it is."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        return torch.tensor(value, dtype=dtype, device=device)
    return torch.full((requests,), value, dtype=dtype, device=device)


def request_args(requests: int, device: torch.device, **values: Optional[PerRequest]) -> dict[str, Optional[torch.Tensor]]:
    """``per_request`` for each keyword, with the dtype its name has in the SPEC
    (float32 for temperature/top_p/min_p, int64 for seed/offset/top_k)."""
    out = {}
    for name, value in values.items():
        if name in FLOAT_ARGS:
            dtype = torch.float32
        elif name in INT_ARGS:
            dtype = torch.int64
        else:
            raise TypeError(f"request_args: unknown per-request argument '{name}'")
        out[name] = per_request(value, requests, dtype, device)
    return out
