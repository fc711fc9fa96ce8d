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
# Written by CMake next to _C.so: the torch.__version__ the library was compiled against.
BUILD_TORCH_VERSION_PATH = os.path.join(_HERE, "_C.torch_version")


def _release(version: str) -> str:
    """``2.14.1+cu130`` -> ``2.14.1``: the local label names the wheel's CUDA flavour, which
    does not change torch's C++ ABI (a CUDA build run on CPU-only torch fails to load anyway)."""
    return str(version).split("+", 1)[0]


def check_torch_version(built: str, running: str) -> None:
    """Raises ImportError when the running torch is not the release ``_C.so`` was built against:
    the op library links libtorch's C++ symbols, which change between releases, and loading it
    into another one fails obscurely (undefined symbols) or, worse, misbehaves."""
    if _release(built) != _release(running):
        raise ImportError(
            f"dspark_ops was built against torch {built}, but torch {running} is running. Rebuild it "
            "against this torch (`pip install --no-build-isolation .`, or `make install`), or run "
            f"it with torch {_release(built)}."
        )


def _load() -> None:
    if not os.path.exists(LIBRARY_PATH):
        raise ImportError(
            f"dspark_ops: the compiled library {LIBRARY_PATH} is missing. Build the package with "
            "`pip install --no-build-isolation .` (or `make install`), and import it from the "
            "installed location rather than from the source tree."
        )
    if os.path.exists(BUILD_TORCH_VERSION_PATH):  # absent only for a _C.so copied by hand
        with open(BUILD_TORCH_VERSION_PATH) as f:
            check_torch_version(f.read().strip(), torch.__version__)
    torch.ops.load_library(LIBRARY_PATH)


_load()


def has_cuda_kernels() -> bool:
    """True when the library was built with its CUDA kernels (nvcc was found at build time)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("dspark::verify_chain", "CUDA")
