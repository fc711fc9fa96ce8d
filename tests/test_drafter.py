"""Tests of dspark_ops.DSparkDrafter: loading DeepSpec-layout checkpoints (config.json +
safetensors, key names written out here independently of the module), clear errors for
unknown / missing keys, the cached forward against a plain-PyTorch forward with an explicit
mask (hidden states, logits, greedy tokens), torch.compile, and CPU/CUDA agreement."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from dspark_ops import DSparkConfig, DSparkDrafter
from dspark_ops import reference as ref

from helpers import requires_cuda


def make_config(markov="vanilla", rank=8, confidence=True, with_markov=True, **over):
    cfg = dict(
        architectures=["Qwen3DSparkModel"],
        model_type="qwen3",
        vocab_size=131,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        attention_bias=False,
        hidden_act="silu",
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        target_layer_ids=[1, 4, 6],
        num_target_layers=8,
        mask_token_id=130,
        block_size=5,
        num_anchors=64,
        markov_rank=rank,
        enable_confidence_head=confidence,
    )
    if rank > 0:
        cfg["markov_head_type"] = markov
    if confidence:
        cfg["confidence_head_with_markov"] = with_markov
    cfg.update(over)
    return cfg


def head_shapes(cfg, V, d, r):
    """Shapes of the Markov head (rank r, vanilla / gated / RNN) and the confidence head under
    DeepSpec's parameter names, in the order the random state dicts draw them."""
    shapes = {}
    if r > 0:
        shapes["markov_head.markov_w1.weight"] = (V, r)
        shapes["markov_head.markov_w2.weight"] = (V, r)
        if cfg["markov_head_type"] == "gated":
            shapes.update({"markov_head.gate_proj.weight": (r, d + r), "markov_head.gate_proj.bias": (r,)})
        if cfg["markov_head_type"] == "rnn":
            shapes.update({"markov_head.joint_proj.weight": (3 * r, 2 * r + d), "markov_head.joint_proj.bias": (3 * r,)})
    if cfg["enable_confidence_head"]:
        shapes["confidence_head.proj.weight"] = (1, d + (r if cfg["confidence_head_with_markov"] else 0))
        shapes["confidence_head.proj.bias"] = (1,)
    return shapes


def deepspec_state_dict(cfg, seed=0, dtype=torch.float32, std=0.15):
    """Random tensors under DeepSpec's own parameter names (Qwen3DSparkModel.state_dict())."""
    g = torch.Generator().manual_seed(seed)
    d, V, I = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    hq, hkv, dh = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    m, r = len(cfg["target_layer_ids"]), cfg["markov_rank"]
    shapes = {
        "embed_tokens.weight": (V, d),
        "fc.weight": (d, m * d),
        "hidden_norm.weight": (d,),
        "norm.weight": (d,),
        "lm_head.weight": (V, d),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (hq * dh, d),
            p + "self_attn.k_proj.weight": (hkv * dh, d),
            p + "self_attn.v_proj.weight": (hkv * dh, d),
            p + "self_attn.o_proj.weight": (d, hq * dh),
            p + "self_attn.q_norm.weight": (dh,),
            p + "self_attn.k_norm.weight": (dh,),
            p + "mlp.gate_proj.weight": (I, d),
            p + "mlp.up_proj.weight": (I, d),
            p + "mlp.down_proj.weight": (d, I),
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        })
    shapes.update(head_shapes(cfg, V, d, r))
    sd = {}
    for k, s in shapes.items():
        t = torch.randn(*s, generator=g) * std
        if k.endswith("norm.weight"):
            t = 1.0 + t  # norm weights near 1, as trained
        sd[k] = t.to(dtype)
    return sd


def save_checkpoint(path, cfg, sd, shards=2):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    keys = sorted(sd)
    for s in range(shards):
        part = {k: sd[k].contiguous() for k in keys[s::shards]}
        save_file(part, os.path.join(path, f"model-{s + 1:05d}-of-{shards:05d}.safetensors"))


def build_context(R, P, m, d, seed=1, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(R, P, m * d, generator=g).to(dtype=dtype, device=device)


def fill_cache(model, target_hidden, lens, splits):
    """Appends each request's first lens[r] positions in ragged chunks (`splits` rounds)."""
    R = target_hidden.shape[0]
    cache = model.new_cache(R, max_len=int(target_hidden.shape[1]) + 3)
    done = torch.zeros(R, dtype=torch.int64)
    for s in range(splits):
        if s == splits - 1:
            counts = lens - done
        else:
            counts = torch.minimum(lens - done, torch.tensor([(r * 7 + s * 3) % 6 for r in range(R)]))
        C = max(int(counts.max()), 1)
        chunk = torch.zeros(R, C, target_hidden.shape[2], dtype=target_hidden.dtype, device=target_hidden.device)
        for r in range(R):
            chunk[r, : counts[r]] = target_hidden[r, done[r] : done[r] + counts[r]]
        model.append_context(cache, chunk, counts.to(target_hidden.device))
        done += counts
    assert cache.lens.cpu().tolist() == lens.tolist()
    return cache


# ------------------------------------------------------------------------------------ loading


@pytest.mark.parametrize(
    "variant",
    [
        dict(markov="vanilla"),
        dict(markov="gated", with_markov=False),
        dict(markov="rnn"),
        dict(rank=0, confidence=False),
        dict(markov="vanilla", confidence=False),
    ],
)
def test_checkpoint_round_trip(tmp_path, variant):
    cfg = make_config(**variant)
    sd = deepspec_state_dict(cfg)
    save_checkpoint(str(tmp_path), cfg, sd)
    model = DSparkDrafter.from_pretrained(str(tmp_path))
    got = model.state_dict()
    assert set(got) == set(sd)
    for k in sd:
        assert torch.equal(got[k], sd[k]), k
    assert model.config.target_layer_ids == [1, 4, 6] and model.gamma == 5
    assert model.config.mask_token_id == 130 and model.config.markov_rank == cfg["markov_rank"]


def test_embeddings_from_the_target(tmp_path):
    cfg = make_config()
    sd = deepspec_state_dict(cfg)
    embed, head = sd.pop("embed_tokens.weight"), sd.pop("lm_head.weight")
    save_checkpoint(str(tmp_path), cfg, sd, shards=1)
    with pytest.raises(ValueError, match="missing keys.*embed_tokens.weight.*lm_head.weight"):
        DSparkDrafter.from_pretrained(str(tmp_path))
    target_embed = torch.nn.Embedding.from_pretrained(embed)
    model = DSparkDrafter.from_pretrained(str(tmp_path), embed_tokens=target_embed, lm_head=head)
    assert model.embed_tokens.weight.data_ptr() == embed.data_ptr()  # shared, not copied
    assert torch.equal(model.lm_head.weight, head)


def test_unknown_missing_and_mismatched_keys_are_listed(tmp_path):
    cfg = make_config()
    sd = deepspec_state_dict(cfg)
    sd["markov_head.extra.weight"] = torch.zeros(3)
    del sd["layers.1.mlp.up_proj.weight"]
    del sd["confidence_head.proj.bias"]
    sd["fc.weight"] = torch.zeros(64, 128)
    save_checkpoint(str(tmp_path), cfg, sd)
    with pytest.raises(ValueError) as err:
        DSparkDrafter.from_pretrained(str(tmp_path))
    msg = str(err.value)
    for needle in ("markov_head.extra.weight", "layers.1.mlp.up_proj.weight", "confidence_head.proj.bias",
                   "fc.weight: expected (64, 192), got (64, 128)"):
        assert needle in msg


def test_model_prefix_and_dtype(tmp_path):
    cfg = make_config(markov="gated")
    sd = deepspec_state_dict(cfg)
    save_checkpoint(str(tmp_path), cfg, {"model." + k: v for k, v in sd.items()})
    model = DSparkDrafter.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.equal(model.markov_head.gate_proj.bias, sd["markov_head.gate_proj.bias"].bfloat16())


def test_bad_configs():
    cfg = make_config()
    del cfg["target_layer_ids"], cfg["mask_token_id"]
    with pytest.raises(ValueError, match="target_layer_ids.*mask_token_id"):
        DSparkConfig.from_dict(cfg)
    cfg = make_config()
    del cfg["markov_head_type"]
    with pytest.raises(ValueError, match="markov_head_type"):
        DSparkConfig.from_dict(cfg)
    with pytest.raises(ValueError, match="markov_head_type"):
        DSparkConfig.from_dict(make_config(markov="lstm"))
    with pytest.raises(ValueError, match="rope"):
        DSparkConfig.from_dict(make_config(rope_scaling={"rope_type": "longrope", "factor": 4.0}))
    cfg = make_config()
    del cfg["rope_theta"]
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e5}
    assert DSparkConfig.from_dict(cfg).rope_theta == 5e5


# ------------------------------------------------------------------------------------ forward


def load(tmp_path, cfg, sd, dtype=None, device=None):
    save_checkpoint(str(tmp_path), cfg, sd)
    return DSparkDrafter.from_pretrained(str(tmp_path), dtype=dtype, device=device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", [dict(), dict(verification_block_size=7, proposal_hidden_offset=1)])
def test_backbone_matches_explicit_mask_forward(tmp_path, device, dtype, variant):
    cfg = make_config(**variant)
    sd = deepspec_state_dict(cfg, dtype=dtype)
    model = load(tmp_path, cfg, sd, device=device)
    R, P = 4, 19
    th = build_context(R, P, 3, 64, dtype=dtype, device=device)
    lens = torch.tensor([0, 7, 19, 12])
    cache = fill_cache(model, th, lens, splits=3)
    anchor = torch.tensor([5, 130, 0, 77], device=device)
    with torch.no_grad():
        hidden = model.backbone(anchor, cache)
        logits = model.compute_logits(hidden)
    sd_dev = {k: v.to(device) for k, v in sd.items()}
    ref_hidden, ref_logits = ref.drafter_backbone(sd_dev, model.config, th, lens.to(device), anchor)
    assert hidden.shape == (R, 5, 64) and logits.shape == (R, 5, 131)
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=0.1, rtol=0.05)
    torch.testing.assert_close(hidden.float(), ref_hidden.float(), **tol)
    torch.testing.assert_close(logits.float(), ref_logits.float(), **tol)
    if dtype == torch.float32:
        # Greedy base tokens (no head) agree exactly: the same argmax.
        assert torch.equal(logits.argmax(-1), ref_logits.argmax(-1))


def test_batch_rows_are_independent(tmp_path):
    cfg = make_config()
    sd = deepspec_state_dict(cfg)
    model = load(tmp_path, cfg, sd)
    th = build_context(3, 10, 3, 64)
    lens = torch.tensor([4, 10, 0])
    anchor = torch.tensor([1, 2, 3])
    full = model.backbone(anchor, fill_cache(model, th, lens, splits=2))
    one = model.backbone(anchor[1:2], fill_cache(model, th[1:2], lens[1:2], splits=1))
    torch.testing.assert_close(full[1:2], one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "variant", [dict(markov="vanilla"), dict(markov="gated"), dict(markov="rnn", with_markov=False),
                dict(rank=0, confidence=False)]
)
def test_greedy_draft_matches_reference(tmp_path, device, variant):
    cfg = make_config(**variant)
    sd = deepspec_state_dict(cfg, std=0.3)
    model = load(tmp_path, cfg, sd, device=device)
    R, P = 3, 12
    th = build_context(R, P, 3, 64, device=device)
    lens = torch.tensor([0, 12, 6])
    cache = fill_cache(model, th, lens, splits=2)
    anchor = torch.tensor([3, 9, 120], device=device)
    zeros = torch.zeros(R, dtype=torch.int64, device=device)
    conf_scale = torch.linspace(0.5, 1.5, 5, device=device)
    with torch.no_grad():
        out = model.draft(anchor, cache, torch.zeros(R, device=device), zeros, zeros, conf_scale)
    sd_dev = {k: v.to(device) for k, v in sd.items()}
    ref_hidden, ref_base = ref.drafter_backbone(sd_dev, model.config, th, lens.to(device), anchor)
    ref_tokens, ref_logits, ref_conf = ref.markov_greedy(sd_dev, model.config, ref_base, anchor, ref_hidden, conf_scale)
    assert torch.equal(out.tokens, ref_tokens)
    torch.testing.assert_close(out.draft_logits.float(), ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.confidence, ref_conf, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.hidden, ref_hidden, atol=2e-5, rtol=2e-5)


def test_torch_compile_backbone(tmp_path, device):
    cfg = make_config()
    model = load(tmp_path, cfg, deepspec_state_dict(cfg), device=device)
    th = build_context(2, 8, 3, 64, device=device)
    lens = torch.tensor([3, 8])
    anchor = torch.tensor([4, 5], device=device)

    def round_(cache, chunk, num_new, anchor):
        model.append_context(cache, chunk, num_new)
        return model.compute_logits(model.backbone(anchor, cache))

    first = th[:, :3].clone()
    first[0, 3:] = 0
    num0 = torch.tensor([3, 3], device=device)
    rest = torch.zeros(2, 5, 192, device=device)
    rest[1] = th[1, 3:8]
    num1 = torch.tensor([0, 5], device=device)
    c_eager = model.new_cache(2, 12)
    c_comp = model.new_cache(2, 12)
    compiled = torch.compile(round_, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    with torch.no_grad():
        round_(c_eager, first, num0, anchor)
        compiled(c_comp, first, num0, anchor)
        expected = round_(c_eager, rest, num1, anchor)
        got = compiled(c_comp, rest, num1, anchor)
    assert c_comp.lens.cpu().tolist() == lens.tolist()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for a, b in zip(c_comp.k + c_comp.v, c_eager.k + c_eager.v):
        torch.testing.assert_close(a, b)


@requires_cuda
def test_cuda_drafter_agrees_with_cpu(tmp_path):
    cfg = make_config(num_hidden_layers=3)
    sd = deepspec_state_dict(cfg, dtype=torch.bfloat16)
    cpu = load(tmp_path / "a", cfg, sd)
    gpu = load(tmp_path / "b", cfg, sd, device="cuda")
    th = build_context(4, 30, 3, 64, dtype=torch.bfloat16)
    lens = torch.tensor([0, 30, 17, 5])
    anchor = torch.tensor([1, 2, 3, 4])
    h_cpu = cpu.backbone(anchor, fill_cache(cpu, th, lens, 2))
    h_gpu = gpu.backbone(anchor.cuda(), fill_cache(gpu, th.cuda(), lens, 2))
    torch.testing.assert_close(h_gpu.float().cpu(), h_cpu.float(), atol=0.1, rtol=0.05)
