"""DeepSpec checkpoints of both families DeepSpec ships (Qwen3DSparkModel and
Gemma4DSparkModel), every head type (none = DFlash, vanilla, gated, rnn) with and without
a confidence head: tiny random checkpoints saved as DeepSpec saves them (config.json +
safetensors under its parameter names) load, and draft like the pure-PyTorch forward
written from DeepSpec's code (greedy tokens identical, float32 logits within 1e-4).
Gemma 4 specifics: config quirks, k = v attention with v_norm, scale 1, sandwich norms,
layer_scalar, scaled embeddings (applied once), soft-capping before the Markov bias,
double-width MLP layers, proportional / partial RoPE. Unsupported architectures fail
up front."""

import pytest
import torch

from dspark_ops import DSparkConfig, DSparkDrafter
from dspark_ops import reference as ref

from test_drafter import build_context, fill_cache, head_shapes, save_checkpoint

HEADS = [dict(rank=0, confidence=False), dict(rank=0, confidence=True, with_markov=False),
         dict(markov="vanilla", confidence=False), dict(markov="vanilla"),
         dict(markov="gated", confidence=False), dict(markov="gated", with_markov=False),
         dict(markov="rnn", confidence=False), dict(markov="rnn")]
V, D, DH = 97, 48, 32


def dspark_fields(markov="vanilla", rank=6, confidence=True, with_markov=True):
    f = dict(target_layer_ids=[-1, 2, 4], num_target_layers=6, mask_token_id=V - 1, block_size=4,
             num_anchors=64, markov_rank=rank, enable_confidence_head=confidence, tie_word_embeddings=False)
    if rank > 0:
        f["markov_head_type"] = markov
    if confidence:
        f["confidence_head_with_markov"] = with_markov and rank > 0
    return f


def qwen3_config(**head):
    return dict(architectures=["Qwen3DSparkModel"], model_type="qwen3", vocab_size=V, hidden_size=D,
                intermediate_size=80, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                head_dim=DH, rms_norm_eps=1e-6, rope_theta=1e6, attention_bias=False, hidden_act="silu",
                max_position_embeddings=4096, **dspark_fields(**head))


def gemma4_config(k_eq_v=True, **head):
    """A gemma4_text config as DeepSpec's build_draft_config writes it, quirks included:
    stray top-level rope_theta null / rope_type default, per-layer-type rope_parameters,
    global_head_dim and hidden_activation, num_kv_shared_layers copied from the target."""
    return dict(
        architectures=["Gemma4DSparkModel"], model_type="gemma4_text", target_model_type="gemma4",
        vocab_size=V, hidden_size=D, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, num_global_key_value_heads=1, head_dim=16, global_head_dim=DH,
        attention_k_eq_v=k_eq_v, attention_bias=False, attention_dropout=0.0, enable_moe_block=False,
        hidden_activation="gelu_pytorch_tanh", hidden_size_per_layer_input=0, rms_norm_eps=1e-6,
        max_position_embeddings=4096, num_kv_shared_layers=1, use_double_wide_mlp=True,
        final_logit_softcapping=3.0, layer_types=["full_attention"] * 3, rope_theta=None, rope_type="default",
        rope_parameters={"full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                            "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
        **dspark_fields(**head))


def state_dict(cfg, seed=0, std=0.2):
    """Random tensors under DeepSpec's parameter names for either family."""
    g = torch.Generator().manual_seed(seed)
    gemma = cfg["architectures"][0] == "Gemma4DSparkModel"
    d, I, hq = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    dh = cfg["global_head_dim"] if gemma else cfg["head_dim"]
    hkv = cfg["num_global_key_value_heads"] if gemma and cfg["attention_k_eq_v"] else cfg["num_key_value_heads"]
    m, r = len(cfg["target_layer_ids"]), cfg["markov_rank"]
    shapes = {"embed_tokens.weight": (V, d), "fc.weight": (d, m * d), "hidden_norm.weight": (d,),
              "norm.weight": (d,), "lm_head.weight": (V, d)}
    n = cfg["num_hidden_layers"]
    for i in range(n):
        p = f"layers.{i}."
        width = I * (2 if gemma and i >= n - cfg["num_kv_shared_layers"] else 1)  # double-wide MLP
        shapes.update({p + "self_attn.q_proj.weight": (hq * dh, d), p + "self_attn.k_proj.weight": (hkv * dh, d),
                       p + "self_attn.o_proj.weight": (d, hq * dh), p + "self_attn.q_norm.weight": (dh,),
                       p + "self_attn.k_norm.weight": (dh,), p + "mlp.gate_proj.weight": (width, d),
                       p + "mlp.up_proj.weight": (width, d), p + "mlp.down_proj.weight": (d, width),
                       p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)})
        if not (gemma and cfg["attention_k_eq_v"]):
            shapes[p + "self_attn.v_proj.weight"] = (hkv * dh, d)
        if gemma:
            shapes.update({p + "pre_feedforward_layernorm.weight": (d,), p + "post_feedforward_layernorm.weight": (d,),
                           p + "layer_scalar": (1,)})
    shapes.update(head_shapes(cfg, V, d, r))
    sd = {}
    for k, s in shapes.items():
        t = torch.randn(*s, generator=g) * std
        if k.endswith("norm.weight") or k.endswith("layer_scalar"):
            t = 1.0 + t
        if k == "embed_tokens.weight" and gemma:
            t = t / D**0.5  # keep the scaled embeddings O(1)
        sd[k] = t
    return sd


def draft_and_reference(model, sd, seed=1):
    R, P = 3, 11
    th = build_context(R, P, len(model.config.target_layer_ids), D, seed=seed)
    lens = torch.tensor([0, 11, 6])
    cache = fill_cache(model, th, lens, splits=2)
    anchor = torch.tensor([3, 9, V - 1])
    zeros = torch.zeros(R, dtype=torch.int64)
    with torch.no_grad():
        out = model.draft(anchor, cache, torch.zeros(R), zeros, zeros)
    ref_hidden, ref_base = ref.drafter_backbone(sd, model.config, th, lens, anchor)
    ref_tokens, ref_logits, ref_conf = ref.markov_greedy(sd, model.config, ref_base, anchor, ref_hidden)
    return out, (ref_hidden, ref_base, ref_tokens, ref_logits, ref_conf)


@pytest.mark.parametrize("family", ["qwen3", "gemma4"])
@pytest.mark.parametrize("head", HEADS, ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()))
def test_deepspec_checkpoint_drafts_like_deepspec(tmp_path, family, head):
    cfg = qwen3_config(**head) if family == "qwen3" else gemma4_config(**head)
    sd = state_dict(cfg)
    save_checkpoint(str(tmp_path), cfg, sd)
    model = DSparkDrafter.from_pretrained(str(tmp_path))
    assert model.config.architecture == cfg["architectures"][0]
    out, (h, base, tokens, logits, conf) = draft_and_reference(model, sd)
    torch.testing.assert_close(out.hidden, h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.base_logits, base, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.draft_logits.float(), logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.confidence, conf, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.tokens, tokens)
    assert len(set(out.tokens.flatten().tolist())) > 2  # not a degenerate draft


def test_gemma4_config_quirks():
    cfg = DSparkConfig.from_dict(gemma4_config())
    assert (cfg.head_dim, cfg.num_key_value_heads, cfg.hidden_act) == (DH, 1, "gelu_pytorch_tanh")
    assert cfg.attention_scale == 1.0 and cfg.embed_scale == pytest.approx(D**0.5)
    assert cfg.double_wide_layers == (2,)  # num_hidden_layers 3 - num_kv_shared_layers 1
    assert int((cfg.rope.inv_freq != 0).sum()) == int(0.25 * DH / 2)  # proportional: 4 of 16 pairs rotate
    no_kv = DSparkConfig.from_dict(gemma4_config(k_eq_v=False))
    assert no_kv.num_key_value_heads == 4 and not no_kv.attention_k_eq_v
    for bad, match in [(dict(enable_moe_block=True), "enable_moe_block"), (dict(hidden_size_per_layer_input=8), "per-layer"),
                       (dict(global_head_dim=None), "global_head_dim")]:
        with pytest.raises(ValueError, match=match):
            DSparkConfig.from_dict({**gemma4_config(), **bad})


def test_gemma4_v_proj_variant_and_softcap(tmp_path):
    cfg = gemma4_config(k_eq_v=False, markov="gated")
    sd = state_dict(cfg, seed=3)
    sd["markov_head.markov_w2.weight"] *= 20  # a Markov bias large enough to leave the capped range
    model = DSparkDrafter.from_state_dict(cfg, sd)
    out, (_, base, tokens, logits, _) = draft_and_reference(model, sd, seed=4)
    assert torch.equal(out.tokens, tokens)
    torch.testing.assert_close(out.draft_logits.float(), logits, atol=1e-4, rtol=0)
    capped = 3.0 * torch.tanh(torch.nn.functional.linear(out.hidden, sd["lm_head.weight"]) / 3.0)
    torch.testing.assert_close(out.base_logits, capped, atol=1e-5, rtol=0)  # U = c tanh(lm_head(h) / c)
    assert out.draft_logits.abs().max() > 3.0  # the Markov bias comes after the cap


def test_gemma4_rms_norm_is_transformers():
    pytest.importorskip("transformers")
    from transformers.models.gemma4.modeling_gemma4 import Gemma4RMSNorm

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 32, generator=g), torch.randn(32, generator=g)
    norm = Gemma4RMSNorm(32, eps=1e-6)
    norm.weight.data.copy_(w)
    torch.testing.assert_close(ref.dspark_drafter._gemma_rms_norm(x, w, 1e-6), norm(x))
    torch.testing.assert_close(ref.dspark_drafter._gemma_rms_norm(x, None, 1e-6),
                               Gemma4RMSNorm(32, eps=1e-6, with_scale=False)(x))
    from dspark_ops import rms_norm

    torch.testing.assert_close(rms_norm(x, w, 1e-6), norm(x))  # float32: the same numbers


def test_gemma4_target_embedding_module_is_scaled_once():
    pytest.importorskip("transformers")
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextScaledWordEmbedding

    cfg = gemma4_config()
    sd = state_dict(cfg)
    target_embed = Gemma4TextScaledWordEmbedding(V, D, 0, embed_scale=D**0.5)
    target_embed.weight.data.copy_(sd["embed_tokens.weight"])
    model = DSparkDrafter.from_state_dict(cfg, {k: v for k, v in sd.items() if k != "embed_tokens.weight"},
                                          embed_tokens=target_embed)
    ids = torch.tensor([[1, 5, 7]])
    torch.testing.assert_close(model.embed(ids), target_embed(ids))


def test_layer_scalar_is_a_checkpoint_key():
    cfg = gemma4_config()
    sd = state_dict(cfg)
    del sd["layers.1.layer_scalar"]
    with pytest.raises(ValueError, match="layers.1.layer_scalar"):
        DSparkDrafter.from_state_dict(cfg, sd)


def test_unsupported_architecture_fails_up_front():
    with pytest.raises(ValueError, match="'LlamaDSparkModel' is not supported; supported: Qwen3DSparkModel, Gemma4DSparkModel"):
        DSparkConfig.from_dict({**qwen3_config(), "architectures": ["LlamaDSparkModel"]})
    with pytest.raises(ValueError, match="hidden_act 'relu'"):
        DSparkConfig.from_dict({**qwen3_config(), "hidden_act": "relu"})
    with pytest.raises(ValueError, match="longrope"):
        DSparkConfig.from_dict({**qwen3_config(), "rope_scaling": {"rope_type": "longrope"}})


def test_qwen3_yarn_checkpoint_matches_reference(tmp_path):
    cfg = qwen3_config(markov="vanilla")
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}
    sd = state_dict(cfg, seed=5)
    model = DSparkDrafter.from_state_dict(cfg, sd)
    assert model.config.rope.inv_freq is not None and model.config.rope.attention_scaling > 1.0
    out, (h, _, tokens, logits, _) = draft_and_reference(model, sd)
    torch.testing.assert_close(out.hidden, h, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.tokens, tokens)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["qwen3", "gemma4"])
def test_cuda_drafter_agrees_with_cpu(family):
    cfg = qwen3_config(markov="rnn") if family == "qwen3" else gemma4_config(markov="rnn")
    sd = state_dict(cfg, seed=9)
    cpu = DSparkDrafter.from_state_dict(cfg, sd)
    gpu = DSparkDrafter.from_state_dict(cfg, sd, device="cuda")
    out_cpu, _ = draft_and_reference(cpu, sd)
    th = build_context(3, 11, len(cfg["target_layer_ids"]), D, seed=1).cuda()
    cache = fill_cache(gpu, th, torch.tensor([0, 11, 6]), splits=2)
    zeros = torch.zeros(3, dtype=torch.int64, device="cuda")
    with torch.no_grad():
        out = gpu.draft(torch.tensor([3, 9, V - 1], device="cuda"), cache, torch.zeros(3, device="cuda"), zeros, zeros)
    assert torch.equal(out.tokens.cpu(), out_cpu.tokens)
    torch.testing.assert_close(out.draft_logits.cpu(), out_cpu.draft_logits, atol=1e-4, rtol=1e-4)
