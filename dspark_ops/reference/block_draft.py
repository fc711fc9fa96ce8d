"""Pure-PyTorch references of the block-draft ops (SPEC §7): plain tensor code with an
explicit attention mask, following Hugging Face's Qwen3 numerics (see dspark_ops.block_draft)."""

from __future__ import annotations

import torch

__all__ = ["block_attention", "rms_norm", "qk_norm_rope", "append_context_kv", "rope_cos_sin"]


def block_attention(q, k_cache, v_cache, cache_lens, k_block, v_block, scale):
    """``[R, γ, Hq, Dh]``: softmax over [cache[:len] ; block] with an explicit mask, float32."""
    R, gamma, hq, dh = q.shape
    lmax, hkv = k_cache.shape[1], k_cache.shape[2]
    group = hq // hkv
    lens = cache_lens.clamp(0, lmax)
    j = torch.arange(lmax + gamma, device=q.device)
    visible = (j[None, :] < lens[:, None]) | (j[None, :] >= lmax)  # [R, Lmax+γ]
    # Slots past cache_lens are never read by the kernels: zero them here too, or a NaN there
    # would leak through 0 * NaN in the products.
    hidden = ~visible[:, :, None, None]
    keys = torch.cat([k_cache, k_block], dim=1).float().masked_fill(hidden, 0.0).repeat_interleave(group, dim=2)
    values = torch.cat([v_cache, v_block], dim=1).float().masked_fill(hidden, 0.0).repeat_interleave(group, dim=2)
    scores = torch.einsum("rthd,rjhd->rhtj", q.float(), keys) * scale  # [R, Hq, γ, Lmax+γ]
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("rhtj,rjhd->rthd", probs, values)
    return out.to(q.dtype)


def rms_norm(x, weight, eps):
    """Qwen3RMSNorm: ``weight * (x * rsqrt(mean(x^2) + eps)).to(dtype)``."""
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return weight * normed


def rope_cos_sin(positions, head_dim, theta, dtype, inv_freq=None, attention_scaling=1.0):
    """cos, sin ``[..., Dh]`` as Hugging Face's rotary embeddings compute them (float32,
    times ``attention_scaling``, then dtype). ``inv_freq [Dh/2]`` float32 replaces theta."""
    if inv_freq is None:
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
        # theta ** exponent in float64 rounded once to float32: the correctly rounded float32 power,
        # which HF's float32 pow gives on the CPU, on every device (CUDA powf is only 2-ulp accurate).
        theta32 = float(torch.tensor(theta, dtype=torch.float32))
        inv_freq = 1.0 / (theta32 ** exponent.double()).float()
    freqs = positions.float()[..., None] * inv_freq.float().to(positions.device)
    emb = torch.cat([freqs, freqs], dim=-1)
    return (emb.cos() * attention_scaling).to(dtype), (emb.sin() * attention_scaling).to(dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _apply_rope(x, cos, sin):
    # x [..., H, Dh]; cos/sin [..., Dh]
    return x * cos[..., None, :] + _rotate_half(x) * sin[..., None, :]


def qk_norm_rope(q, k, q_norm_weight, k_norm_weight, positions, eps, rope_theta, inv_freq=None, attention_scaling=1.0):
    cos, sin = rope_cos_sin(positions, q.shape[-1], rope_theta, q.dtype, inv_freq, attention_scaling)
    return (
        _apply_rope(rms_norm(q, q_norm_weight, eps), cos, sin),
        _apply_rope(rms_norm(k, k_norm_weight, eps), cos, sin),
    )


def append_context_kv(k_cache, v_cache, k_new, v_new, k_norm_weight, start, num_new, eps, rope_theta, inv_freq=None,
                      attention_scaling=1.0):
    """In place, like the op: slot start[r] + i <- RoPE(k_norm(k_new[r, i])), v_new[r, i]."""
    R, C = k_new.shape[:2]
    lmax = k_cache.shape[1]
    i = torch.arange(C, device=k_new.device)
    # In range as start < Lmax - i, like the kernels: start + i could overflow near 2^63.
    keep = (i[None, :] < num_new[:, None]) & (start[:, None] >= 0) & (start[:, None] < lmax - i[None, :])  # [R, C]
    slots = torch.where(keep, start[:, None], 0) + i[None, :]  # kept entries only are written
    cos, sin = rope_cos_sin(slots, k_new.shape[-1], rope_theta, k_new.dtype, inv_freq, attention_scaling)
    k_rot = _apply_rope(rms_norm(k_new, k_norm_weight, eps), cos, sin)
    rr, cc = keep.nonzero(as_tuple=True)
    k_cache[rr, slots[rr, cc]] = k_rot[rr, cc]
    v_cache[rr, slots[rr, cc]] = v_new[rr, cc]
