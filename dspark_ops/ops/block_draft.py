"""The parallel block draft's ops (SPEC §7): ``block_attention`` and the fused helpers
``rms_norm``, ``qk_norm_rope`` and ``append_context_kv``.

The drafter's layer is GEMMs (kept on torch / cuBLAS) with these ops between them::

    x_n          = rms_norm(x, input_layernorm.weight, eps)
    q, k, v      = q_proj(x_n), k_proj(x_n), v_proj(x_n)            # block tokens
    q, k         = qk_norm_rope(q, k, q_norm.weight, k_norm.weight, positions, eps, theta)
    o            = block_attention(q, k_cache, v_cache, cache_lens, k, v, Dh ** -0.5)
    ...
    # once per round, for the newly committed target positions:
    append_context_kv(k_cache, v_cache, k_proj(ctx), v_proj(ctx), k_norm.weight,
                      start, num_new, eps, theta)

Numerics follow Hugging Face's Qwen3 code: RMSNorm rounds the normalised value to the input
dtype before multiplying by the weight; RoPE is rotate-half with
``inv_freq_i = theta ** (-2 i / Dh)`` and cos/sin rounded to the input dtype. All
arithmetic is float32; outputs are rounded once to the input dtype.

RoPE scaling: both RoPE helpers take an optional ``inv_freq [Dh/2]`` float32 table (which
replaces ``rope_theta``) and an ``attention_scaling`` that multiplies cos and sin, the two
outputs of every Hugging Face ``rope_type`` initialiser. That one form covers linear, YaRN,
llama3, dynamic NTK at its initial length and Gemma's proportional / partial RoPE (a zero
entry leaves its pair unrotated); :mod:`dspark_ops.speculative.rope_scaling` computes it
from a model config.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ._checks import FLOAT_DTYPES, ArgChecks
from ._documented import documented

__all__ = ["block_attention", "rms_norm", "qk_norm_rope", "append_context_kv"]


@documented
def block_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    k_block: torch.Tensor,
    v_block: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of γ block queries to a request's cached context and to the whole block.

    Args:
        q: ``[R, γ, Hq, Dh]`` float32/bf16/fp16 block queries (after q_norm and RoPE).
        k_cache, v_cache: ``[R, Lmax, Hkv, Dh]`` the drafter's context cache (slot = position);
            only the first ``cache_lens[r]`` slots of request r are read. Read through their
            strides when the last dimension is contiguous (no copy).
        cache_lens: ``[R]`` int64 valid context entries per request, in ``[0, Lmax]``.
        k_block, v_block: ``[R, γ, Hkv, Dh]`` keys/values of the block tokens themselves.
        scale: softmax scale, usually ``Dh ** -0.5``.

    Returns:
        ``[R, γ, Hq, Dh]`` in q's dtype: for query head ``i`` (kv head ``i // (Hq // Hkv)``,
        GQA), ``softmax(scale * q k^T) v`` over the keys ``k_cache[r, :cache_lens[r]]``
        followed by all γ block keys: non-causal inside the block, so every block query sees
        every block key. Float32 accumulation.

    ``Hq % Hkv == 0`` is required. On CPU, ``cache_lens`` outside ``[0, Lmax]`` raises; on CUDA
    that check runs only with ``DSPARK_CHECK=1`` (it needs a host sync) and otherwise the
    kernel clamps each length into ``[0, Lmax]``.

    CUDA: a decode-style split-KV kernel (one CTA per request, kv head, ≤ 32 query rows and
    key split; all γ·Hq/Hkv queries of a kv head share every K/V tile; a combine kernel
    merges the splits). The number of splits depends on shapes only, so the call never syncs
    and can be captured in a CUDA graph. Head dims 64, 128 and 256 have kernels; any other
    head dim runs the same masked attention as float32 ATen ops (still sync-free). Aligned
    bf16/fp16 inputs use tensor cores (float32 accumulation; the softmax probabilities are
    rounded to the input dtype before ``P V``, as in FlashAttention), K/V tiles prefetched
    with ``cp.async`` into double-buffered shared memory. ``DSPARK_BLOCK_ATTENTION_KERNEL``
    (read once per process) selects ``pipelined`` (default), ``legacy`` (the previous WMMA
    kernel) or ``simt`` (CUDA cores, all float32; float32 and unaligned inputs always use it).
    """
    return torch.ops.dspark.block_attention(q, k_cache, v_cache, cache_lens, k_block, v_block, scale)


@documented
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3 RMSNorm over the last dimension: ``weight * round(x * rsqrt(mean(x^2) + eps))``.

    Args:
        x: ``[..., D]`` float32/bf16/fp16 (any leading shape, may be non-contiguous).
        weight: ``[D]``, x's dtype.
        eps: added to the mean square.

    Returns a new contiguous tensor shaped like x, in x's dtype.
    """
    return torch.ops.dspark.rms_norm(x, weight, eps)


@documented
def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_norm_weight: torch.Tensor,
    k_norm_weight: torch.Tensor,
    positions: torch.Tensor,
    eps: float,
    rope_theta: float,
    inv_freq: Optional[torch.Tensor] = None,
    attention_scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of queries and keys (Qwen3's q_norm/k_norm) followed by RoPE.

    Args:
        q: ``[..., Hq, Dh]``; k: ``[..., Hkv, Dh]`` with the same leading shape and dtype.
        q_norm_weight, k_norm_weight: ``[Dh]``.
        positions: ``[...]`` int64, the absolute position of every token (any value; the
            angle is ``float(position) * inv_freq``).
        eps: RMSNorm epsilon. rope_theta: RoPE base (Qwen3: 1e6).
        inv_freq: ``[Dh/2]`` float32 on q's device, or None for ``theta ** (-2 i / Dh)``.
        attention_scaling: multiplies cos and sin (YaRN's mscale; 1 otherwise), finite > 0.

    Returns ``(q', k')``, new tensors shaped like q and k. Dh must be even (rotate-half).
    """
    return torch.ops.dspark.qk_norm_rope(
        q, k, q_norm_weight, k_norm_weight, positions, eps, rope_theta, inv_freq, attention_scaling
    )


@documented
def append_context_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_norm_weight: torch.Tensor,
    start: torch.Tensor,
    num_new: torch.Tensor,
    eps: float,
    rope_theta: float,
    inv_freq: Optional[torch.Tensor] = None,
    attention_scaling: float = 1.0,
) -> None:
    """Write newly committed context keys/values into a drafter layer's cache, in place.

    Args:
        k_cache, v_cache: ``[R, Lmax, Hkv, Dh]`` (mutated; last dimension contiguous). Slot
            ``j`` of request r holds the context token at absolute position ``j``.
        k_new, v_new: ``[R, C, Hkv, Dh]`` ``k_proj`` / ``v_proj`` of the new context features
            (``hidden_norm(fc(target hidden states))``), padded to a common width C.
        k_norm_weight: ``[Dh]`` the layer's ``k_norm`` weight.
        start: ``[R]`` int64, position of ``k_new[r, 0]`` (= the request's current cache length).
        num_new: ``[R]`` int64 in ``[0, C]``, how many of the C entries of request r are real.
        eps, rope_theta, inv_freq, attention_scaling: as in :func:`qk_norm_rope`.

    For ``i < num_new[r]``: ``k_cache[r, start[r] + i] = RoPE(k_norm(k_new[r, i]), start[r] + i)``
    and ``v_cache[r, start[r] + i] = v_new[r, i]``. Nothing else is touched, so requests with
    ``num_new[r] = 0`` keep their cache. The caller advances ``cache_lens += num_new`` (a
    device-side add, no sync). Designed for engines: ragged per-request counts in one padded
    launch, no host sync, capturable in a CUDA graph. On CPU, ``num_new`` outside ``[0, C]``,
    ``start`` outside ``[0, Lmax]`` or ``start + num_new > Lmax`` raises; on CUDA only with
    ``DSPARK_CHECK=1``, and otherwise entries that would land outside the cache are skipped
    (compared without overflow, whatever ``start`` is).

    The caches are written from parallel threads: a cache whose elements alias each other
    (an ``expand()``ed view), caches that overlap each other, or an input that shares memory
    with a cache raise ``RuntimeError``, as torch's own in-place ops do.
    """
    torch.ops.dspark.append_context_kv(
        k_cache, v_cache, k_new, v_new, k_norm_weight, start, num_new, eps, rope_theta, inv_freq, attention_scaling
    )


@torch.library.register_fake("dspark::block_attention")
def _block_attention_fake(q, k_cache, v_cache, cache_lens, k_block, v_block, scale):
    c = ArgChecks("dspark::block_attention", q)
    c.dtype(q, "q", FLOAT_DTYPES)
    c.dim(q, "q", 4)
    requests, gamma, q_heads, head_dim = q.shape
    c.dim(k_cache, "k_cache", 4)
    max_len, kv_heads = k_cache.size(1), k_cache.size(2)
    for t, name in ((k_cache, "k_cache"), (v_cache, "v_cache"), (k_block, "k_block"), (v_block, "v_block")):
        shape = [(requests, "R, from q"), None, (kv_heads, "Hkv, from k_cache"), (head_dim, "Dh, from q")]
        c.like(t, name, q, "q", shape)
    c.size(v_cache, "v_cache", 1, max_len, "Lmax, from k_cache")
    c.size(k_block, "k_block", 1, gamma, "gamma, from q")
    c.size(v_block, "v_block", 1, gamma, "gamma, from q")
    c.check(kv_heads > 0, "q", lambda: f"needs a key/value head count Hkv > 0 (GQA), got Hkv = {kv_heads}")
    c.check(
        q_heads % kv_heads == 0,
        "q",
        lambda: "must have a head count divisible by the key/value head count (GQA), got "
        f"Hq = {q_heads} and Hkv = {kv_heads}",
    )
    c.check(head_dim > 0, "q", lambda: f"must have a head dimension > 0, got shape {tuple(q.shape)}")
    c.index_vector(cache_lens, "cache_lens", requests, "R")
    c.check(math.isfinite(scale), "scale", lambda: f"must be finite, got {scale}")
    return q.new_empty(q.shape)


@torch.library.register_fake("dspark::rms_norm")
def _rms_norm_fake(x, weight, eps):
    c = ArgChecks("dspark::rms_norm", x)
    c.dtype(x, "x", FLOAT_DTYPES)
    c.min_dim(x, "x", 1)
    c.like(weight, "weight", x, "x", [(x.size(-1), "the last dimension of x")])
    c.check(eps >= 0.0, "eps", lambda: f"must be >= 0, got {eps}")
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.register_fake("dspark::qk_norm_rope")
def _qk_norm_rope_fake(q, k, q_norm_weight, k_norm_weight, positions, eps, rope_theta, inv_freq=None,
                       attention_scaling=1.0):
    c = ArgChecks("dspark::qk_norm_rope", q)
    c.dtype(q, "q", FLOAT_DTYPES)
    c.min_dim(q, "q", 2)
    leading = [(q.size(d), "the leading shape of q") for d in range(q.dim() - 2)]
    head_dim = q.size(-1)
    c.like(k, "k", q, "q", leading + [None, (head_dim, "Dh, from q")])
    c.check(head_dim % 2 == 0, "q", lambda: f"must have an even head dimension (rotate-half RoPE), got {head_dim}")
    for t, name in ((q_norm_weight, "q_norm_weight"), (k_norm_weight, "k_norm_weight")):
        c.like(t, name, q, "q", [(head_dim, "Dh, from q")])
    c.tensor(positions, "positions", (torch.int64,), leading)
    c.check(eps >= 0.0, "eps", lambda: f"must be >= 0, got {eps}")
    c.check(rope_theta > 0.0, "rope_theta", lambda: f"must be > 0, got {rope_theta}")
    if inv_freq is not None:
        c.tensor(inv_freq, "inv_freq", (torch.float32,), [(head_dim // 2, "Dh / 2")])
    c.check(math.isfinite(attention_scaling) and attention_scaling > 0.0, "attention_scaling",
            lambda: f"must be finite and > 0, got {attention_scaling}")
    return (
        torch.empty(q.shape, dtype=q.dtype, device=q.device),
        torch.empty(k.shape, dtype=k.dtype, device=k.device),
    )


@torch.library.register_fake("dspark::append_context_kv")
def _append_context_kv_fake(k_cache, v_cache, k_new, v_new, k_norm_weight, start, num_new, eps, rope_theta,
                            inv_freq=None, attention_scaling=1.0):
    # The real kernel also rejects inputs that share memory with a cache; meta tensors have no
    # addresses, so that check stays with it. Internal overlap is a property of the strides.
    c = ArgChecks("dspark::append_context_kv", k_cache)
    c.dtype(k_cache, "k_cache", FLOAT_DTYPES)
    c.dim(k_cache, "k_cache", 4)
    requests, max_len, kv_heads, head_dim = k_cache.shape
    c.dim(k_new, "k_new", 4)
    chunk = k_new.size(1)
    per_entry = [(requests, "R, from k_cache"), None, (kv_heads, "Hkv, from k_cache"), (head_dim, "Dh, from k_cache")]
    for t, name in ((v_cache, "v_cache"), (k_new, "k_new"), (v_new, "v_new")):
        c.like(t, name, k_cache, "k_cache", per_entry)
    c.size(v_cache, "v_cache", 1, max_len, "Lmax, from k_cache")
    c.size(v_new, "v_new", 1, chunk, "C, from k_new")
    c.check(
        head_dim % 2 == 0, "k_cache", lambda: f"must have an even head dimension (rotate-half RoPE), got {head_dim}"
    )
    for t, name in ((k_cache, "k_cache"), (v_cache, "v_cache")):
        c.check(t.stride(3) == 1, name, "must have a contiguous last dimension (it is written in place)")
    c.like(k_norm_weight, "k_norm_weight", k_cache, "k_cache", [(head_dim, "Dh, from k_cache")])
    c.index_vector(start, "start", requests, "R")
    c.index_vector(num_new, "num_new", requests, "R")
    c.check(eps >= 0.0, "eps", lambda: f"must be >= 0, got {eps}")
    c.check(rope_theta > 0.0, "rope_theta", lambda: f"must be > 0, got {rope_theta}")
    c.no_internal_overlap(k_cache, "k_cache")
    c.no_internal_overlap(v_cache, "v_cache")
    if inv_freq is not None:
        c.tensor(inv_freq, "inv_freq", (torch.float32,), [(head_dim // 2, "Dh / 2")])
    c.check(math.isfinite(attention_scaling) and attention_scaling > 0.0, "attention_scaling",
            lambda: f"must be finite and > 0, got {attention_scaling}")
    return None
