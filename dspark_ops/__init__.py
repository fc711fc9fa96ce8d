"""dspark_ops: kernels for DSpark-style speculative decoding as ``torch.ops.dspark``.

``import dspark_ops`` loads the compiled library and registers the fake (meta) kernels;
after that, every op is reachable as ``torch.ops.dspark.<op>`` or through the wrappers
below. The contract of every op is SPEC.md (shipped with the repository).
"""

from . import _library, calibration
from ._library import has_cuda_kernels
from .block_draft import append_context_kv, block_attention, qk_norm_rope, rms_norm
from .drafter import DSparkConfig, DSparkDrafter
from .markov_draft import markov_draft
from .rng import Purpose, random_bits
from .schedule_lengths import schedule_lengths
from .verify_chain import verify_chain
from . import drafters, scheduling, targets
from .generate import (
    ConfidenceThreshold,
    FixedLength,
    GenerateResult,
    SPSSchedule,
    generate,
    target_decode,
)
from .verify_tree import tree_metadata, verify_tree

__all__ = [
    "ConfidenceThreshold",
    "FixedLength",
    "GenerateResult",
    "SPSSchedule",
    "drafters",
    "generate",
    "target_decode",
    "targets",
    "DSparkConfig",
    "DSparkDrafter",
    "append_context_kv",
    "block_attention",
    "qk_norm_rope",
    "rms_norm",
    "Purpose",
    "calibration",
    "has_cuda_kernels",
    "markov_draft",
    "random_bits",
    "schedule_lengths",
    "scheduling",
    "tree_metadata",
    "verify_chain",
    "verify_tree",
]
__version__ = "0.1.0"
