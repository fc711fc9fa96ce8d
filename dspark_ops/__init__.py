"""dspark_ops: kernels for DSpark-style speculative decoding as ``torch.ops.dspark``.

``import dspark_ops`` loads the compiled library and registers the fake (meta) kernels;
after that, every op is reachable as ``torch.ops.dspark.<op>`` or through the wrappers
re-exported here. The documentation of every op (signature, shapes, dtypes, semantics,
randomness, checks, CUDA limits) is ``docs/ops.md`` in the repository, and
``help(torch.ops.dspark.<op>)`` prints one op's documentation.

Layout: ``dspark_ops.ops`` holds the op wrappers and fake kernels; ``dspark_ops.speculative``
the engine-side code built on them (drafter module, ``generate``, targets, proposers, SPS
profiling, calibration); ``dspark_ops.reference`` a pure-PyTorch twin of every op, for tests.
"""

from . import _library  # noqa: F401  (loads _C.so: registers every op before the wrappers)
from ._library import has_cuda_kernels
from ._version import __version__
from .ops import (
    Purpose,
    append_context_kv,
    block_attention,
    markov_draft,
    qk_norm_rope,
    random_bits,
    rms_norm,
    schedule_lengths,
    tree_metadata,
    verify_chain,
    verify_tree,
)
from .speculative import calibration, proposers, sps_profile, targets
from .speculative.dspark_drafter import DSparkConfig, DSparkDrafter
from .speculative.generate import (
    ConfidenceThreshold,
    FixedLength,
    GenerateResult,
    SPSSchedule,
    generate,
    target_decode,
)

__all__ = [
    "__version__",
    "ConfidenceThreshold",
    "DSparkConfig",
    "DSparkDrafter",
    "FixedLength",
    "GenerateResult",
    "Purpose",
    "SPSSchedule",
    "append_context_kv",
    "block_attention",
    "calibration",
    "generate",
    "has_cuda_kernels",
    "markov_draft",
    "proposers",
    "qk_norm_rope",
    "random_bits",
    "rms_norm",
    "schedule_lengths",
    "sps_profile",
    "target_decode",
    "targets",
    "tree_metadata",
    "verify_chain",
    "verify_tree",
]
