"""Block draft (SPEC §7): ``block_attention`` vs ``scaled_dot_product_attention`` with an
explicit mask, and one full drafter step at Qwen3-4B drafter sizes.

block_attention: γ = 7 queries per request, Qwen3-4B heads (Hq = 32, Hkv = 8, Dh = 128), every
request at the full context length. Providers: ``ours``; ``sdpa``: torch SDPA over keys
``[cache ; block]`` already concatenated outside the timed call (the most favourable layout for
SDPA: an engine would have to write the block keys into the cache first) with a boolean
mask for the per-request lengths; ``eager``: the float32 reference (small sizes only). The
floor is the KV read (``R * (L + γ) * Hkv * Dh * 2`` elements) plus q and the output.

drafter step: ``append_context`` of γ + 1 newly committed tokens, backbone (5 layers,
d = 2560, GQA 32/8, MLP 9728), ``lm_head`` over V = 151,936, and ``markov_draft`` when its
kernel is registered. Providers: ``ours`` and ``sdpa`` (the same module with SDPA-with-mask,
concatenating cache and block keys per layer, in place of ``block_attention``). The floor is
one read of every weight plus the KV caches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import dspark_ops
from dspark_ops import reference
from dspark_ops.speculative.dspark_drafter import DSparkDrafter

from harness import Case

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def attention_inputs(R, gamma, hq, hkv, dh, L, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)

    return dict(
        q=rnd(R, gamma, hq, dh),
        k_cache=rnd(R, L, hkv, dh),
        v_cache=rnd(R, L, hkv, dh),
        cache_lens=torch.full((R,), L, dtype=torch.int64, device=device),
        k_block=rnd(R, gamma, hkv, dh),
        v_block=rnd(R, gamma, hkv, dh),
        scale=dh**-0.5,
    )


def sdpa_prepared(args):
    """Keys/values [cache ; block] as [R, Hkv, L+γ, Dh] and a boolean mask [R, 1, 1, L+γ]."""
    L = args["k_cache"].shape[1]
    k = torch.cat([args["k_cache"], args["k_block"]], 1).transpose(1, 2)
    v = torch.cat([args["v_cache"], args["v_block"]], 1).transpose(1, 2)
    j = torch.arange(k.shape[2], device=k.device)
    mask = (j[None, :] < args["cache_lens"][:, None]) | (j[None, :] >= L)
    return args["q"].transpose(1, 2), k, v, mask[:, None, None, :]


def sdpa(q, k, v, mask, scale):
    if q.shape[1] != k.shape[1]:
        try:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        except TypeError:  # torch without enable_gqa
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def sdpa_block_attention(q, k_cache, v_cache, cache_lens, k_block, v_block, scale):
    """block_attention through SDPA with an explicit mask (concatenates the keys every call)."""
    args = dict(q=q, k_cache=k_cache, v_cache=v_cache, cache_lens=cache_lens, k_block=k_block, v_block=v_block)
    return sdpa(*sdpa_prepared(args), scale).transpose(1, 2)


def attention_case(R, L, dtype_name, device, gamma=7, hq=32, hkv=8, dh=128, with_eager=False):
    dtype = DTYPES[dtype_name]
    args = attention_inputs(R, gamma, hq, hkv, dh, L, dtype, device)
    q, k, v, mask = sdpa_prepared(args)
    elem = dtype.itemsize
    bytes_moved = (R * (L + gamma) * hkv * dh * 2 + 2 * R * gamma * hq * dh) * elem
    providers = {
        "ours": lambda: dspark_ops.block_attention(**args),
        "sdpa": lambda: sdpa(q, k, v, mask, args["scale"]),
    }
    if with_eager:
        providers["eager"] = lambda: reference.block_attention(**args)
    return Case("block_attention", f"R={R} L={L} γ={gamma} Hq={hq} Hkv={hkv} Dh={dh}", dtype_name, providers,
                bytes_moved, flops=4.0 * R * gamma * hq * dh * (L + gamma),
                note="sdpa: keys pre-concatenated, boolean mask")


def drafter_config(d, layers, hq, hkv, dh, inter, vocab, m, rank):
    return dict(vocab_size=vocab, hidden_size=d, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=hq, num_key_value_heads=hkv, head_dim=dh, rms_norm_eps=1e-6,
                rope_theta=1_000_000.0, target_layer_ids=list(range(1, 2 * m, 2)), mask_token_id=vocab - 1,
                block_size=7, markov_rank=rank, markov_head_type="vanilla", enable_confidence_head=True,
                confidence_head_with_markov=True)


def drafter_case(R, L, dtype_name, device, d=2560, layers=5, hq=32, hkv=8, dh=128, inter=9728, vocab=151936,
                 m=5, rank=256):
    dtype = DTYPES[dtype_name]
    cfg = drafter_config(d, layers, hq, hkv, dh, inter, vocab, m, rank)
    with torch.device(device):
        model = DSparkDrafter(cfg).to(dtype).eval().requires_grad_(False)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    gamma = cfg["block_size"]
    cache = model.new_cache(R, L + 2 * (gamma + 1))
    cache.lens.fill_(L)
    for t in cache.k + cache.v:
        t.normal_()
    g = torch.Generator(device="cpu").manual_seed(0)
    chunk = torch.randn(R, gamma + 1, m * d, generator=g).to(device=device, dtype=dtype)
    num_new = torch.full((R,), gamma + 1, dtype=torch.int64, device=device)
    anchor = torch.randint(0, vocab, (R,), generator=g).to(device)
    temperature = torch.ones(R, device=device)
    seed = torch.arange(R, device=device)
    offset = torch.zeros(R, dtype=torch.int64, device=device)
    base_lens = cache.lens.clone()

    def step():
        cache.lens.copy_(base_lens)  # every call appends at the same positions
        with torch.no_grad():
            return model.step(cache, chunk, num_new, anchor, temperature, seed, offset)

    def step_sdpa():
        for layer in model.layers:  # instance attribute: a plain function, not bound
            layer.self_attn.attention_fn = sdpa_block_attention
        try:
            return step()
        finally:
            for layer in model.layers:
                del layer.self_attn.attention_fn

    elem = dtype.itemsize
    weights = sum(p.numel() for n, p in model.named_parameters() if n != "embed_tokens.weight")
    kv = R * (L + gamma + 1) * hkv * dh * 2 * layers
    bytes_moved = (weights + kv) * elem
    note = "append γ+1 + backbone + lm_head + markov_draft"
    return Case("drafter_step", f"R={R} L={L} d={d} layers={layers} V={vocab}", dtype_name,
                {"ours": step, "sdpa": step_sdpa}, bytes_moved, note=note)


def cases(preset: str, device: str) -> list[Case]:
    if device == "cpu":
        out = [attention_case(R, L, "fp32", device, hq=8, hkv=2, dh=64, with_eager=True) for R, L in ((1, 512), (4, 512))]
        out.append(drafter_case(2, 128, "fp32", device, d=128, layers=2, hq=4, hkv=2, dh=64, inter=256, vocab=4096,
                                m=3, rank=32))
        return out
    if preset == "quick":
        return [attention_case(R, 4096, "bf16", device) for R in (1, 64)] + [drafter_case(16, 2048, "bf16", device)]
    out = [attention_case(R, L, "bf16", device, with_eager=(R * L <= 16 * 1024))
           for R in (1, 16, 64) for L in (512, 1024, 2048, 4096, 8192)]
    out += [drafter_case(R, 4096, "bf16", device) for R in (1, 16, 64)]
    return out
