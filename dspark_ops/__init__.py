"""dspark_ops: kernels for DSpark-style speculative decoding as ``torch.ops.dspark``.

``import dspark_ops`` loads the compiled library and registers the fake (meta) kernels;
after that, every op is reachable as ``torch.ops.dspark.<op>`` or through the wrappers
below. The contract of every op is SPEC.md (shipped with the repository).
"""

from . import _library, calibration
from ._library import has_cuda_kernels
from .markov_draft import markov_draft
from .rng import Purpose, random_bits
from .verify_chain import verify_chain

__all__ = [
    "Purpose",
    "calibration",
    "has_cuda_kernels",
    "markov_draft",
    "random_bits",
    "verify_chain",
]
__version__ = "0.1.0"
