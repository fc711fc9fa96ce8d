"""Loads the compiled op library (``dspark_ops/_C.so``) into torch.

The library registers every ``torch.ops.dspark`` schema and its CPU (and, when built with
nvcc, CUDA) kernels. It has no Python bindings, so it is loaded with
``torch.ops.load_library`` after ``import torch`` has loaded libtorch.
"""

from __future__ import annotations

import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
LIBRARY_PATH = os.path.join(_HERE, "_C.so")


def _load() -> None:
    if not os.path.exists(LIBRARY_PATH):
        raise ImportError(
            f"dspark_ops: the compiled library {LIBRARY_PATH} is missing. Build the package with "
            "`pip install --no-build-isolation .` (or `make install`), and import it from the "
            "installed location rather than from the source tree."
        )
    torch.ops.load_library(LIBRARY_PATH)


_load()


def has_cuda_kernels() -> bool:
    """True when the library was built with its CUDA kernels (nvcc was found at build time)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("dspark::verify_chain", "CUDA")
