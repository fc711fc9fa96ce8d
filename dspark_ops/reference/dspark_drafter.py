"""Plain-PyTorch DSpark drafter forward with an explicit attention mask, written from a
DeepSpec-named state dict (no module, no cache): the reference that ``DSparkDrafter`` is
tested against. It recomputes the context keys/values from the whole target hidden history
every call, as DeepSpec's training forward does."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .block_draft import _apply_rope, rms_norm, rope_cos_sin

__all__ = ["drafter_backbone", "markov_greedy"]


def drafter_backbone(sd: dict, cfg, target_hidden: torch.Tensor, ctx_lens: torch.Tensor, anchor: torch.Tensor):
    """Returns ``(hidden [R, γ, d], base_logits [R, γ, V])``.

    Args:
        sd: DeepSpec state dict (``fc.weight``, ``layers.{i}.self_attn.q_proj.weight``, ...).
        cfg: a ``DSparkConfig``.
        target_hidden: ``[R, P, m*d]`` concatenated target layers of positions ``0..P-1``.
        ctx_lens: ``[R]`` committed tokens per request; context token j is visible iff
            ``j < ctx_lens[r]``; the anchor sits at position ``ctx_lens[r]``.
        anchor: ``[R]`` int64.
    """
    R, P, _ = target_hidden.shape
    L = cfg.verification_block_size
    hq, hkv, dh, eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps
    dev = target_hidden.device
    dtype = sd["fc.weight"].dtype

    def lin(x, name):
        b = sd.get(name + ".bias")
        return F.linear(x, sd[name + ".weight"], b)

    ctx = rms_norm(lin(target_hidden, "fc"), sd["hidden_norm.weight"], eps)  # [R, P, d]
    ids = torch.full((R, L), cfg.mask_token_id, dtype=torch.int64, device=dev)
    ids[:, 0] = anchor
    x = F.embedding(ids, sd["embed_tokens.weight"])
    ctx_pos = torch.arange(P, device=dev).expand(R, P)
    blk_pos = ctx_lens[:, None] + torch.arange(L, device=dev)
    ctx_cos, ctx_sin = rope_cos_sin(ctx_pos, dh, cfg.rope_theta, dtype)
    blk_cos, blk_sin = rope_cos_sin(blk_pos, dh, cfg.rope_theta, dtype)
    # Explicit mask over keys [context 0..P-1 ; block 0..L-1]: [R, L, P + L].
    j = torch.arange(P + L, device=dev)
    visible = (j[None, :] < ctx_lens[:, None]) | (j[None, :] >= P)
    mask = torch.zeros(R, 1, 1, P + L, device=dev).masked_fill(~visible[:, None, None, :], float("-inf"))
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        h = rms_norm(x, sd[p + "input_layernorm.weight"], eps)
        q = lin(h, p + "self_attn.q_proj").view(R, L, hq, dh)
        k_blk = lin(h, p + "self_attn.k_proj").view(R, L, hkv, dh)
        v_blk = lin(h, p + "self_attn.v_proj").view(R, L, hkv, dh)
        k_ctx = lin(ctx, p + "self_attn.k_proj").view(R, P, hkv, dh)
        v_ctx = lin(ctx, p + "self_attn.v_proj").view(R, P, hkv, dh)
        q = _apply_rope(rms_norm(q, sd[p + "self_attn.q_norm.weight"], eps), blk_cos, blk_sin)
        k_blk = _apply_rope(rms_norm(k_blk, sd[p + "self_attn.k_norm.weight"], eps), blk_cos, blk_sin)
        k_ctx = _apply_rope(rms_norm(k_ctx, sd[p + "self_attn.k_norm.weight"], eps), ctx_cos, ctx_sin)
        k = torch.cat([k_ctx, k_blk], 1).repeat_interleave(hq // hkv, dim=2).float()
        v = torch.cat([v_ctx, v_blk], 1).repeat_interleave(hq // hkv, dim=2).float()
        scores = torch.einsum("rthd,rjhd->rhtj", q.float(), k) * dh**-0.5 + mask
        attn = torch.einsum("rhtj,rjhd->rthd", torch.softmax(scores, -1), v).to(dtype)
        x = x + lin(attn.reshape(R, L, hq * dh), p + "self_attn.o_proj")
        h = rms_norm(x, sd[p + "post_attention_layernorm.weight"], eps)
        x = x + lin(F.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms_norm(x, sd["norm.weight"], eps)
    off = cfg.proposal_hidden_offset
    hidden = x[:, off : off + cfg.block_size]
    return hidden, F.linear(hidden, sd["lm_head.weight"])


def markov_greedy(sd: dict, cfg, base_logits: torch.Tensor, anchor: torch.Tensor, hidden: torch.Tensor,
                  conf_scale: Optional[torch.Tensor] = None):
    """Greedy Markov / gated / RNN head and confidence, DeepSpec's sequential loop, float32.

    Returns ``(tokens [R, γ], draft_logits [R, γ, V] float32, confidence [R, γ])``."""
    R, G, V = base_logits.shape
    kind = str(cfg.markov_head_type).lower() if cfg.markov_rank > 0 else None
    prev = anchor.clone()
    state = None
    toks, logits, confs = [], [], []
    for k in range(G):
        U = base_logits[:, k].float()
        h = hidden[:, k].float()
        e = None
        if kind is not None:
            e = sd["markov_head.markov_w1.weight"][prev].float()
            w2 = sd["markov_head.markov_w2.weight"].float()
            if kind == "vanilla":
                U = U + e @ w2.T
            elif kind == "gated":
                g = torch.sigmoid(F.linear(torch.cat([h, e], -1), sd["markov_head.gate_proj.weight"].float(),
                                           sd["markov_head.gate_proj.bias"].float()))
                U = U + (g * e) @ w2.T
            else:
                if state is None:
                    state = torch.zeros_like(e)
                z = F.linear(torch.cat([state, e, h], -1), sd["markov_head.joint_proj.weight"].float(),
                             sd["markov_head.joint_proj.bias"].float())
                a, b, o = z.chunk(3, -1)
                state = torch.sigmoid(a) * state + (1 - torch.sigmoid(a)) * torch.tanh(b)
                U = U + torch.tanh(o) @ w2.T
        if cfg.enable_confidence_head:
            f = torch.cat([h, e], -1) if cfg.confidence_head_with_markov else h
            c = F.linear(f, sd["confidence_head.proj.weight"].float(), sd["confidence_head.proj.bias"].float())[:, 0]
            if conf_scale is not None:
                c = c * conf_scale[k]
            confs.append(torch.sigmoid(c))
        else:
            confs.append(torch.ones(R, device=U.device))
        x = U.to(base_logits.dtype).float().argmax(-1)
        toks.append(x)
        logits.append(U)
        prev = x
    return torch.stack(toks, 1), torch.stack(logits, 1), torch.stack(confs, 1)
