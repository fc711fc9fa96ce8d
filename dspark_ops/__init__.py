"""dspark_ops: kernels for DSpark-style speculative decoding as ``torch.ops.dspark``.

``import dspark_ops`` loads the compiled library and registers the fake (meta) kernels;
after that, every op is reachable as ``torch.ops.dspark.<op>`` or through the wrappers
below. The contract of every op is SPEC.md (shipped with the repository).
"""

from . import _library
from ._library import has_cuda_kernels
from .rng import Purpose, random_bits
from .verify_chain import verify_chain
from .verify_tree import tree_metadata, verify_tree

__all__ = [
    "Purpose",
    "has_cuda_kernels",
    "random_bits",
    "tree_metadata",
    "verify_chain",
    "verify_tree",
]
__version__ = "0.1.0"
