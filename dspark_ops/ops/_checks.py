"""Argument checks of the fake (meta) kernels: the Python twin of ``csrc/include/dspark/checks.h``.

A fake kernel runs wherever the real one cannot: under ``torch.compile`` (fake tensors) and
whenever any argument is on the ``meta`` device. It must therefore reject what the real
kernel rejects (device, dtype, rank, size and scalar checks; value checks need the data and
stay with the real kernels), with the same ``RuntimeError`` naming the argument; otherwise a
mixed cpu/meta call returns uninitialised tensors. One :class:`ArgChecks` per call carries
the op name and the reference tensor (the argument every other one must share a device with).
Sizes may be symbolic: every size check goes through ``torch._check``, never a Python ``if``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class ArgChecks:
    """Checks of one op call; every failure raises ``RuntimeError("<op>: argument '<arg>' ...")``."""

    def __init__(self, op: str, ref: torch.Tensor):
        self.op = op
        self.ref = ref

    def check(self, cond, arg: str, what) -> None:
        """Raise unless ``cond``; ``what`` (a string or a callable giving one) says what was expected."""
        torch._check(cond, lambda: f"{self.op}: argument '{arg}' {what() if callable(what) else what}")

    def device(self, t: torch.Tensor, arg: str) -> None:
        self.check(
            t.device == self.ref.device,
            arg,
            lambda: f"must be on {self.ref.device} like the other arguments, got {t.device}",
        )

    def dtype(self, t: torch.Tensor, arg: str, allowed: Sequence[torch.dtype]) -> None:
        names = " or ".join(str(d).removeprefix("torch.") for d in allowed)
        self.check(t.dtype in allowed, arg, lambda: f"must have dtype {names}, got {t.dtype}")

    def same_dtype(self, t: torch.Tensor, arg: str, like: torch.Tensor, like_arg: str) -> None:
        self.check(
            t.dtype == like.dtype, arg, lambda: f"must have the dtype of {like_arg} ({like.dtype}), got {t.dtype}"
        )

    def dim(self, t: torch.Tensor, arg: str, dim: int) -> None:
        self.check(t.dim() == dim, arg, lambda: f"must have {dim} dimensions, got shape {tuple(t.shape)}")

    def min_dim(self, t: torch.Tensor, arg: str, dim: int) -> None:
        self.check(t.dim() >= dim, arg, lambda: f"must have at least {dim} dimensions, got shape {tuple(t.shape)}")

    def size(self, t: torch.Tensor, arg: str, d: int, expected, what: str) -> None:
        self.check(
            t.size(d) == expected,
            arg,
            lambda: f"must have size {expected} ({what}) in dimension {d}, got shape {tuple(t.shape)}",
        )

    def shape(self, t: torch.Tensor, arg: str, shape: Sequence) -> None:
        """Rank ``len(shape)``; a ``(size, what)`` entry fixes that dimension, ``None`` leaves it free."""
        self.dim(t, arg, len(shape))
        for d, expected in enumerate(shape):
            if expected is not None:
                self.size(t, arg, d, *expected)

    def tensor(self, t: torch.Tensor, arg: str, dtypes: Sequence[torch.dtype], shape: Sequence) -> None:
        """On the reference device, one of ``dtypes``, of the given :meth:`shape`."""
        self.device(t, arg)
        self.dtype(t, arg, dtypes)
        self.shape(t, arg, shape)

    def like(self, t: torch.Tensor, arg: str, like: torch.Tensor, like_arg: str, shape: Sequence) -> None:
        """As :meth:`tensor`, with the dtype of ``like`` (one float dtype shared by a call)."""
        self.device(t, arg)
        self.same_dtype(t, arg, like, like_arg)
        self.shape(t, arg, shape)

    def index_vector(self, t: torch.Tensor, arg: str, n, what: str) -> None:
        """An int64 vector ``[n]`` on the reference device."""
        self.tensor(t, arg, (torch.int64,), [(n, what)])

    def float_vector(self, t: torch.Tensor, arg: str, n, what: str) -> None:
        """A float32 vector ``[n]`` on the reference device."""
        self.tensor(t, arg, (torch.float32,), [(n, what)])

    def sampling(
        self,
        temperature: torch.Tensor,
        seed: torch.Tensor,
        offset: torch.Tensor,
        eos_ids: Optional[torch.Tensor],
        requests,
    ) -> None:
        """The per-request sampling arguments of the verify ops (``check_sampling_args``)."""
        self.float_vector(temperature, "temperature", requests, "R")
        self.index_vector(seed, "seed", requests, "R")
        self.index_vector(offset, "offset", requests, "R")
        if eos_ids is not None:
            self.tensor(eos_ids, "eos_ids", (torch.int64,), [None])

    def filters(self, top_k, top_p, min_p, requests) -> None:
        """The SPEC §9 filters (``check_filter_args``): each None or a per-request vector."""
        if top_k is not None:
            self.index_vector(top_k, "top_k", requests, "R")
        for t, name in ((top_p, "top_p"), (min_p, "min_p")):
            if t is not None:
                self.float_vector(t, name, requests, "R")

    def draft_q(self, draft_logits, draft_probs, draft_ids, leading: Sequence, vocab) -> None:
        """The draft distribution (``check_draft_q``): dense logits or probabilities, or K
        listed entries with ``draft_ids``; ``leading`` is the shape before the last axis."""
        self.check(draft_logits is None or draft_probs is None, "draft_probs",
                   "must be None when draft_logits is given (q comes from one of them)")
        values, name = (draft_logits, "draft_logits") if draft_probs is None else (draft_probs, "draft_probs")
        width = (vocab, "V, the columns of target_logits")
        if draft_ids is not None:
            self.check(values is not None, "draft_ids", "needs draft_logits or draft_probs (the K listed entries)")
            self.tensor(draft_ids, "draft_ids", (torch.int64,), list(leading) + [None])
            entries = draft_ids.size(-1)
            self.check(entries >= 1 and entries <= vocab, "draft_ids",
                       lambda: f"must list between 1 and V={vocab} ids per row, got shape {tuple(draft_ids.shape)}")
            width = (entries, "K, the columns of draft_ids")
        if values is not None:
            dtypes = FLOAT_DTYPES if draft_probs is None else (torch.float32,)
            self.tensor(values, name, dtypes, list(leading) + [width])

    def no_internal_overlap(self, t: torch.Tensor, arg: str) -> None:
        """A tensor written in place has no two elements at one address (``at::has_internal_overlap``
        says Yes exactly when a dimension of size > 1 has stride 0, e.g. an ``expand()``ed view)."""
        aliased = any(
            statically_known_true(t.stride(d) == 0) and statically_known_true(t.size(d) > 1) for d in range(t.dim())
        )
        self.check(
            not aliased,
            arg,
            lambda: "is written in place and must not have elements that share memory (e.g. an expand()ed "
            f"tensor), got shape {tuple(t.shape)} and strides {t.stride()}",
        )
