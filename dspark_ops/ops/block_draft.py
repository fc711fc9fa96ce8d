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
"""

from __future__ import annotations

import torch

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
    rounded to the input dtype before ``P V``, as in FlashAttention);
    ``DSPARK_BLOCK_ATTENTION_SIMT=1`` forces the CUDA-core kernel (all float32).
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of queries and keys (Qwen3's q_norm/k_norm) followed by RoPE.

    Args:
        q: ``[..., Hq, Dh]``; k: ``[..., Hkv, Dh]`` with the same leading shape and dtype.
        q_norm_weight, k_norm_weight: ``[Dh]``.
        positions: ``[...]`` int64, the absolute position of every token (any value; the
            angle is ``float(position) * inv_freq``).
        eps: RMSNorm epsilon. rope_theta: RoPE base (Qwen3: 1e6).

    Returns ``(q', k')``, new tensors shaped like q and k. Dh must be even (rotate-half).
    """
    return torch.ops.dspark.qk_norm_rope(q, k, q_norm_weight, k_norm_weight, positions, eps, rope_theta)


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
        eps, rope_theta: as in :func:`qk_norm_rope`.

    For ``i < num_new[r]``: ``k_cache[r, start[r] + i] = RoPE(k_norm(k_new[r, i]), start[r] + i)``
    and ``v_cache[r, start[r] + i] = v_new[r, i]``. Nothing else is touched, so requests with
    ``num_new[r] = 0`` keep their cache. The caller advances ``cache_lens += num_new`` (a
    device-side add, no sync). Designed for engines: ragged per-request counts in one padded
    launch, no host sync, capturable in a CUDA graph. On CPU, ``num_new`` outside ``[0, C]``
    or ``start + num_new > Lmax`` raises; on CUDA only with ``DSPARK_CHECK=1``, and otherwise
    entries that would land outside the cache are skipped.
    """
    torch.ops.dspark.append_context_kv(
        k_cache, v_cache, k_new, v_new, k_norm_weight, start, num_new, eps, rope_theta
    )


@torch.library.register_fake("dspark::block_attention")
def _block_attention_fake(q, k_cache, v_cache, cache_lens, k_block, v_block, scale):
    op = "dspark::block_attention"
    torch._check(q.dim() == 4, lambda: f"{op}: argument 'q' must have 4 dimensions")
    torch._check(k_cache.dim() == 4, lambda: f"{op}: argument 'k_cache' must have 4 dimensions")
    torch._check(k_block.dim() == 4, lambda: f"{op}: argument 'k_block' must have 4 dimensions")
    torch._check(
        q.size(2) % k_cache.size(2) == 0, lambda: f"{op}: argument 'q' must have Hq divisible by Hkv"
    )
    return q.new_empty(q.shape)


@torch.library.register_fake("dspark::rms_norm")
def _rms_norm_fake(x, weight, eps):
    torch._check(x.dim() >= 1, lambda: "dspark::rms_norm: argument 'x' must have at least 1 dimension")
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.register_fake("dspark::qk_norm_rope")
def _qk_norm_rope_fake(q, k, q_norm_weight, k_norm_weight, positions, eps, rope_theta):
    torch._check(q.dim() >= 2, lambda: "dspark::qk_norm_rope: argument 'q' must have at least 2 dimensions")
    return (
        torch.empty(q.shape, dtype=q.dtype, device=q.device),
        torch.empty(k.shape, dtype=k.dtype, device=k.device),
    )


@torch.library.register_fake("dspark::append_context_kv")
def _append_context_kv_fake(k_cache, v_cache, k_new, v_new, k_norm_weight, start, num_new, eps, rope_theta):
    torch._check(k_cache.dim() == 4, lambda: "dspark::append_context_kv: argument 'k_cache' must have 4 dimensions")
    return None
