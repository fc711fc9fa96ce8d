"""RoPE scaling: the ``inv_freq`` / ``attention_scaling`` arguments of qk_norm_rope and
append_context_kv (kernels vs the reference, on every device; the default table reproduces
the theta path; zero frequencies leave pairs unrotated) and ``rope_from_config`` against
``transformers``' own initialisers for every supported type."""

import pytest
import torch

import dspark_ops
from dspark_ops import reference as ref
from dspark_ops.speculative.rope_scaling import rope_from_config

from test_block_draft import DTYPES, append_inputs, close, qk_inputs


def scaled_table(dh, seed=7):
    g = torch.Generator().manual_seed(seed)
    inv = 1.0 / (1e4 ** (torch.arange(0, dh, 2).float() / dh)) * (0.2 + torch.rand(dh // 2, generator=g))
    inv[-dh // 8 :] = 0.0  # a few unrotated pairs, as in partial / proportional RoPE
    return inv


@pytest.mark.parametrize("dtype", DTYPES)
def test_qk_norm_rope_with_table_matches_reference(device, dtype):
    args = qk_inputs((3, 5), 4, 2, 64, dtype, device, max_pos=50_000)
    args.update(inv_freq=scaled_table(64).to(device), attention_scaling=1.3)
    q, k = dspark_ops.qk_norm_rope(**args)
    rq, rk = ref.qk_norm_rope(**args)
    close(q, rq, dtype)
    close(k, rk, dtype)


def test_default_table_equals_theta_path(device):
    args = qk_inputs((4, 3), 2, 1, 128, torch.float32, device)
    table = rope_from_config({"rope_parameters": {"rope_type": "linear", "factor": 1.0, "rope_theta": 1e6}}, 128)
    plain = dspark_ops.qk_norm_rope(**args)
    tabled = dspark_ops.qk_norm_rope(**args, inv_freq=table.inv_freq.to(device))
    for a, b in zip(plain, tabled):
        assert torch.equal(a, b)


def test_zero_frequencies_and_scaling(device):
    args = qk_inputs((6,), 2, 2, 32, torch.float32, device)
    inv = torch.zeros(16, device=device)
    q, k = dspark_ops.qk_norm_rope(**args, inv_freq=inv, attention_scaling=0.5)
    # angle 0 everywhere: only the norm and the cos scaling (0.5) remain.
    close(q, 0.5 * ref.rms_norm(args["q"], args["q_norm_weight"], 1e-6), torch.float32)
    close(k, 0.5 * ref.rms_norm(args["k"], args["k_norm_weight"], 1e-6), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_append_context_kv_with_table_matches_reference(device, dtype):
    args = append_inputs(3, 20, 2, 64, 6, [0, 4, 15], [6, 2, 5], dtype, device)
    args.update(inv_freq=scaled_table(64, seed=9).to(device), attention_scaling=1.1)
    expected = {k: args[k].clone() for k in ("k_cache", "v_cache")}
    ref.append_context_kv(expected["k_cache"], expected["v_cache"], *[args[k] for k in (
        "k_new", "v_new", "k_norm_weight", "start", "num_new", "eps", "rope_theta", "inv_freq", "attention_scaling")])
    dspark_ops.append_context_kv(**args)
    close(args["k_cache"], expected["k_cache"], dtype)


def test_bad_rope_scaling_arguments():
    args = qk_inputs((3,), 4, 2, 64, torch.float32, "cpu")
    for value, match in [(torch.ones(31), "inv_freq"), (torch.ones(32, dtype=torch.float64), "inv_freq"),
                         (torch.ones(2, 16), "inv_freq")]:
        with pytest.raises(RuntimeError, match=match):
            dspark_ops.qk_norm_rope(**args, inv_freq=value)
    for s in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(RuntimeError, match="attention_scaling"):
            dspark_ops.qk_norm_rope(**args, attention_scaling=s)
    ap = append_inputs(2, 8, 1, 16, 2, [0, 0], [1, 1], torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="inv_freq"):
        dspark_ops.append_context_kv(**ap, inv_freq=torch.ones(7))


def test_opcheck_with_table():
    args = qk_inputs((2, 3), 4, 2, 16, torch.float32, "cpu")
    args.update(inv_freq=scaled_table(16), attention_scaling=1.2)
    torch.library.opcheck(torch.ops.dspark.qk_norm_rope.default, tuple(args.values()))
    ap = append_inputs(2, 8, 1, 16, 3, [0, 2], [3, 1], torch.float32, "cpu")
    ap.update(inv_freq=scaled_table(16), attention_scaling=0.9)
    torch.library.opcheck(torch.ops.dspark.append_context_kv.default, tuple(ap.values()))


# ------------------------------------------------------------------ rope_from_config vs transformers


CASES = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048},
    "yarn_mscale": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 1024, "mscale": 0.8,
                    "mscale_all_dim": 0.6, "beta_fast": 16},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 512},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rope_from_config_matches_transformers(case):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = dict(CASES[case], rope_theta=500000.0)
    cfg = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2, head_dim=128, max_position_embeddings=8192,
                                   rope_parameters=params)
    spec = rope_from_config(cfg.to_dict(), 128)
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[params["rope_type"]](cfg, "cpu")
    if params["rope_type"] == "dynamic":  # the default table at initialisation: the kernels' own formula
        assert spec.inv_freq is None and spec.attention_scaling == 1.0 == scaling
        torch.testing.assert_close(1.0 / (500000.0 ** (torch.arange(0, 128, 2).double() / 128)).float(), inv_freq)
        return
    torch.testing.assert_close(spec.inv_freq, inv_freq.float(), rtol=2e-7, atol=0)
    assert spec.attention_scaling == pytest.approx(scaling, rel=1e-12)


def test_gemma4_proportional_rope_matches_transformers():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Gemma4TextConfig(
        vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, num_global_key_value_heads=1, head_dim=16, global_head_dim=32,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                            "rope_theta": 1e6, "factor": 2.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
    )
    rotary = transformers.models.gemma4.modeling_gemma4.Gemma4TextRotaryEmbedding(cfg)
    spec = rope_from_config(cfg.to_dict(), 32)
    torch.testing.assert_close(spec.inv_freq, rotary.full_attention_inv_freq.float(), rtol=2e-7, atol=0)
    assert int((spec.inv_freq != 0).sum()) == int(0.25 * 32 / 2)


def test_rope_from_config_refusals_and_forms():
    with pytest.raises(ValueError, match="longrope"):
        rope_from_config({"rope_scaling": {"rope_type": "longrope"}, "rope_theta": 1e4}, 64)
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        rope_from_config({"rope_theta": 1e4, "partial_rotary_factor": 0.5}, 64)
    with pytest.raises(ValueError, match="rope_theta"):
        rope_from_config({"rope_theta": None, "rope_type": "default"}, 64)
    # Older configs: top-level rope_theta plus rope_scaling with "type".
    spec = rope_from_config({"rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2.0}}, 8)
    torch.testing.assert_close(spec.inv_freq, 1.0 / (1e4 ** (torch.arange(0, 8, 2).float() / 8)) / 2)
